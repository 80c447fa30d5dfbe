"""Training-loader throughput of the default matting recipe: crops per second delivered to the step.

    python bench/bench_loader.py [--workers 0] [--batches 20] [--crops 2 4 8] [--config ...default_sim_lite.toml]

The default model's GPU training was loader-bound (185 crops/s from 15 workers while the GPU waited), so
this measures the two loader levers against the loader the shipped model was trained with, in the same run:

* ``reference``: one crop per prepared sample, the Gaussian trimap (scipy EDT) encoded in the workers;
* ``edt on device``: the workers skip the EDT (what ``MattingCollate(on_device=True)`` does on CUDA; the
  step then encodes the batch on the GPU, which this CPU bench does not time);
* ``+ k crops``: ``data.crops_per_item = k`` (repeated augmentation: one preparation, k crops).

Each row: a fresh ``trainer.engine.train_loader`` over the config's training data (the trainer's own
loader), the first ``--warmup`` batches dropped (worker start-up, caches), then
crops/s over ``--batches`` batches and the per-crop worker time (workers × wall / crops). The default
``--workers 0`` builds the batches in this process on one core: the pure per-crop cost, which the trainer's
N workers divide by N (with workers on a 2-core machine the main process competes with them for the cores).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.config import load_config
from trainer.engine import build_dataset, prepare_dataset, train_loader
from trainer.tasks import MattingCollate


def crops_per_second(config: Path, crops_per_item: int, on_device: bool, args: argparse.Namespace) -> float:
    cfg = load_config(config, [f"data.batch_size={args.batch}", f"data.crops_per_item={crops_per_item}",
                               f"data.num_workers={args.workers}"])
    dataset = build_dataset(cfg.data.train, cfg, "train")
    prepare_dataset(dataset)
    it = iter(train_loader(dataset, cfg, MattingCollate(on_device=on_device), device=torch.device("cpu")))
    for _ in range(args.warmup):
        next(it)
    t0 = time.perf_counter()
    for batch in itertools.islice(it, args.batches):
        assert batch["image"].shape[0] == args.batch
    wall = time.perf_counter() - t0
    del it
    return args.batches * args.batch / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "trainer/configs/default_sim_lite.toml")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--crops", type=int, nargs="+", default=[2, 4, 8])
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.workers:  # in-process: the pure per-crop cost, one core
        import cv2

        cv2.setNumThreads(1)
    rows = [("reference", 1, False), ("edt on device", 1, True)]
    rows += [(f"edt on device + {k} crops", k, True) for k in args.crops]
    print(f"# {args.config.name} training data, {args.workers} workers, batch {args.batch}, "
          f"{args.batches} batches after {args.warmup} warm-up, torch {torch.__version__}\n")
    print("| loader | crops/s | worker ms per crop | × reference |")
    print("|---|--:|--:|--:|")
    ref = None
    for name, k, on_device in rows:
        rate = crops_per_second(args.config, k, on_device, args)
        ref = ref or rate
        print(f"| {name} | {rate:.1f} | {1000 * max(args.workers, 1) / rate:.1f} | {rate / ref:.2f} |", flush=True)


if __name__ == "__main__":
    main()
