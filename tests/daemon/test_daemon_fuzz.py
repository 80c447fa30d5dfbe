"""Fuzz the front end with >= 100,000 malformed messages: the daemon stays up, answers, RSS bounded."""

from __future__ import annotations

import pickle
import random
import time

import msgpack
import pytest
import zmq
from conftest import rss_mb, sample

from backend import protocol as P
from backend.client import Client

N_MESSAGES = 100_000


def _malformed(rng: random.Random) -> list[bytes]:
    """A pool of broken messages, one generator per category."""
    image, trimap = sample(16, 16)
    good = P.encode_message(P.request_header(P.MATTE, "fz"), {"image": image, "trimap": trimap})
    good = [bytes(f) for f in good]
    head = msgpack.unpackb(good[0])

    def with_header(**changes) -> list[bytes]:
        h = dict(head, **changes)
        return [msgpack.packb(h, use_bin_type=True), *good[1:]]

    def rand_bytes(n: int) -> bytes:
        return bytes(rng.getrandbits(8) for _ in range(n))

    cats = [
        lambda: [rand_bytes(rng.randint(0, 64))],
        lambda: [rand_bytes(rng.randint(1, 32)) for _ in range(rng.randint(2, 7))],
        lambda: [msgpack.packb(rng.choice([1, "x", [1, 2], None, 3.5, True, {"a": [1] * 10}]))],
        lambda: with_header(kind=rng.choice([1, None, "", "MATTE", "job", "ready", ["matte"]])),
        lambda: with_header(id=rng.choice([1, None, "", "x" * 100, "a b", ["id"]])),
        lambda: with_header(timeout=rng.choice(["5", -1, 0, 1e12, None, [1]])),
        lambda: with_header(options=rng.choice([[1], "x", {"outputs": "alpha"}, {"tile": 3}, {"zz": 1}])),
        lambda: with_header(arrays=[{"name": "image", "dtype": "|u1",
                                     "shape": [rng.choice([1 << 20, 1 << 31, 16385]), 1 << 20, 3]},
                                    head["arrays"][1]]),
        lambda: with_header(arrays=[dict(head["arrays"][0], dtype=rng.choice(["<f8", "|O", "|V8", "<i4", 1])),
                                    head["arrays"][1]]),
        lambda: with_header(arrays=[dict(head["arrays"][0], shape=[16, 16, rng.randint(-3, 100)]),
                                    head["arrays"][1]]),
        lambda: with_header(arrays={"image": 1}),
        lambda: good + [b"x"] * rng.randint(1, 12),  # too many frames
        lambda: good[:-1],  # missing frame
        lambda: [good[0], good[1][:-1], good[2]],  # byte count mismatch
        lambda: [pickle.dumps({"v": 1, "kind": "info", "id": "p"})],
        lambda: [msgpack.packb({"v": 1, "kind": "info", "id": "e", "x": msgpack.ExtType(rng.randint(0, 127),
                                                                                        rand_bytes(8))})],
        lambda: [msgpack.packb({"v": 1, "kind": "matte", "id": "n", "arrays": [
            {b"nd": True, b"type": b"|O", b"kind": b"O", b"shape": [1], b"data": pickle.dumps([1])}]},
            use_bin_type=True)],
        lambda: [b"\x91" * rng.randint(100, 3000)],  # deep nesting
        lambda: [msgpack.packb({"v": 1, "kind": "info", "id": "s", "pad": "p" * rng.randint(5000, 70000)})],
        lambda: [msgpack.packb({"v": 1, "kind": "cancel", "id": "nonexistent"})],  # valid but harmless
    ]
    pool = []
    for _ in range(60):
        for cat in cats:
            pool.append(cat())
    return pool


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_fuzz_100k_malformed_messages(daemon, zctx):
    d = daemon("--max-frame-mb", "4")
    rng = random.Random(1234)
    pool = _malformed(rng)
    socks = []
    for _ in range(4):
        s = zctx.socket(zmq.DEALER)
        s.linger = 0
        s.sndhwm = 1000
        s.connect(d.endpoint)
        socks.append(s)
    time.sleep(0.2)
    rss0 = rss_mb(d.pid)
    t0 = time.monotonic()
    replies = 0
    for i in range(N_MESSAGES):
        sock = socks[i % len(socks)]
        sock.send_multipart(rng.choice(pool), copy=False)
        if i % 200 == 0:
            for s in socks:  # drain replies so our side never stalls
                while True:
                    try:
                        s.recv_multipart(zmq.NOBLOCK)
                        replies += 1
                    except zmq.Again:
                        break
    # a frame over ZMQ_MAXMSGSIZE disconnects only that peer
    big = zctx.socket(zmq.DEALER)
    big.linger = 0
    big.connect(d.endpoint)
    big.send_multipart([msgpack.packb({"v": 1, "kind": "info", "id": "big"}), b"\0" * (5 * 2**20)])
    elapsed = time.monotonic() - t0
    time.sleep(0.5)
    assert d.proc.poll() is None, "daemon died"
    image, trimap = sample()
    with Client(d.endpoint) as c:
        assert c.health()["live"]
        reply = c.matte(image, trimap, timeout=30)
        stats = c.info()["stats"]
    assert reply["alpha"].shape == trimap.shape
    rss1 = rss_mb(d.pid)
    print(f"\n{N_MESSAGES} malformed messages in {elapsed:.1f} s, {replies} replies drained, "
          f"broker RSS {rss0:.0f} -> {rss1:.0f} MiB, stats {stats}")
    assert stats["client_messages"] >= N_MESSAGES * 0.95  # (HWM drops on our side are allowed)
    assert rss1 - rss0 < 64
    big.close()
    for s in socks:
        s.close()
