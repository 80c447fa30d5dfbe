"""Wire protocol: validation, limits, msgpack safety, dependency isolation of the client."""

from __future__ import annotations

import pickle
import subprocess
import sys

import msgpack
import numpy as np
import pytest
from conftest import REPO, child_env, sample

from backend import protocol as P


def frames_for(kind="matte", arrays=None, **header):
    image, trimap = sample()
    head = P.request_header(kind, header.pop("id", "r1"), **header)
    return P.encode_message(head, {"image": image, "trimap": trimap} if arrays is None else arrays)


def parse(frames):
    return P.parse_request(P.unpack_header(frames[0]), frames[1:])


def test_roundtrip_zero_copy_views():
    image, trimap = sample()
    frames = P.encode_message(P.request_header("matte", "abc"), {"image": image, "trimap": trimap})
    req = parse(frames)
    arrays = P.decode_arrays(req.specs, frames[1:])
    np.testing.assert_array_equal(arrays["image"], image)
    assert np.shares_memory(arrays["trimap"], trimap)  # a view over the frame buffer, not a copy
    raw = P.decode_arrays(req.specs, frames[1:], use_numpy=False)["image"]
    assert isinstance(raw, P.RawArray) and raw.shape == image.shape


def test_client_import_pulls_neither_numpy_nor_torch():
    code = ("import sys, backend.client, backend.protocol; "
            "bad=[m for m in ('numpy','torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", b"\x93\x01\x02\x03", msgpack.packb([1, 2]), msgpack.packb({"v": 2, "kind": "info"}),
    msgpack.packb({"v": 1}), msgpack.packb({1: 2}),
    msgpack.packb({"v": 1, "kind": "info", "x": msgpack.ExtType(1, b"abc")}),
    msgpack.packb({"v": 1, "kind": "info", "x": b"bytes"}, use_bin_type=True),
    msgpack.packb({"v": 1, "kind": "info", "x": "s" * 5000}),
    msgpack.packb({"v": 1, "kind": "info", "x": list(range(100))}),
    pickle.dumps({"v": 1, "kind": "info"}),
    b"\x81" * 100_000,  # deep nesting
    b"x" * (P.MAX_HEADER_BYTES + 1),
])
def test_malformed_headers_rejected(payload):
    with pytest.raises(P.ProtocolError):
        P.unpack_header(payload)


def test_msgpack_numpy_pickle_payload_rejected():
    # msgpack-numpy encodes object arrays as {nd: True, kind: b'O', data: pickle}; its decoder would unpickle.
    evil = msgpack.packb({"v": 1, "kind": "matte", "id": "x",
                          "arrays": [{b"nd": True, b"kind": b"O", b"data": pickle.dumps(object())}]}, use_bin_type=True)
    with pytest.raises(P.ProtocolError):
        P.unpack_header(evil)


@pytest.mark.parametrize("mutate, code", [
    (lambda h: h.update(kind="nope"), P.E_BAD_REQUEST),
    (lambda h: h.update(id="bad id!"), P.E_BAD_REQUEST),
    (lambda h: h.update(timeout=-1), P.E_BAD_REQUEST),
    (lambda h: h.update(timeout=True), P.E_BAD_REQUEST),
    (lambda h: h.update(priority="vip"), P.E_BAD_REQUEST),
    (lambda h: h.update(options={"evil": 1}), P.E_BAD_REQUEST),
    (lambda h: h.update(options={"outputs": ["alpha", "x"]}), P.E_BAD_REQUEST),
    (lambda h: h.update(options={"tile": 7}), P.E_BAD_REQUEST),
    (lambda h: h.update(options={"refine": "smooth"}), P.E_BAD_REQUEST),
    (lambda h: h.update(options={"refine": True}), P.E_BAD_REQUEST),
    (lambda h: h["arrays"][0].update(dtype="<f8"), P.E_BAD_REQUEST),
    (lambda h: h["arrays"][0].update(dtype="|O"), P.E_BAD_REQUEST),
    (lambda h: h["arrays"][0].update(shape=[48, 64, -3]), P.E_BAD_REQUEST),
    (lambda h: h["arrays"][0].update(shape=[48, 64, 3.0]), P.E_BAD_REQUEST),
    (lambda h: h["arrays"][0].update(shape=[1 << 40, 1 << 40, 3]), P.E_TOO_LARGE),
    (lambda h: h["arrays"][0].update(shape=[16000, 16000, 3]), P.E_TOO_LARGE),
    (lambda h: h["arrays"][0].update(shape=[48, 64, 4]), P.E_BAD_REQUEST),  # byte count mismatch
    (lambda h: h["arrays"][1].update(shape=[48, 63]), P.E_BAD_REQUEST),
    (lambda h: h["arrays"][1].update(name="image"), P.E_BAD_REQUEST),
    (lambda h: h["arrays"][1].update(name="weights"), P.E_BAD_REQUEST),
    (lambda h: h.update(arrays=h["arrays"][:1]), P.E_BAD_REQUEST),
])
def test_request_validation(mutate, code):
    frames = frames_for()
    header = msgpack.unpackb(frames[0])
    mutate(header)
    frames[0] = msgpack.packb(header)
    with pytest.raises(P.ProtocolError) as info:
        parse(frames)
    assert info.value.code == code


