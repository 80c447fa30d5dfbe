"""Evaluation report of the shipped default model against closed-form matting (issue 6).

Writes ``report.md`` (+ contact sheets per part) into ``--out``:
* held-out alphamatting images (GT02, 05, … 26) with Trimap1 and Trimap2: SAD / MSE / Grad / Conn,
  per-image SAD and time next to closed-form matting (pymatting CF, run in the same process, so the times
  compare on whatever machine runs it; its SAD is checked against
  ``../shared/docs/baseline/baseline_trimap{1,2}.json``) and next to the other refinement mode (``band``
  when the default ``nonlocal`` is scored, and the other way round);
* the procedural 20-class test set (generated, fixed seed), per class;
* the ablation without the semantic trimap (all-zero map) on both.

    python bench/bench_quality.py --out docs/report
    python bench/bench_quality.py --validation runs/x/matting_step*.pt   # model selection: GT01, GT10, GT19
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend import evaluation
from backend.predictor import MattingPredictor
from backend.protocol import REFINE_BAND, REFINE_DEFAULT, REFINE_MODES, REFINE_NONLOCAL, REFINE_OFF

SHARED = REPO.parent / "shared"
TARGET_RATIO = 0.8  # goal: mean SAD ≤ 0.8 × closed-form
TEST_SEED = 2026  # the procedural test set of the report
VALIDATION_SEED = 7  # the procedural second opinion of --validation (never the test seed)


def cf_reference(trimap_set: str) -> dict[str, dict[str, float]]:
    """The closed-form numbers of the issue (``shared/docs/baseline``), per image; {} where missing."""
    path = SHARED / "docs" / "baseline" / f"baseline_{trimap_set}.json"
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {Path(r["image"]).stem: r for r in rows if r.get("method", "cf") == "cf"}


def sad_ratios(result: evaluation.EvalResult, reference: evaluation.EvalResult) -> list[float]:
    """Per-image SAD of ``result`` over ``reference``'s (same samples, same order)."""
    return [r.metrics["sad"] / c.metrics["sad"] for r, c in zip(result.results, reference.results)]


def run(predictor: MattingPredictor, samples: list, semantic: bool, out_dir: Path | None, title: str,
        refine: str | None = None):
    result = evaluation.evaluate(
        lambda img, tri, group: predictor.predict(img, tri, semantic=semantic, refine=refine).alpha, samples)
    if out_dir is not None:
        evaluation.write_report(result, out_dir, title=title)
    return result


