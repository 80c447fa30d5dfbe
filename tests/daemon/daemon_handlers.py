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
