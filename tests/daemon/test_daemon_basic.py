"""Daemon behaviour with trivial handlers: operations, progress, cancel, deadlines, dedup, drain, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from conftest import REPO, child_env, free_port, sample

from backend import protocol as P
from backend.client import (
    BadRequest,
    Cancelled,
    Client,
    DeadlineExceeded,
    Unavailable,
    matte_via_server,
)

pytestmark = pytest.mark.timeout(90)


def test_info_health_and_matte(daemon):
    d = daemon(workers=2)
    image, trimap = sample()
    with Client(d.endpoint) as c:
        info = c.info()
        assert info["protocol"] == P.PROTOCOL_VERSION and info["models"] == ["echo"]
        assert {w["device"] for w in info["workers"]} == {"cpu"} and len(info["workers"]) == 2
        assert info["limits"]["max_frames"] == P.MAX_FRAMES
        health = c.health()
        assert health["live"] and health["ready"] and health["workers"] == 2
        reply = c.matte(image, trimap)
        np.testing.assert_allclose(reply["alpha"], trimap / 255.0, atol=1e-7)
        assert reply.meta["model"] == "echo" and reply.meta["attempt"] == 1 and "compute_s" in reply.meta["timings"]
        # RGBA + mask + band, u1 alpha on the wire
        rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
        reply = c.matte(rgba, mask=(trimap > 0).astype(np.uint8) * 255, band=4, alpha_dtype="u1")
        assert reply["alpha"].shape == trimap.shape
    out = matte_via_server(d.endpoint, image, trimap)
    assert out["alpha"].dtype == np.float32 and out["class_shares"] is None


def test_without_numpy_raw_arrays(daemon):
    d = daemon()
    image, trimap = sample()
    with Client(d.endpoint, as_numpy=False) as c:
        reply = c.matte(P.RawArray(image.tobytes(), "|u1", image.shape), P.RawArray(trimap.tobytes(), "|u1", trimap.shape))
    alpha = reply["alpha"]
    assert isinstance(alpha, P.RawArray) and alpha.dtype == "<f4" and alpha.shape == trimap.shape
    np.testing.assert_allclose(alpha.to_numpy(), trimap / 255.0, atol=1e-7)


def test_bad_requests_get_error_codes(daemon, zctx):
    d = daemon()
    image, trimap = sample()
    with Client(d.endpoint) as c:
        with pytest.raises(BadRequest, match="trimap"):
            c.matte(image, trimap[:-1])
        with pytest.raises(BadRequest):
            c.matte(image, mask=trimap)  # no band
    sock = zctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(d.endpoint)
    sock.send_multipart([b"garbage", b"more"])
    assert sock.poll(2000)
    header = P.unpack_header(sock.recv_multipart()[0], P.REPLY_UNPACK_LIMITS)
    assert header["kind"] == P.ERROR and header["code"] == P.E_BAD_REQUEST and header["message"]


def test_progress_cancel_and_deadline(daemon):
    d = daemon(handler="daemon_handlers:slow", env=child_env(SLOW_MS="1500"))
    image, trimap = sample()
    stages = []
    with Client(d.endpoint) as c:
        # progress, then cancel while running
        rid = c.submit(P.MATTE, {"image": image, "trimap": trimap}, progress=lambda s, f: stages.append(s))
        end = time.monotonic() + 5
        while "step" not in stages and time.monotonic() < end:
            c.wait_any(0.05)
        assert stages[:2] == ["queued", "running"] and "step" in stages
        t0 = time.monotonic()
        c.cancel(rid)
        with pytest.raises(Cancelled):
            c.result(rid)
        assert time.monotonic() - t0 < 0.5
        # a queued request is cancelled too; one waiting past its deadline gets deadline_exceeded
        busy = c.submit(P.MATTE, {"image": image, "trimap": trimap})
        queued = c.submit(P.MATTE, {"image": image, "trimap": trimap})
        late = c.submit(P.MATTE, {"image": image, "trimap": trimap}, timeout=0.3)
        c.cancel(queued)
        with pytest.raises(Cancelled):
            c.result(queued)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            c.result(late)
        assert "queued" in info.value.message and time.monotonic() - t0 < 0.5
        c.result(busy)
        # running past the deadline: explicit error at the deadline, not when the job ends
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            c.matte(image, trimap, timeout=0.4)
        assert time.monotonic() - t0 < 0.6


def test_retry_with_same_id_runs_once(daemon):
    d = daemon(handler="daemon_handlers:slow", env=child_env(SLOW_MS="300"))
    image, trimap = sample()
    with Client(d.endpoint) as c1, Client(d.endpoint) as c2:
        c1.submit(P.MATTE, {"image": image, "trimap": trimap}, request_id="same-id-1")
        time.sleep(0.05)
        c2.submit(P.MATTE, {"image": image, "trimap": trimap}, request_id="same-id-1")  # e.g. reconnected client
        r2 = c2.result("same-id-1", timeout=5)
        r3 = Client(d.endpoint).request(P.MATTE, {"image": image, "trimap": trimap}, request_id="same-id-1")
        assert r2.meta["pid"] == r3.meta["pid"]
        stats = c2.info()["stats"]
    assert stats["accepted"] == 1 and stats["duplicates"] == 2 and stats["completed"] == 1


def test_interactive_before_batch(daemon):
    d = daemon(handler="daemon_handlers:slow", env=child_env(SLOW_MS="100"))
    image, trimap = sample()
    order = []
    with Client(d.endpoint) as c:
        first = c.submit(P.MATTE, {"image": image, "trimap": trimap}, priority=P.BATCH)
        time.sleep(0.05)  # first one is running
        batch = [c.submit(P.MATTE, {"image": image, "trimap": trimap}, priority=P.BATCH) for _ in range(3)]
        inter = c.submit(P.MATTE, {"image": image, "trimap": trimap}, priority=P.INTERACTIVE)
        while c.in_flight:
            order += [rid for rid, _ in c.wait_any(5)]
    assert order[0] == first and order[1] == inter and set(order[2:]) == set(batch)


def test_unreachable_server_is_a_clear_error(tmp_path):
    t0 = time.monotonic()
    with (
        pytest.raises(Unavailable, match="daemon running"),
        Client(f"ipc://{tmp_path}/nothing.sock", connect_timeout=0.5) as c,
    ):
        c.health()
    assert time.monotonic() - t0 < 3


def test_sigterm_drains_and_exits_zero(daemon):
    d = daemon(handler="daemon_handlers:slow", env=child_env(SLOW_MS="800"))
    image, trimap = sample()
    with Client(d.endpoint) as c:
        running = c.submit(P.MATTE, {"image": image, "trimap": trimap})
        queued = c.submit(P.MATTE, {"image": image, "trimap": trimap})
        c.wait_any(0.2)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(Unavailable, match="shutting down"):
            c.matte(image, trimap)
        assert c.result(running, timeout=10)["alpha"] is not None
        assert c.result(queued, timeout=10)["alpha"] is not None
    assert d.proc.wait(30) == 0 and time.monotonic() - t0 < 30
    assert not (d.runtime / "broker.sock").exists() and not (d.runtime / "daemon.pid").exists()


def test_cli_status_stop_and_second_daemon_refused(daemon, spawn):
    d = daemon()
    env = child_env()
    out = subprocess.run([sys.executable, "-m", "backend.daemon", "status", "--server", d.endpoint],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0 and "ready" in out.stdout and "echo" in out.stdout
    second = subprocess.run([sys.executable, "-m", "backend.daemon", "serve", "--runtime-dir", str(d.runtime),
                             "--handler", "daemon_handlers:echo"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=30, check=False)
    assert second.returncode == 1 and "already serves" in second.stderr
    out = subprocess.run([sys.executable, "-m", "backend.daemon", "stop", "--runtime-dir", str(d.runtime)],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=40, check=False)
    assert out.returncode == 0, out.stderr
    assert d.proc.wait(5) == 0
    out = subprocess.run([sys.executable, "-m", "backend.daemon", "status", "--server", d.endpoint],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2 and "not running" in out.stderr


def test_stale_socket_is_replaced_and_non_loopback_refused(daemon, tmp_path):
    runtime = tmp_path / "rt1"
    runtime.mkdir(mode=0o700)
    (runtime / "broker.sock").write_text("stale")  # left over by a kill -9
    d = daemon()
    with Client(d.endpoint) as c:
        assert c.health()["ready"]
    out = subprocess.run([sys.executable, "-m", "backend.daemon", "serve", "--runtime-dir", str(tmp_path / "rt9"),
                          "--bind", f"tcp://0.0.0.0:{free_port()}", "--handler", "daemon_handlers:echo"],
                         env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2 and "without CURVE" in out.stderr
    insecure = tmp_path / "open"
    insecure.mkdir(mode=0o777)
    os.chmod(insecure, 0o777)
    out = subprocess.run([sys.executable, "-m", "backend.daemon", "serve", "--runtime-dir", str(insecure),
                          "--handler", "daemon_handlers:echo"], env=child_env(), cwd=REPO, capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.returncode != 0 and "accessible by others" in out.stderr


def test_tcp_loopback_and_worker_recycling(daemon):
    port = free_port()
    d = daemon("--max-jobs", "3", bind=f"tcp://127.0.0.1:{port}", handler="daemon_handlers:slow",
               env=child_env(SLOW_MS="10"))
    image, trimap = sample()
    pids = set()
    with Client(d.endpoint, retries=5) as c:
        for _ in range(7):
            pids.add(c.matte(image, trimap, timeout=20).meta["pid"])
    assert len(pids) >= 3  # recycled after every 3 jobs, restarted by the supervisor, nothing failed


def test_hung_worker_is_recycled(daemon):
    d = daemon(handler="daemon_handlers:hang")
    image, trimap = sample()
    with Client(d.endpoint) as c:
        pid0 = c.info()["workers"][0]["pid"]
        with pytest.raises(DeadlineExceeded):
            c.matte(image, trimap, timeout=0.5)
    # the worker watchdog exits 10 s after the deadline; the supervisor starts a new one
    end = time.monotonic() + 20
    while time.monotonic() < end:
        info = Client(d.endpoint).info()
        if info["workers"] and info["workers"][0]["pid"] != pid0:
            break
        time.sleep(0.3)
    else:
        pytest.fail("hung worker was not replaced")
