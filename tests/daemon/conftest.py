"""Fixtures for daemon tests: real processes on ipc in tmp dirs / 127.0.0.1, always killed afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zmq

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])
    env.pop("SEMANTIC_MATTE_ENDPOINT", None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Proc:
    proc: subprocess.Popen
    endpoint: str
    runtime: Path
    log: Path
    back: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_ready(endpoint: str, *, timeout: float = 20.0, workers: int = 1, curve=None, proc=None) -> dict:
    from backend.client import Client, ServerError

    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with Client(endpoint, connect_timeout=0.5, retries=0, heartbeat=0.2, curve=curve) as c:
                health = c.health(timeout=1.0)
            last = health
            if health.get("workers", 0) >= workers:
                return health
        except ServerError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"daemon at {endpoint} not ready: {last}")


def _kill_group(proc: subprocess.Popen, graceful: float = 5.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(graceful)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers are in the same session: nothing is left behind
    except ProcessLookupError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture
def spawn(tmp_path):
    """spawn(argv, endpoint=...) -> Proc, started in its own session and killed (group) at teardown."""
    procs: list[subprocess.Popen] = []

    def _spawn(argv: list[str], *, endpoint: str = "", runtime: Path | None = None, env: dict | None = None,
               name: str = "proc") -> Proc:
        log = tmp_path / f"{name}-{len(procs)}.log"
        with open(log, "wb") as fh:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(argv, env=env or child_env(), stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
        procs.append(proc)
        return Proc(proc, endpoint, runtime or tmp_path, log)

    yield _spawn
    for proc in procs:
        _kill_group(proc)


@pytest.fixture
def daemon(spawn, tmp_path):
    """daemon(handler=..., workers=..., extra args) -> Proc with a ready daemon on ipc in tmp_path."""
    count = [0]

    def _start(*extra: str, handler: str | None = "daemon_handlers:echo", workers: int = 1, bind: str | None = None,
               ready_workers: int | None = None, env: dict | None = None, curve=None) -> Proc:
        count[0] += 1
        runtime = tmp_path / f"rt{count[0]}"
        argv = [sys.executable, "-m", "backend.daemon", "serve", "--runtime-dir", str(runtime), "--device", "cpu",
                "--workers", str(workers), *extra]
        if handler:
            argv += ["--handler", handler]
        if bind:
            argv += ["--bind", bind]
        endpoint = bind or f"ipc://{runtime}/broker.sock"
        p = spawn(argv, endpoint=endpoint, runtime=runtime, env=env, name="daemon")
        try:
            wait_ready(endpoint, workers=workers if ready_workers is None else ready_workers, curve=curve, proc=p.proc)
        except Exception:  # noqa: BLE001 — any failure to come up is reported with the daemon's log
            raise AssertionError(f"daemon did not start:\n{p.log_text()[-4000:]}")
        p.back = f"ipc://{runtime}/workers.sock" if endpoint.startswith("ipc://") else ""
        return p

    return _start


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def sample(h: int = 48, w: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = np.zeros((h, w), np.uint8)
    trimap[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 128
    trimap[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = 255
    return image, trimap
