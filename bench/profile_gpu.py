"""Where the fast path's milliseconds go, stage by stage (device machine).

One warm fast-fp16 predict of SIM-R50 + classifier-R50 (random calibrated weights, as in bench_gpu) is split
into its stages — pre-processing, classifier windows, matting net — and each is profiled on its own with
torch.profiler: busy device time against wall time (compute- vs launch-bound) and the costliest kernels.
Then ``torch.compile`` of each network is timed in isolation on the same inputs (with its build time).

    python bench/profile_gpu.py --out $OUT/profile.md    # every section is appended as soon as it is done

Sections are written as they finish, so a run cut short by its time limit still returns what it measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpu import calibrate_weights, example, kernel_summary, make_predictor, set_mode, sync

from backend import processing
from backend.models.registry import build_model
from backend.predictor import PRECISIONS, MattingPredictor
from backend.semantic_trimap import semantic_trimap

T0 = time.perf_counter()


class Report:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def add(self, text: str) -> None:
        print(text, flush=True)
        if self.path:
            with self.path.open("a") as f:
                f.write(text + "\n")


def timed(dev: torch.device, fn: Callable[[], Any], repeats: int = 10) -> float:
    """Median wall ms of ``fn`` (synchronised), after two warm-up calls."""
    for _ in range(2):
        fn()
    sync(dev)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def profiled(dev: torch.device, name: str, fn: Callable[[], Any], rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        fn()
    sync(dev)
    t = time.perf_counter()
    cuda = dev.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
        sync(dev)
    wall = (time.perf_counter() - t) * 1e3
    events = prof.key_averages()
    busy, launches = kernel_summary(events)
    plain = timed(dev, fn)
    table = events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=rows, max_name_column_width=70)
    return (f"### {name}\n\nwall {plain:.2f} ms (median of 10, unprofiled); under the profiler: wall {wall:.1f} ms, "
            f"kernels busy {busy:.2f} ms, {launches} kernels\n\n```\n{table}\n```\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--compile-budget-s", type=float, default=120.0, help="skip compile runs past this wall time")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode (session 9: max-autotune-no-cudagraphs "
                    "autotuned past a 200 s call on an H200)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the script (small --size)")
    args = ap.parse_args()
    rep = Report(args.out)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    rep.add(f"# profile_gpu on {name}, torch {torch.__version__}, size {args.size}²\n")

    torch.manual_seed(0)
    sim, clf = build_model("sim_r50").to(dev), build_model("classifier_r50").to(dev)
    calibrate_weights(sim, clf, dev, 512)
    cfg = "fast-fp16" if dev.type == "cuda" else "fast-bf16"
    set_mode(cfg)
    pred: MattingPredictor = make_predictor(sim, clf, dev, cfg)
    image, trimap = example(args.size)
    pred.predict(image, trimap)
    net, fast_clf = pred._networks()
    h, w = trimap.shape
    ph, pw = processing.official_padding(h, w)
    low = PRECISIONS[pred.precision]
    inputs, _ = pred._device_inputs([image], [trimap], ph, pw, low)

    def stage_pre() -> Any:
        return pred._device_inputs([image], [trimap], ph, pw, low)

    def stage_cls() -> Any:
        with pred._autocast():
            return semantic_trimap(fast_clf, inputs.image_n, inputs.trimap, out_dtype=low, channels_last=True,
                                   batch_size=pred.classifier_batch)

    smap = stage_cls()

    def stage_mat() -> Any:
        return pred._forward(net, inputs, smap, False)

    rep.add(f"whole predict: {timed(dev, lambda: pred.predict(image, trimap), 7):.2f} ms (median of 7)\n")
    for name, fn in (("pre-processing", stage_pre), ("classifier windows", stage_cls), ("matting net", stage_mat)):
        rep.add(profiled(dev, name, fn, args.rows))

    # The classifier alone on one batch of 320-px windows, as semantic_trimap feeds it.
    n_win = 36
    x = torch.randn(n_win if dev.type == "cuda" else 2, 4, 320, 320, device=dev).contiguous(memory_format=torch.channels_last)
    with pred._autocast():
        base = timed(dev, lambda: fast_clf(x))
    rep.add(f"classifier, {len(x)}×4×320² {pred.precision} channels-last: {base:.2f} ms")
    rep.add("")

    for name, module, call in (("classifier", fast_clf, lambda m: m(x)),
                               ("matting net", net, lambda m: m(inputs.image, inputs.image_n, inputs.trimap2,
                                                                 inputs.trimap_gauss, smap, aux=False))):
        if time.perf_counter() - T0 > args.compile_budget_s:
            rep.add(f"{name} compile: skipped (past {args.compile_budget_s:.0f} s)")
            continue
        with pred._autocast():
            eager = timed(dev, lambda c=call, m=module: c(m))
            t = time.perf_counter()
            compiled = torch.compile(module, mode=None if args.compile_mode == "default" else args.compile_mode,
                                     dynamic=False)
            call(compiled)
            sync(dev)
            build = time.perf_counter() - t
            fast = timed(dev, lambda c=call, m=compiled: c(m))
        rep.add(f"{name}: eager {eager:.2f} ms, torch.compile({args.compile_mode}) {fast:.2f} ms "
                f"({eager / fast:.2f}×), built in {build:.0f} s")
    rep.add(f"\ntotal wall {time.perf_counter() - T0:.0f} s")


if __name__ == "__main__":
    main()