@pytest.mark.parametrize("refine", [*P.REFINE_MODES, None])
def test_refine_modes_accepted(refine):
    frames = frames_for()
    header = msgpack.unpackb(frames[0])
    header["options"] = {"refine": refine}
    frames[0] = msgpack.packb(header)
    assert parse(frames).options.get("refine") == refine


@pytest.mark.parametrize(("mode", "ok"), [(P.TRIMAP_STRICT, True), (P.TRIMAP_TOLERANT, True), (None, True),
                                          ("soft", False)])
def test_trimap_modes(mode, ok):
    frames = frames_for()
    header = msgpack.unpackb(frames[0])
    header["options"] = {"trimap_mode": mode}
    frames[0] = msgpack.packb(header)
    if ok:
        assert parse(frames).options.get("trimap_mode") == mode
    else:
        with pytest.raises(P.ProtocolError, match="'trimap_mode' must be one of strict, tolerant"):
            parse(frames)


def test_mask_needs_band_and_frame_count_checked():
    image, trimap = sample()
    with pytest.raises(P.ProtocolError, match="band"):
        parse(frames_for(arrays={"image": image, "mask": trimap}))
    frames = frames_for(arrays={"image": image, "mask": trimap}, options={"band": 10})
    assert parse(frames).options["band"] == 10
    with pytest.raises(P.ProtocolError):
        parse(frames + [b"extra"])
    with pytest.raises(P.ProtocolError):
        parse(frames_for(arrays={"image": image}))
    with pytest.raises(P.ProtocolError):
        parse(frames_for(arrays={"image": image, "trimap": trimap, "mask": trimap}, options={"band": 3}))


def test_control_messages_carry_no_arrays():
    image, _ = sample()
    with pytest.raises(P.ProtocolError):
        parse(P.encode_message(P.request_header("info", "a"), {"image": image}))
    assert parse(P.encode_message(P.request_header("cancel", "a"))).target == "a"


def test_encode_converts_only_when_needed():
    spec, buf = P.encode_array("alpha", np.zeros((4, 4), np.float64))
    assert spec.dtype == "<f4" and len(buf) == 64
    spec, _ = P.encode_array("mask", np.zeros((4, 4), bool))
    assert spec.dtype == "|u1"
    with pytest.raises(P.ProtocolError):
        P.encode_array("x", np.zeros(3, np.int64))
    raw = P.RawArray(bytes(12), "|u1", (2, 2, 3))
    spec, buf = P.encode_array("image", raw)
    assert spec.shape == (2, 2, 3) and buf is raw.data


@pytest.mark.parametrize(("text", "address"), [
    ("tcp://127.0.0.1:5557", "tcp://127.0.0.1:5557"), (" localhost:5557 ", "tcp://localhost:5557"),
    ("[::1]:5557", "tcp://[::1]:5557"), ("ipc:///run/x.sock", "ipc:///run/x.sock"),
    ("tcp://127.0.0.1", None), ("localhost", None), ("tcp://h:0", None), ("tcp://h:70000", None),
    ("http://h:80", None), ("ipc://", None), ("", None),
])
def test_parse_endpoint(text, address):
    if address is None:
        with pytest.raises(ValueError, match=r"not a daemon address.*tcp://HOST:PORT"):
            P.parse_endpoint(text)
    else:
        assert P.parse_endpoint(text) == address


def test_client_refuses_a_malformed_address_before_connecting():
    from backend.client import Client, ServerError

    with pytest.raises(ServerError, match="not a daemon address") as info:
        Client("localhost")  # ZeroMQ would only say "Invalid argument"
    assert info.value.code == P.E_BAD_REQUEST


@pytest.mark.parametrize("argv", [["status", "--server", "localhost"], ["batch", "in", "out", "--server", "localhost"],
                                  ["serve", "--bind", "localhost"], ["worker", "--connect", "localhost"],
                                  ["matte", "i.png", "t.png", "-o", "a.png", "--server", "localhost"]])
def test_every_address_option_is_parsed_as_an_endpoint(argv, capsys):
    from backend.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "not a daemon address: 'localhost'" in capsys.readouterr().err


def test_default_endpoint_env(monkeypatch, tmp_path):
    monkeypatch.setenv(P.ENV_RUNTIME_DIR, str(tmp_path))
    monkeypatch.delenv(P.ENV_ENDPOINT, raising=False)
    assert P.default_endpoint() == f"ipc://{tmp_path}/broker.sock"
    monkeypatch.setenv(P.ENV_ENDPOINT, "tcp://127.0.0.1:9")
    assert P.default_endpoint() == "tcp://127.0.0.1:9"
