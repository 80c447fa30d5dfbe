"""Admission control: at 10x the service rate, BUSY answers come back within 10 ms and memory stays bounded."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from conftest import child_env, rss_mb, sample

from backend import protocol as P
from backend.client import Busy, Client


@pytest.mark.timeout(90)
def test_exact_busy_count_when_queue_full(daemon):
    d = daemon("--queue-size", "4", handler="daemon_handlers:slow", env=child_env(SLOW_MS="1500"))
    image, trimap = sample()
    with Client(d.endpoint) as c:
        # Start one job and wait until the broker reports it running, then fill the queue: exactly 4 queued.
        started: list[str] = []
        ids = [c.submit(P.MATTE, {"image": image, "trimap": trimap}, progress=lambda stage, done: started.append(stage))]
        deadline = time.monotonic() + 10
        while "running" not in started and time.monotonic() < deadline:
            c.wait_any(0.05)
        assert "running" in started
        ids += [c.submit(P.MATTE, {"image": image, "trimap": trimap}) for _ in range(4)]
        c.wait_any(0.3)
        busy = []
        for _ in range(3):
            with pytest.raises(Busy) as info:
                c.matte(image, trimap)
            busy.append(info.value)
        assert all(0.05 <= b.retry_after <= 30 for b in busy)
        for rid in ids:
            c.cancel(rid)


@pytest.mark.timeout(120)
def test_10x_overload_busy_fast_and_memory_bounded(daemon, zctx):
    service_s = 0.1  # one worker: 10 requests/s
    d = daemon("--queue-size", "8", "--reply-cache-mb", "16", handler="daemon_handlers:slow", env=child_env(SLOW_MS=str(int(service_s * 1000))))
    h = w = 512
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = np.full((h, w), 128, np.uint8)
    sock = zctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvhwm = 0
    sock.connect(d.endpoint)
    rate, duration = 10 / service_s, 6.0  # 10x the service rate
    sent: dict[str, float] = {}
    first: dict[str, tuple[str, float]] = {}
    finals: dict[str, str] = {}
    rss0 = rss_mb(d.pid)
    rss_peak = rss0
    t0 = time.monotonic()
    n = 0

    def drain(wait_ms: int) -> None:
        if not sock.poll(wait_ms):
            return
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            head = P.unpack_header(frames[0], P.REPLY_UNPACK_LIMITS)
            rid = head["id"]
            first.setdefault(rid, (head["kind"] if head["kind"] != P.ERROR else head["code"], now))
            if head["kind"] in (P.RESULT, P.ERROR):
                finals[rid] = head["kind"] if head["kind"] == P.RESULT else head["code"]

    while time.monotonic() - t0 < duration:
        rid = f"ov{n}"
        n += 1
        frames = P.encode_message(P.request_header(P.MATTE, rid, timeout=30), {"image": image, "trimap": trimap})
        sent[rid] = time.monotonic()
        sock.send_multipart(frames, copy=False)
        next_at = t0 + n / rate
        while time.monotonic() < next_at:
            drain(max(0, int((next_at - time.monotonic()) * 1000)))
        if n % 50 == 0:
            rss_peak = max(rss_peak, rss_mb(d.pid))
    end = time.monotonic() + 10
    while len(finals) < n and time.monotonic() < end:
        drain(100)
    busy_lat = np.array([first[r][1] - sent[r] for r in sent if first.get(r, ("",))[0] == P.E_BUSY]) * 1000
    accepted = [r for r in sent if first.get(r, ("",))[0] == P.PROGRESS]
    print(f"\nsent {n} in {duration:.0f} s (~{n / duration:.0f}/s vs service 10/s): {len(busy_lat)} busy, "
          f"{len(accepted)} accepted; busy latency p50 {np.median(busy_lat):.2f} ms, p95 "
          f"{np.percentile(busy_lat, 95):.2f} ms, max {busy_lat.max():.2f} ms; broker RSS {rss0:.0f} -> peak "
          f"{rss_peak:.0f} MiB")
    assert len(busy_lat) >= n * 0.7
    assert np.percentile(busy_lat, 95) <= 10.0
    assert all(r in first for r in sent)  # every request got an immediate answer (queued or busy)
    assert all(finals.get(r) == P.RESULT for r in accepted)
    # bound: queued requests (8 x 1 MiB) + reply cache (16 MiB) + HWM buffers; ~600 MiB were offered
    assert rss_peak - rss0 < 64
