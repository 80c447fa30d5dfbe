"""Per-image CPU time of the default model (sim_lite + classifier_lite, random weights) on the held-out
alphamatting images (Trimap1), against the closed-form baseline's per-image time.

    python bench/bench_heldout.py [--repeats 3] [--precision auto|fp32|bf16] [--threads 2] [--json out.json]

The closed-form times come from ../shared/docs/baseline/baseline_trimap1.json (pymatting cf, same machine type).
Timing does not depend on the weights, so random weights are used. Reported: median of ``--repeats`` after one
warm-up per image, the predictor's own stage timings (preprocess, classifier, matting, postprocess).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.evaluation import ALPHAMATTING_HELD_OUT
from backend.models.registry import build_model
from backend.predictor import MattingPredictor

DATA = (REPO / ".." / "shared" / "data" / "alphamatting").resolve()
BASELINE = (REPO / ".." / "shared" / "docs" / "baseline" / "baseline_trimap1.json").resolve()


def cf_times() -> dict[str, float]:
    if not BASELINE.is_file():
        return {}
    rows = json.loads(BASELINE.read_text())["rows"]
    return {r["image"][:4]: r["time_s"] for r in rows if r.get("method") == "cf"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sim_lite")
    ap.add_argument("--classifier", default="classifier_lite")
    ap.add_argument("--precision", default="auto", help="auto (the default: bf16 on CPUs with native bf16) or fp32|bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--images", nargs="+", default=list(ALPHAMATTING_HELD_OUT))
    ap.add_argument("--predictor-kw", default="{}", help="extra MattingPredictor kwargs as JSON")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pred = MattingPredictor(build_model(args.model), build_model(args.classifier), device="cpu",
                            precision=args.precision, **json.loads(args.predictor_kw))
    cf = cf_times()
    stages = ("preprocess", "classifier", "matting", "postprocess", "total")
    print(f"# {args.model}+{args.classifier} {pred.precision} on CPU ({torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, {args.predictor_kw}\n")
    print("| image | size | " + " | ".join(f"{s} s" for s in stages) + " | best s | cf s | best/cf |")
    print("|---|---|" + "---|" * (len(stages) + 3))
    rows = []
    for name in args.images:
        image = np.asarray(Image.open(DATA / "image" / f"{name}.png").convert("RGB"))
        trimap = np.asarray(Image.open(DATA / "trimap1" / f"{name}.png").convert("L"))
        pred.predict(image, trimap)  # warm-up
        runs = [pred.predict(image, trimap).timings for _ in range(args.repeats)]
        # Median per stage; "best" = fastest whole run (this 2-core machine is shared: contention only adds time).
        med = {s: statistics.median(r[s] for r in runs) for s in stages}
        med["best"] = min(r["total"] for r in runs)
        c = cf.get(name, float("nan"))
        rows.append({"image": name, **med, "cf": c})
        print(f"| {name} | {image.shape[1]}×{image.shape[0]} | " + " | ".join(f"{med[s]:.3f}" for s in stages)
              + f" | {med['best']:.3f} | {c:.2f} | {med['best'] / c:.2f} |", flush=True)
    mean = {s: float(np.mean([r[s] for r in rows])) for s in (*stages, "best", "cf")}
    print("| **mean** | | " + " | ".join(f"**{mean[s]:.3f}**" for s in stages)
          + f" | **{mean['best']:.3f}** | **{mean['cf']:.2f}** | **{mean['best'] / mean['cf']:.2f}** |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows, "mean": mean},
                                        indent=1))


if __name__ == "__main__":
    main()
