"""Transport benchmark: client -> broker -> worker -> broker -> client round trips, and tiny-model throughput.

    python3 bench/bench_transport.py [--n 60] [--size 1024] [--skip-model]

1. Round trip of a size x size RGBA uint8 image + a trimap, answered with a float32 alpha, by a worker
   whose handler does no work (``zeros``), over ipc and over tcp loopback: p50 / p95 / mean in ms.
2. Requests/s through the daemon with the ``sim_tiny`` + ``classifier_tiny`` random-weight model on CPU
   (256 x 256 inputs) for 1, 2 and 4 concurrent clients.
Both start real daemons (subprocesses) and stop them afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.client import Client, ServerError


def zeros(job):
    """Handler that only allocates the reply: measures the transport, not the model."""
    h, w = job.arrays["image"].shape[:2]
    # Honour the requested reply dtype like the real worker (u1 = what an 8-bit mask needs).
    dtype = np.uint8 if job.options.get("alpha_dtype") == "u1" else np.float32
    return {"alpha": np.zeros((h, w), dtype)}, {}


zeros.info = lambda: {"model": "zeros", "device": "cpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, *args: str, bind: str | None = None, workers: int = 1, device: str = "cpu") -> None:
        # A bench stopped by SIGTERM (e.g. `timeout`) must still run stop(): its daemon lives in its own session.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        self.tmp = tempfile.TemporaryDirectory()
        rt = os.path.join(self.tmp.name, "rt")
        self.endpoint = bind or f"ipc://{rt}/broker.sock"
        # Prepend, not replace: on the device machine pyzmq comes from a carried wheel folder on PYTHONPATH.
        paths = [str(REPO), str(REPO / "bench"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
        argv = [sys.executable, "-m", "backend.daemon", "serve", "--runtime-dir", rt, "--device", device,
                "--workers", str(workers), "--log-level", "WARNING", *args]
        if bind:
            argv += ["--bind", bind]
        self.proc = subprocess.Popen(argv, env=env, cwd=REPO, start_new_session=True)
        try:
            end = time.monotonic() + 180  # a GPU worker loads torch and CUDA first
            while time.monotonic() < end:
                try:
                    with Client(self.endpoint, connect_timeout=0.5, retries=0, heartbeat=0.2) as c:
                        if c.health(timeout=1.0)["workers"] >= workers:
                            return
                except ServerError:
                    pass
                time.sleep(0.2)
            raise RuntimeError("daemon did not become ready")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.tmp.cleanup()


def round_trips(endpoint: str, size: int, n: int, alpha_dtype: str = "f4") -> np.ndarray:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    trimap = np.full((size, size), 128, np.uint8)
    times = []
    with Client(endpoint) as c:
        for i in range(n + 5):
            t0 = time.perf_counter()
            reply = c.matte(rgba, trimap, timeout=30, alpha_dtype=alpha_dtype)
            dt = time.perf_counter() - t0
            assert reply["alpha"].shape == (size, size)
            if i >= 5:  # warm-up
                times.append(dt)
    return np.array(times) * 1000


def throughput(endpoint: str, clients: int, seconds: float, size: int = 256) -> float:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    trimap = np.zeros((size, size), np.uint8)
    trimap[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 128
    trimap[size // 3: 2 * size // 3, size // 3: 2 * size // 3] = 255
    done = [0] * clients
    stop = time.monotonic() + seconds

    def run(k: int) -> None:
        with Client(endpoint) as c:
            while time.monotonic() < stop:
                c.matte(image, trimap, timeout=60)
                done[k] += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60, help="round trips per transport")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput point")
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; request {args.size}x{args.size} RGBA u8 + trimap through broker + worker\n")
    print("| transport | alpha reply | MiB per round trip | p50 ms | p95 ms | mean ms |\n|---|---|---|---|---|---|")
    for name, bind in (("ipc", None), ("tcp loopback", f"tcp://127.0.0.1:{_free_port()}")):
        d = Daemon("--handler", "bench_transport:zeros", bind=bind)
        try:
            for alpha_dtype, nbytes in (("f4", 4), ("u1", 1)):
                ms = round_trips(d.endpoint, args.size, args.n, alpha_dtype)
                mib = args.size ** 2 * (5 + nbytes) / 2**20
                print(f"| {name} | {alpha_dtype} | {mib:.1f} | {np.percentile(ms, 50):.2f} | "
                      f"{np.percentile(ms, 95):.2f} | {ms.mean():.2f} |", flush=True)
        finally:
            d.stop()
    if args.skip_model:
        return 0
    workers = max(1, min(4, os.cpu_count() or 1))
    print(f"\nsim_tiny + classifier_tiny (random weights), CPU, 256x256, {workers} worker processes "
          f"(torch threads per worker: {max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 'default'})\n")
    print("| concurrent clients | requests/s |\n|---|---|")
    d = Daemon("--model", "sim_tiny", "--classifier", "classifier_tiny", "--seed", "0", workers=workers)
    try:
        throughput(d.endpoint, 1, 1.0)  # warm-up
        for clients in (1, 2, 4):
            print(f"| {clients} | {throughput(d.endpoint, clients, args.seconds):.2f} |")
    finally:
        d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
