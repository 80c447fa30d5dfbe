"""Per-stage inference time and peak memory of the SIM pipeline per configuration and image size.

Stages: pre-processing (padding, trimap encodings, transfer), classifier windows (semantic trimap),
encoder, decoder, post-processing. Random weights (timing does not depend on them); a synthetic
image whose unknown band covers ~15 % of the pixels, like a real portrait trimap.

    python bench/bench_inference.py --device cpu --configs sim_lite:classifier_lite sim_r50:classifier_r50 --sizes 512 1024
    python bench/bench_inference.py --device cuda --precision fp32 bf16 --sizes 512 1024 2048
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend import processing
from backend.models.registry import build_model
from backend.predictor import MattingPredictor
from backend.semantic_trimap import semantic_trimap

# Reference measured for the official SIM code (random weights, FP32, its full pipeline), from issue 3.
OFFICIAL_H200 = {512: "0.075–0.089 s / 0.75 GiB", 1024: "0.35–0.38 s / 2.05 GiB", 2048: "1.96–2.10 s / 7.26 GiB"}
OFFICIAL_CPU = {512: "4.1–4.9 s"}


def example(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size * 0.35) + 0.05 * np.sin(xx / 9.0)
    mask = r < 1
    image = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    return image, processing.trimap_from_mask(mask, max(4, size // 40))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 2**20
    return float("nan")


@torch.no_grad()
def run_once(pred: MattingPredictor, image: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    dev = pred.device
    t = {}
    t0 = time.perf_counter()
    h, w = trimap.shape
    ph, pw = processing.official_padding(h, w)
    img = processing.pad_reflect(image.astype(np.float32) / 255, ph, pw)
    tri = processing.pad_reflect(trimap, ph, pw)
    x = processing.build_inputs(img, tri, dev)
    sync(dev)
    t["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    net, clf = pred._networks()  # what predict() runs: BN-folded channels-last copies unless optimize=False
    with pred._autocast():
        smap = semantic_trimap(clf, x.image_n, x.trimap, batch_size=None, channels_last=pred.channels_last)
        sync(dev)
        t["classifier"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = net
        feats = m.encoder(torch.cat([x.image_n, x.trimap_gauss, x.trimap2], 1), smap)
        sync(dev)
        t["encoder"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = m.decoder(feats[1:], x.image, x.image_n, x.trimap2, False)
        sync(dev)
        t["decoder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    processing.finalize_alpha(out["alpha"][0, 0, :h, :w].float().cpu().numpy(), trimap)
    t["postprocess"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", nargs="+", default=["sim_lite:classifier_lite", "sim_r50:classifier_r50"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    ap.add_argument("--precision", nargs="+", default=["fp32"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--no-optimize", action="store_true", help="plain eager models (no BN folding / channels-last)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# bench_inference on {name}, torch {torch.__version__}\n")
    cols = ["preprocess", "classifier", "encoder", "decoder", "postprocess", "total"]
    print("| config | precision | size | " + " | ".join(f"{c} s" for c in cols) + " | peak GiB | official ref |")
    print("|---|---|---|" + "---|" * (len(cols) + 2))
    for cfg in args.configs:
        mname, cname = cfg.split(":")
        torch.manual_seed(0)
        for prec in args.precision:
            pred = MattingPredictor(build_model(mname), build_model(cname), device=device, precision=prec,
                                    optimize=not args.no_optimize)
            for size in args.sizes:
                image, trimap = example(size)
                run_once(pred, image, trimap)  # warm-up (allocator, cuDNN autotune)
                peak_reset(device)
                runs = [run_once(pred, image, trimap) for _ in range(args.repeats)]
                best = {c: min(r[c] for r in runs) for c in cols}
                ref = (OFFICIAL_H200 if device.type == "cuda" else OFFICIAL_CPU).get(size, "—") if mname == "sim_r50" else "—"
                print(f"| {mname}+{cname} | {prec} | {size}² | " + " | ".join(f"{best[c]:.3f}" for c in cols)
                      + f" | {peak_gib(device):.2f} | {ref} |", flush=True)


if __name__ == "__main__":
    main()
