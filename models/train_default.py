"""Recipe that trains the shipped default model (classifier_lite + sim_lite) within a wall-clock budget.

Each phase first measures throughput on a short calibration run, then trains a fresh run whose step
count fills the budget, so the cosine schedule always completes. Everything goes through the trainer's
public API (trainer.config / trainer.engine); the exact configs are saved in each run directory.

    SEMANTIC_MATTE_DATA=../shared/data python3 models/train_default.py --out runs/default --device cuda \
        --classifier-seconds 90 --matting-seconds 330 --workers 14
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import load_config  # noqa: E402
from trainer.engine import train  # noqa: E402

CLASSIFIER = [
    "task=classifier", "model.arch=classifier_lite",
    'data.train=[{kind="synthetic"}]',
    "data.crop_size=320", "optim.name=adamw", "optim.lr=1e-3", "optim.weight_decay=1e-4",
    "schedule.policy=cosine", "schedule.warmup_steps=50",
]
MATTING = [
    "task=matting", "model.arch=sim_lite",
    # Procedural 20-class data plus the 18 alphamatting training photos (held-out images are refused
    # by the dataset itself), each composited on real and generated backgrounds.
    'data.train=[{kind="mixed", datasets=[{kind="synthetic"}, {kind="alphamatting", split="train"}], weights=[0.6, 0.4]}]',
    "data.crop_size=320", "optim.name=adamw", "optim.lr=1e-3", "optim.weight_decay=1e-4",
    "schedule.policy=cosine", "schedule.warmup_steps=100",
]


def run_phase(name: str, base: list[str], extra: list[str], seconds: float, batch: int, out: Path) -> Path:
    common = [f"data.batch_size={batch}", f"run.out_dir={out}", "run.progress=false", "run.log_every=10",
              "run.tensorboard=false"] + extra
    calib = load_config(None, base + common + ["schedule.steps=40", f"run.name={name}-calibration",
                                               "run.ckpt_every=0"])
    t0 = time.perf_counter()
    tr = train(calib)
    rate = tr.history[-1]["samples_per_s"] / batch  # steady-state steps/s (last log window)
    steps = max(50, int(seconds * rate))
    print(f"[{name}] calibration: {rate:.2f} steps/s ({time.perf_counter() - t0:.0f}s); training {steps} steps",
          flush=True)
    shutil.rmtree(calib.run_dir, ignore_errors=True)
    cfg = load_config(None, base + common + [f"schedule.steps={steps}", f"run.name={name}", "run.ckpt_every=500"])
    t0 = time.perf_counter()
    tr = train(cfg)
    wall = time.perf_counter() - t0
    path = tr.export()
    (cfg.run_dir / "summary.json").write_text(json.dumps({"steps": steps, "wall_s": wall, "batch": batch,
                                                          "last": tr.history[-1]}, indent=1))
    print(f"[{name}] {steps} steps in {wall:.0f}s → {path}; last: {tr.history[-1]}", flush=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/default"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--classifier-seconds", type=float, default=90)
    ap.add_argument("--matting-seconds", type=float, default=330)
    ap.add_argument("--classifier-batch", type=int, default=64)
    ap.add_argument("--matting-batch", type=int, default=32)
    ap.add_argument("--classifier", type=Path, help="skip phase 1 and use these classifier weights")
    ap.add_argument("--init", type=Path, help="start the matting model from these weights (continuation)")
    ap.add_argument("--deadline-seconds", type=float, default=0,
                    help="whole-recipe wall-clock limit: the matting budget shrinks to fit (0 = none)")
    args = ap.parse_args()
    start = time.perf_counter()
    extra = [f"run.device={args.device}", f"run.precision={args.precision}", f"data.num_workers={args.workers}"]
    clf = args.classifier or run_phase("classifier", CLASSIFIER, extra, args.classifier_seconds,
                                       args.classifier_batch, args.out)
    mat_extra = extra + [f"model.classifier={clf}"] + ([f"model.init={args.init}"] if args.init else [])
    seconds = args.matting_seconds
    if args.deadline_seconds:
        # Leave room for the calibration run (~40 steps + worker start-up) and the export.
        seconds = min(seconds, args.deadline_seconds - (time.perf_counter() - start) - 60)
    run_phase("matting", MATTING, mat_extra, seconds, args.matting_batch, args.out)


if __name__ == "__main__":
    main()