def validation(weights: list[Path], classifier: Path | None, refine: str,
               photos: Sequence[str] = evaluation.ALPHAMATTING_VALIDATION) -> None:
    """Mean SAD of each matting weights file on the validation ``photos`` (both trimap sets; the held-out
    evaluation photos are refused): the number a run that left them out of its training data selects its
    snapshot on. Beside it the mean of the per-photo ratios to closed-form matting's SAD (no photo dominates
    it, as GT10 dominates the plain sum; issue 6 judges each image by that ratio) and a second opinion from 40
    procedural images (2 per class, 512², a seed the test set does not use): a few photo crops are a noisy
    score. Prints a table; writes nothing."""
    from trainer.data.synthetic import write_dataset

    alphamatting = SHARED / "data" / "alphamatting"
    sets = {t: evaluation.validation_samples(evaluation.find_samples(alphamatting, trimap_set=t), photos)
            for t in ("trimap1", "trimap2")}
    cols = [f"{s.name} {t[0].upper()}{t[-1]}" for t, samples in sets.items() for s in samples]
    cf = [evaluation.evaluate(evaluation.closed_form_alpha, samples) for samples in sets.values()]
    cf_sads = [r.metrics["sad"] for result in cf for r in result.results]
    print("| weights | steps | " + " | ".join(cols) + f" | mean SAD | mean SAD / CF | procedural seed {VALIDATION_SEED} SAD |")
    print("|---|--:|" + "--:|" * (len(cols) + 3))
    print("| closed-form matting | | " + " | ".join(f"{v:.2f}" for v in cf_sads) + f" | {np.mean(cf_sads):.3f} | 1 | |")
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, per_class=2, size=512, seed=VALIDATION_SEED, layout="test")
        procedural = evaluation.find_samples(tmp)
        for w in weights:
            predictor = MattingPredictor.from_pretrained(w, classifier, device="cpu", refine=refine)
            results = [run(predictor, samples, True, None, "") for samples in sets.values()]
            sads = [r.metrics["sad"] for result in results for r in result.results]
            proc = run(predictor, procedural, True, None, "").summary["overall"]["sad"]
            ratio = np.mean([v for result, c in zip(results, cf) for v in sad_ratios(result, c)])
            print(f"| {w} | {predictor.info().get('trained_steps', '?')} | " + " | ".join(f"{v:.2f}" for v in sads)
                  + f" | **{np.mean(sads):.3f}** | {ratio:.3f} | {proc:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "report")
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--classifier", type=Path)
    ap.add_argument("--per-class", type=int, default=3, help="procedural test images per class")
    ap.add_argument("--size", type=int, default=512, help="procedural test image size")
    ap.add_argument("--validation", type=Path, nargs="+", metavar="WEIGHTS",
                    help="only score these matting weights files on the validation photos (--photos)")
    ap.add_argument("--photos", default=",".join(evaluation.ALPHAMATTING_VALIDATION),
                    help="--validation: the selection photos, comma-separated (those the run held out of its data)")
    ap.add_argument("--refine", choices=REFINE_MODES, default=REFINE_DEFAULT,
                    help="alpha refinement of the scored pipeline (the report also scores the network alone)")
    args = ap.parse_args()
    if args.validation:
        validation(args.validation, args.classifier, args.refine, [n for n in args.photos.split(",") if n])
        return
    args.out.mkdir(parents=True, exist_ok=True)
    predictor = MattingPredictor.from_pretrained(args.weights, args.classifier, device="cpu", refine=args.refine)
    info = predictor.info()
    lines = ["# Default model evaluation report\n",
             (f"Model `{info['model']}` + `{info['classifier_arch']}` ({info.get('trained_steps', '?')} matting steps), "
             f"CPU, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{info['precision']}. "
             "Predictions quantised to 8 bits, known regions forced; metrics as the DIM MATLAB code "
             "(SAD/1000, MSE×10³, Grad/1000, Conn/1000) on trimap == 128. "
             + (f"Alpha refinement `{args.refine}` (`backend.refinement`); the *network alone* columns are the same "
                "weights with `refine=off`.\n" if args.refine != REFINE_OFF else "No alpha refinement.\n"))]
    summary: dict = {}
    alt = {REFINE_BAND: REFINE_NONLOCAL, REFINE_NONLOCAL: REFINE_BAND}.get(args.refine)  # the other refinement, for comparison
    alphamatting = SHARED / "data" / "alphamatting"
    for tset in ("trimap1", "trimap2"):
        if not alphamatting.is_dir():
            lines.append("\n(alphamatting data not available: held-out section skipped)\n")
            break
        samples = evaluation.held_out_samples(evaluation.find_samples(alphamatting, trimap_set=tset))
        res = run(predictor, samples, True, args.out / f"heldout_{tset}", f"Held-out alphamatting, {tset}")
        abl = run(predictor, samples, False, None, "")
        net = run(predictor, samples, True, None, "", refine=REFINE_OFF) if args.refine != REFINE_OFF else res
        other = run(predictor, samples, True, None, "", refine=alt) if alt else None
        cf = evaluation.evaluate(evaluation.closed_form_alpha, samples)  # timed like the pipeline, same machine
        lines.append(f"\n## Held-out alphamatting images, {tset.capitalize()}\n")
        lines.append("| image | SAD | MSE×10³ | Grad | Conn | time s | CF SAD | CF MSE×10³ | CF time s | SAD / CF "
                     f"| no semantic SAD | network alone SAD | network alone time s | {alt or 'other'} SAD "
                     f"| {alt or 'other'} time s |")
        lines.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        ratios = sad_ratios(res, cf)
        for i, (r, c, a, nr, ratio) in enumerate(zip(res.results, cf.results, abl.results, net.results, ratios)):
            m = r.metrics
            other_cells = f"{other.results[i].metrics['sad']:.2f} | {other.results[i].time_s:.2f}" if other else "| "
            lines.append(f"| {r.sample.name} | {m['sad']:.2f} | {m['mse']:.2f} | {m['grad']:.2f} | {m['conn']:.2f} | "
                         f"{r.time_s:.2f} | {c.metrics['sad']:.2f} | {c.metrics['mse']:.2f} | {c.time_s:.2f} | "
                         f"{ratio:.2f} | {a.metrics['sad']:.2f} | {nr.metrics['sad']:.2f} | {nr.time_s:.2f} | {other_cells} |")
        s, c, other_s = res.summary["overall"], cf.summary["overall"], other.summary["overall"] if other else None
        lines.append(f"| **mean** | **{s['sad']:.2f}** | {s['mse']:.2f} | {s['grad']:.2f} | {s['conn']:.2f} | "
                     f"{s['time']:.2f} | **{c['sad']:.2f}** | {c['mse']:.2f} | {c['time']:.2f} | {s['sad'] / c['sad']:.2f} | "
                     f"{abl.summary['overall']['sad']:.2f} | {net.summary['overall']['sad']:.2f} | "
                     f"{net.summary['overall']['time']:.2f} | "
                     + (f"**{other_s['sad']:.2f}** | {other_s['time']:.2f} |" if other_s else "| |"))
        goal = TARGET_RATIO * c["sad"]
        worst = max(ratios)
        lines.append(f"\nGoal mean SAD ≤ {goal:.2f} (0.8 × CF): **{'met' if s['sad'] <= goal else 'not met'}** "
                     f"({s['sad']:.2f}); worst image SAD / CF = {worst:.2f} (goal ≤ 1.25); time {s['time']:.2f} s vs "
                     f"CF {c['time']:.2f} s. Contact sheet: `heldout_{tset}/contact_sheet.png`.")
        summary[tset] = {"sad": s["sad"], "cf_sad": c["sad"], "time": s["time"], "cf_time": c["time"],
                         "worst_ratio": worst, "no_semantic_sad": abl.summary["overall"]["sad"],
                         "network_alone_sad": net.summary["overall"]["sad"]}
        if other_s:
            other_worst = max(sad_ratios(other, cf))
            lines.append(f"With `refine=\"{alt}\"`: mean SAD {other_s['sad']:.2f} "
                         f"({'met' if other_s['sad'] <= goal else 'not met'}), worst SAD / CF = {other_worst:.2f}, "
                         f"time {other_s['time']:.2f} s.")
            summary[tset].update({f"{alt}_sad": other_s["sad"], f"{alt}_time": other_s["time"], f"{alt}_worst_ratio": other_worst})
        reference = cf_reference(tset)
        if reference:
            ref = np.mean([reference[r.sample.name]["sad"] for r in cf.results])
            ref_time = np.mean([reference[r.sample.name]["time_s"] for r in cf.results])
            lines.append(f"Closed-form reference of the issue (`shared/docs/baseline`): SAD {ref:.2f}, {ref_time:.2f} s "
                         "on its machine.")
            summary[tset].update(cf_reference_sad=ref, cf_reference_time=ref_time)
        lines.append("")

    from trainer.data.synthetic import write_dataset  # trainer is optional for the backend; needed here only

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_dataset(tmp, per_class=args.per_class, size=args.size, seed=TEST_SEED, layout="test")
        samples = evaluation.find_samples(tmp)
        res = run(predictor, samples, True, args.out / "procedural", "Procedural 20-class test set")
        abl = run(predictor, samples, False, None, "")
        net = run(predictor, samples, True, None, "", refine=REFINE_OFF) if args.refine != REFINE_OFF else res
    lines.append(f"\n## Procedural 20-class test set ({args.per_class} × 20 images, {args.size}², seed {TEST_SEED})\n")
    lines.append("| class | SAD | MSE×10³ | Grad | Conn | no semantic SAD | no semantic MSE×10³ |")
    lines.append("|---|--:|--:|--:|--:|--:|--:|")
    for g in sorted(res.summary["groups"]):
        m, a = res.summary["groups"][g], abl.summary["groups"][g]
        lines.append(f"| {g} | {m['sad']:.2f} | {m['mse']:.2f} | {m['grad']:.2f} | {m['conn']:.2f} | {a['sad']:.2f} | {a['mse']:.2f} |")
    m, a = res.summary["overall"], abl.summary["overall"]
    lines.append(f"| **overall** | **{m['sad']:.2f}** | {m['mse']:.2f} | {m['grad']:.2f} | {m['conn']:.2f} | **{a['sad']:.2f}** | {a['mse']:.2f} |")
    lines.append(f"\nAblation: without the semantic trimap the overall SAD is {a['sad']:.2f} vs {m['sad']:.2f} with it "
                 f"({'worse' if a['sad'] > m['sad'] else 'not worse'} without). The ablation zeroes the semantic map at "
                 "inference for the same weights (no separately trained no-semantic model). "
                 f"The network alone (no refinement) scores {net.summary['overall']['sad']:.2f}. "
                 f"Contact sheet: `procedural/contact_sheet.png`. ({time.perf_counter() - t0:.0f} s)\n")
    summary["procedural"] = {"sad": m["sad"], "no_semantic_sad": a["sad"], "network_alone_sad": net.summary["overall"]["sad"]}
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
