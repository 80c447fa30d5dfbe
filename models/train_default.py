"""The recipe that produced the shipped default model (classifier_lite + sim_lite), as exact commands.

Phase 1 (GPU): patch classifier on procedural 20-class patches. Phase 2 (GPU): matting network on
procedural data + the 18 alphamatting training photos, with the frozen classifier's semantic trimap.
Phase 3 (CPU, optional): continue the matting network from phase 2 with more weight on the real photos.
Everything goes through the trainer's public API; each run directory keeps its resolved config and CSV.

    SEMANTIC_MATTE_DATA=../shared/data python3 models/train_default.py --phase gpu --device cuda --workers 15
    SEMANTIC_MATTE_DATA=../shared/data python3 models/train_default.py --phase cpu-continue --steps 1500
    SEMANTIC_MATTE_DATA=... python3 models/train_default.py --phase gpu-continue --device cuda \
        --classifier-steps 0 --steps 6000 --hold-validation --out /tmp/runs  # stopped by `timeout` (resumable)
    # the same recipe from scratch (shipped classifier), a wider selection set held out:
    SEMANTIC_MATTE_DATA=... python3 models/train_default.py --phase gpu-continue --device cuda --init none \
        --lr 1e-3 --classifier-steps 0 --steps 6000 --hold GT01,GT03,GT10,GT19 --out /tmp/runs
    python3 models/train_default.py --phase ship --init runs/default/matting/matting.pt --note "..."

``ship`` writes the fp16 matting network into backend/weights/, and beside it the classifier it was trained
with (the run's ``meta["classifier"]`` file, fp16) unless that is already the shipped file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.evaluation import ALPHAMATTING_VALIDATION
from backend.models.weights import load_weights, save_checkpoint
from trainer.config import load_config, read_config_file, toml_value
from trainer.data.datasets import ALPHAMATTING_TRAIN
from trainer.engine import TrainingStopped, train

WEIGHTS = Path(__file__).resolve().parents[1] / "backend" / "weights"
MATTING_FILE, CLASSIFIER_FILE = "semantic-matte-matting.pt", "semantic-matte-classifier.pt"

CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"
# The recipe (architectures, data mix, losses, optimiser) is trainer/configs/default_*.toml; these lists
# change only the budget and the bookkeeping of a short run.
BUDGET = ["run.progress=false", "run.tensorboard=false", "run.log_every=20", "run.eval_every=0", "data.val=[]"]
CLASSIFIER = ["optim.lr=1e-3", "data.batch_size=64", "schedule.warmup_steps=20", "run.name=classifier",
              "run.ckpt_every=0"]


def classifier_config(overrides: list[str]):
    return load_config(CONFIGS / "default_classifier_lite.toml", BUDGET + CLASSIFIER + overrides)


def matting_config(overrides: list[str], weights: tuple[float, float] | None = None, hold: Sequence[str] = (),
                   trimap: str | None = None, fg_cache: Path | None = None):
    """The TOML recipe with the budget ``overrides``; ``weights``: another share of procedural data vs the
    alphamatting training photos; ``hold``: training photos left out, to select snapshots on
    (``bench/bench_quality.py --validation --photos``; ``ALPHAMATTING_VALIDATION`` = GT01, GT10, GT19 until
    session 13, whose model card asks for a wider set with hair); ``trimap``: the training-trimap recipe of both
    datasets (``"mixed"`` since phase 7: drawn trimaps are not symmetric about the edge); ``fg_cache``: where
    the photos' foreground / background estimates are kept (read if there, written once if not)."""
    recipe = CONFIGS / "default_sim_lite.toml"
    mix = []
    unknown = sorted(set(hold) - set(ALPHAMATTING_TRAIN))
    if unknown:
        raise ValueError(f"--hold: {', '.join(unknown)} are not alphamatting training photos")
    if weights is not None or hold or trimap or fg_cache:  # the TOML's own mix: [{kind="mixed", ...}]
        train_specs = read_config_file(recipe)["data"]["train"]
        if weights is not None:
            train_specs[0]["weights"] = list(weights)
        for spec in train_specs[0]["datasets"]:
            if trimap:
                spec["trimap"] = trimap
            if hold and spec["kind"] == "alphamatting":
                spec["names"] = [n for n in ALPHAMATTING_TRAIN if n not in hold]
            if fg_cache and spec["kind"] == "alphamatting":
                spec["cache_dir"] = str(fg_cache)
        mix = [f"data.train={toml_value(train_specs)}"]
    # no discriminator for these budgets: L_c / L_f off
    return load_config(recipe, BUDGET + mix + ['model.discriminator=""', "run.name=matting"] + overrides)


