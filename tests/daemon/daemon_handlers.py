"""Trivial job handlers injected into worker processes by the daemon tests (``--handler``)."""

from __future__ import annotations

import os
import time

import numpy as np


def _alpha(job):
    tri = job.arrays.get("trimap")
    if tri is None:
        tri = job.arrays["mask"]
    return (tri.astype(np.float32) / 255.0)


def echo(job):
    """alpha = trimap / 255, instantly."""
    return {"alpha": _alpha(job)}, {"handler": "echo"}


echo.info = lambda: {"model": "echo", "version": "1", "device": "cpu", "precision": "fp32"}


def slow(job):
    """Sleeps ``SLOW_MS`` (default 50 ms) in small steps, reporting progress (so cancel works)."""
    total = float(os.environ.get("SLOW_MS", "50")) / 1000.0
    steps = 5
    for i in range(steps):
        job.progress("step", i / steps)
        time.sleep(total / steps)
    return {"alpha": _alpha(job)}, {"handler": "slow", "pid": os.getpid()}


slow.info = lambda: {"model": "slow", "version": "1", "device": "cpu", "precision": "fp32"}


def zeros(job):
    """alpha of zeros in the requested dtype (transport benchmark)."""
    h, w = job.arrays["image"].shape[:2]
    return {"alpha": np.zeros((h, w), np.float32)}, {}


zeros.info = lambda: {"model": "zeros", "version": "1", "device": "cpu", "precision": "fp32"}


def hang(job):
    """Never returns (watchdog test)."""
    while True:
        time.sleep(1)


class _SlowBatch:
    """``slow`` that batches: same-size jobs share one sleep (a stand-in for one GPU forward pass)."""

    def info(self):
        return {"model": "slow-batch", "version": "1", "device": "cpu", "precision": "fp32"}

    def batch_key(self, job):
        return job.arrays["image"].shape[:2]

    def __call__(self, job):
        return self.run_batch([job])[0]

    def run_batch(self, jobs):
        total = float(os.environ.get("SLOW_MS", "50")) / 1000.0
        for i in range(5):
            time.sleep(total / 5)
        out = []
        for job in jobs:
            try:
                job.check()
                out.append(({"alpha": _alpha(job)}, {"handler": "slow-batch", "batch": len(jobs), "pid": os.getpid()}))
            except Exception as exc:  # noqa: BLE001 — cancelled / expired while the batch ran: job's reply
                out.append(exc)
        return out


slow_batch = _SlowBatch()
