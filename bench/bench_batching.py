"""Daemon batching benchmark: throughput of many small queued requests, one at a time vs batched.

    python3 bench/bench_batching.py [--device cuda] [--size 256] [--n 64] [--batches 1,4,8]
                                    [--model sim_r50 --classifier classifier_r50] [--precision bf16]

For each ``--max-batch`` value a real daemon (one worker on ``--device``) is started; ``--n`` requests of
``size``² (random photo-like content, a band trimap) are submitted at once on the batch queue, and the
time until the last reply is measured (after a warm-up round that lets the worker see every batch size).
Prints images/s, the speed-up over ``--max-batch 1`` measured in the same run, the mean batch the
worker formed, and the largest alpha difference to the one-at-a-time replies. Default model: the shipped
weights; ``--model``/``--classifier`` = registry names with random weights (``--seed 0``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_transport import Daemon

from backend.client import Client
from backend.protocol import BATCH, REFINE_MODES


def requests(n: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for k in range(n):
        smooth = np.stack([np.sin(xx / (9 + c + k % 5)) + np.cos(yy / (7 + c)) for c in range(3)], -1)
        image = np.clip(127 + 60 * smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        r = np.hypot(yy - size / 2, xx - size / 2)
        trimap = np.where(r < size * 0.28, 255, np.where(r < size * 0.38, 128, 0)).astype(np.uint8)
        out.append((image, trimap))
    return out


def run_all(endpoint: str, reqs: list, refine: str, timeout: float = 600.0) -> tuple[float, list]:
    with Client(endpoint, timeout=timeout) as c:
        t0 = time.perf_counter()
        opts = {"alpha_dtype": "f4", "refine": refine}
        ids = [c.submit("matte", {"image": i, "trimap": t}, opts, priority=BATCH) for i, t in reqs]
        replies = [c.result(rid, timeout=timeout) for rid in ids]
        return time.perf_counter() - t0, replies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=64, help="requests in flight at once (≤ the batch queue, 128)")
    ap.add_argument("--batches", default="1,4,8", help="--max-batch values; the first is the reference")
    ap.add_argument("--model", help="registry matting model with random weights (default: shipped weights)")
    ap.add_argument("--classifier", help="registry classifier with --model")
    ap.add_argument("--threads", type=int, default=0, help="CPU worker torch threads (0 = all cores)")
    ap.add_argument("--refine", default="off", choices=REFINE_MODES,
                    help="alpha refinement per request (default off: it runs on the host CPU, image by image, "
                         "and would hide the network's batching gain)")
    args = ap.parse_args()
    model_args = ["--model", args.model, "--seed", "0"] if args.model else []
    if args.model and args.classifier:
        model_args += ["--classifier", args.classifier]
    reqs = requests(args.n, args.size)
    print(f"device {args.device} ({args.precision}); {os.cpu_count()} CPUs; model "
          f"{args.model or 'shipped default'}; refine {args.refine}; {args.n} requests of {args.size}² queued at once\n")
    print("| max batch | images/s | speed-up | mean batch formed | max |Δα| vs max batch 1 |")
    print("|--:|--:|--:|--:|--:|")
    base_rate, base_alpha = None, None
    for max_batch in [int(b) for b in args.batches.split(",")]:
        d = Daemon(*model_args, "--precision", args.precision, "--max-batch", str(max_batch), device=args.device)
        try:
            # warm-up: loads, cudnn autotune per batch size
            run_all(d.endpoint, reqs[: max(2 * max_batch, 4)], args.refine)
            run_all(d.endpoint, reqs[: max(2 * max_batch, 4)], args.refine)
            seconds, replies = run_all(d.endpoint, reqs, args.refine)
        finally:
            d.stop()
        rate = args.n / seconds
        alphas = [r["alpha"] for r in replies]
        mean_batch = float(np.mean([r.meta.get("batch", 1) for r in replies]))
        if base_rate is None:
            base_rate, base_alpha = rate, alphas
        diff = max(float(np.abs(a - b).max()) for a, b in zip(alphas, base_alpha)) * 255
        print(f"| {max_batch} | {rate:.2f} | {rate / base_rate:.2f}× | {mean_batch:.1f} | {diff:.3f}/255 |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