def ship(matting: Path, note: str = "", dest: Path = WEIGHTS) -> list[Path]:
    """fp16 copies of a run's matting network and of the classifier it was trained with (the file its meta
    names, beside it) as the default model. A network paired with another classifier than the one it
    learned the semantic trimap from would get inputs it never saw, so the two always ship together."""
    w = load_weights(matting, "matting")
    trained_with = matting.parent / w.meta["classifier"] if w.meta.get("classifier") else None
    if trained_with is None or not trained_with.is_file():
        raise SystemExit(f"{matting}: the classifier it was trained with is not beside it (meta {w.meta.get('classifier')!r})")
    meta = {k: v for k, v in w.meta.items() if k != "run"}  # a local run folder means nothing once shipped
    meta.update(classifier=CLASSIFIER_FILE, foreground_head=True)
    if note:
        meta["trained_steps"] = note
    written = [save_checkpoint(dest / MATTING_FILE, w.model, kind="matting", classes=w.classes, meta=meta, half=True)]
    shipped = dest / CLASSIFIER_FILE
    if not shipped.is_file() or trained_with.read_bytes() != shipped.read_bytes():
        c = load_weights(trained_with, "classifier")
        cmeta = {k: v for k, v in c.meta.items() if k != "run"}
        written.append(save_checkpoint(shipped, c.model, kind="classifier", classes=c.classes, meta=cmeta, half=True))
    for path in written:
        print(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["gpu", "gpu-continue", "cpu-continue", "ship"], default="gpu")
    ap.add_argument("--out", type=Path, default=Path("runs/default"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=15)
    ap.add_argument("--classifier-steps", type=int, default=200)
    ap.add_argument("--steps", type=int, default=640, help="matting steps (gpu: 640 at batch 32; cpu: 1500 at batch 8)")
    ap.add_argument("--init", type=Path, default=Path("backend/weights/semantic-matte-matting.pt"),
                    help="matting weights to start from; 'none': from scratch (gpu-continue's recipe otherwise)")
    ap.add_argument("--classifier", type=Path, default=Path("backend/weights/semantic-matte-classifier.pt"))
    ap.add_argument("--crops-per-item", type=int, default=4,
                    help="gpu-continue: crops per prepared sample (data.crops_per_item; the loader limited the GPU)")
    ap.add_argument("--ship-dir", type=Path, default=WEIGHTS, help="ship: where the shipped files go")
    ap.add_argument("--hold", default="",
                    help="gpu-continue / cpu-continue: comma-separated training photos to keep out, to select snapshots "
                         "on (e.g. GT01,GT03,GT10,GT19; score them with bench_quality.py --validation --photos)")
    ap.add_argument("--hold-validation", dest="hold", action="store_const", const=",".join(ALPHAMATTING_VALIDATION),
                    help="gpu-continue / cpu-continue: --hold GT01,GT10,GT19")
    ap.add_argument("--lr", type=float, default=3e-4, help="gpu-continue: peak learning rate (cosine, floored at half of it)")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="gpu-continue: crops per step (session 8 on an H200: 0.115 s per step of 32, waiting for "
                         "data 1 %% of it: the step, not the loader, was the limit)")
    ap.add_argument("--ckpt-every", type=int, default=250, help="gpu-continue: snapshot cadence (all are kept)")
    ap.add_argument("--seed", type=int, default=10, help="gpu-continue: data stream seed (a new one per run)")
    ap.add_argument("--photo-share", type=float, default=0.5,
                    help="gpu-continue: share of the alphamatting photos in the data mix (the rest procedural)")
    ap.add_argument("--fg-cache", type=Path, default=None,
                    help="gpu-continue: folder of the photos' foreground estimates (PNG); filled once when missing. "
                         "A complete one, made here and carried, spares a fresh machine pymatting's ≈ 30 s compile")
    ap.add_argument("--discriminator", type=Path, default=None,
                    help="gpu-continue / cpu-continue: frozen discriminator weights for the L_c / L_f terms "
                         "(default: none, those terms off; session 9 trained one on the CPU: models/README.md)")
    ap.add_argument("--note", default="", help="ship: the training record kept in the file's meta (trained_steps)")
    args = ap.parse_args()
    hold = tuple(n for n in args.hold.split(",") if n)
    init = "" if str(args.init) == "none" else args.init  # model.init="": random initialisation
    if args.phase == "ship":
        ship(args.init, args.note, args.ship_dir)
        return
    out = [f"run.out_dir={args.out}"]
    # after matting_config's model.discriminator="" (L_c / L_f off), so it wins
    disc = [f"model.discriminator={args.discriminator}"] if args.discriminator is not None else []
    if args.phase == "gpu":
        dev = [f"run.device={args.device}", "run.precision=bf16", f"data.num_workers={args.workers}"]
        clf = train(classifier_config(dev + out + [f"schedule.steps={args.classifier_steps}"])).exported
        run = train(matting_config(dev + out + [
            f"model.classifier={clf}", "optim.lr=1e-3", "data.batch_size=32", f"schedule.steps={args.steps}",
            "schedule.warmup_steps=40", "run.ckpt_every=0"]))
    elif args.phase == "gpu-continue":
        # The matting network continues from the shipped file (or --init) with the phase 7/8 recipe (mixed
        # trimaps, half procedural / half photos unless --photo-share), after --classifier-steps of classifier
        # training (0: the classifier stays as it is, so the network keeps the semantic trimap it learned).
        # Snapshots every --ckpt-every steps, all kept, so a session that ends early still brings a usable run
        # back and the snapshots can be averaged. The lr cosine over --steps is floored at --lr / 2 (reached
        # half-way): where a device session's time runs out is not known in advance, and the average of the
        # snapshots anneals instead.
        dev = [f"run.device={args.device}", "run.precision=bf16", f"data.num_workers={args.workers}",
               "run.channels_last=true", f"run.ckpt_every={args.ckpt_every}", "run.keep_ckpts=1000",
               f"data.crops_per_item={args.crops_per_item}"]
        clf = args.classifier
        if args.classifier_steps > 0:
            clf = train(classifier_config(dev + out + [
                f"model.init={args.classifier}", "optim.lr=5e-4", f"schedule.steps={args.classifier_steps}"]),
                resume=True).exported
        run = train(matting_config(dev + out + [
            f"model.init={init}", f"model.classifier={clf}", f"optim.lr={args.lr}",
            f"schedule.min_lr={args.lr / 2}", f"data.batch_size={args.batch_size}", f"schedule.steps={args.steps}",
            "schedule.warmup_steps=50", f"run.seed={args.seed}", *disc], (1 - args.photo_share, args.photo_share),
            hold, "mixed", args.fg_cache),
            resume=True)
    else:
        run = train(matting_config(out + [
            "run.device=cpu", "run.precision=fp32", "run.threads=2", "data.num_workers=1", f"model.init={init}",
            f"model.classifier={args.classifier}", "optim.lr=2e-4", "data.batch_size=8", f"schedule.steps={args.steps}",
            "schedule.warmup_steps=20", "run.ckpt_every=50", "run.keep_ckpts=2", *disc], (0.3, 0.7),
            hold),
            resume=True)
    print(run.exported, run.history[-1])


if __name__ == "__main__":
    try:
        main()
    except TrainingStopped as e:  # timeout / Ctrl-C: the snapshot is saved; rerun the same command to continue
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
