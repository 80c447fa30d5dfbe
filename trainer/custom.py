"""Train the full SIM stack for a user's own classes: classifier → discriminator → matting network.

Data layout: ``<data>/<class>/fg/*`` and ``<data>/<class>/alpha/*`` (the SIM class layout), composited
on the fly on backgrounds (``trainer.data``; the shared background folders when present, else generated
ones). Output (``<out>``): ``classifier.pt``, ``discriminator.pt``, ``matting.pt`` in the backend weights
format, the matting file naming ``classifier.pt`` in its meta, so
``semantic-matte matte --weights <out>/matting.pt --classifier <out>/classifier.pt`` (or just ``--weights``)
uses the new classes; plus ``runs/<stage>/`` with configs, logs and snapshots (``--resume`` continues).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.classes import load_class_list
from trainer.config import load_config, toml_value

log = logging.getLogger(__name__)

STAGES = ("classifier", "discriminator", "matting")


@dataclass(frozen=True)
class Preset:
    matting_arch: str
    classifier_arch: str
    crop_size: int
    crop_sizes: tuple[int, ...]
    batch_size: int


PRESETS = {
    "lite": Preset("sim_lite", "classifier_lite", 320, (320, 480, 640), 8),
    "r50": Preset("sim_r50", "classifier_r50", 320, (320, 480, 640), 8),
    # For tests and CPU demos: tiny networks on 64 px crops.
    "tiny": Preset("sim_tiny", "classifier_tiny", 64, (64, 96, 128), 4),
}


def check_layout(data: Path, classes: tuple[str, ...]) -> dict[str, int]:
    """Number of fg/alpha pairs per class; raises ``FileNotFoundError`` naming what is missing."""
    counts = {}
    for c in classes:
        fg, alpha = data / c / "fg", data / c / "alpha"
        if not fg.is_dir() or not alpha.is_dir():
            raise FileNotFoundError(
                f"class {c!r}: expected {fg} and {alpha} (layout <data>/<class>/{{fg,alpha}})"
            )
        n = len([p for p in fg.iterdir() if p.is_file()])
        if n == 0:
            raise FileNotFoundError(f"class {c!r}: no foreground images in {fg}")
        counts[c] = n
    return counts


def stage_overrides(
    stage: str,
    *,
    classes: tuple[str, ...],
    data: Path,
    out: Path,
    steps: int,
    preset: Preset,
    backgrounds: list[str] | None,
) -> list[str]:
    """The dotted overrides that configure one stage (user overrides are appended after these)."""
    spec: dict[str, Any] = {
        "kind": "composition",
        "root": str(data),
        "classes": list(classes),
        "crop_sizes": list(preset.crop_sizes),
    }
    if backgrounds:
        spec["backgrounds"] = backgrounds
    arch = preset.matting_arch if stage == "matting" else preset.classifier_arch
    ov = [
        f"model.arch={arch}",
        f"data.classes={toml_value(list(classes))}",
        f"data.train=[{toml_value(spec)}]",
        "data.val=[]",
        f"data.crop_size={preset.crop_size}",
        f"data.batch_size={preset.batch_size}",
        f"schedule.steps={steps}",
        f"schedule.warmup_steps={min(100, steps // 10)}",
        'schedule.policy="cosine"',
        f"run.out_dir={toml_value(str(out / 'runs'))}",
        f"run.name={stage}",
        f"run.ckpt_every={max(steps // 4, 1)}",
        f"run.log_every={max(min(50, steps // 10), 1)}",
        'optim.name="adamw"',
    ]
    if stage == "matting":
        ov += [
            f"model.classifier={toml_value(str(out / 'classifier.pt'))}",
            f"model.discriminator={toml_value(str(out / 'discriminator.pt'))}",
            'model.smap="classifier"',
            "optim.lr=5e-4",
        ]
    else:
        ov += ["optim.lr=1e-3", "loss.label_smoothing=0.1"]
    return ov


def train_custom(
    classes: str | list[str] | tuple[str, ...],
    data: str | Path,
    out: str | Path,
    *,
    steps: int = 2000,
    preset: str = "lite",
    backgrounds: list[str] | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    stages: tuple[str, ...] = STAGES,
) -> dict[str, Path]:
    """Train classifier, discriminator and matting model for ``classes``; returns the exported files.

    Args:
        classes: class names (list or "a,b,c"); each must be a folder of ``data``.
        data: dataset root in the SIM class layout.
        out: output folder.
        steps: optimisation steps per stage.
        preset: "lite" (default model size), "r50" (official size) or "tiny" (tests, CPU demos).
        backgrounds: background image folders (default: the shared ones when present, else generated).
        overrides: dotted ``key=value`` overrides applied to every stage (e.g. ``run.precision=bf16``).
        resume: continue interrupted stages from their snapshots; finished stages are kept.
    """
    from trainer.engine import train

    names = load_class_list(list(classes) if not isinstance(classes, str) else classes)
    data, out = Path(data), Path(out)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose {', '.join(PRESETS)}")
    counts = check_layout(data, names)
    log.info("custom classes: %s", ", ".join(f"{c} ({n})" for c, n in counts.items()))
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Path] = {}
    for stage in stages:
        target = out / f"{stage}.pt"
        if resume and target.is_file():
            log.info("stage %s already done (%s)", stage, target)
            results[stage] = target
            continue
        ov = stage_overrides(
            stage,
            classes=names,
            data=data,
            out=out,
            steps=steps,
            preset=PRESETS[preset],
            backgrounds=backgrounds,
        ) + list(overrides or [])
        cfg = load_config(None, ov, task=stage)
        trainer = train(cfg, resume=resume)
        if not trainer.is_main:
            continue
        if stage == "matting":
            # Re-export beside classifier.pt so meta["classifier"] resolves inside <out>.
            trainer.export(target)
        else:
            shutil.copyfile(trainer.exported, target)
        results[stage] = target
        log.info("stage %s → %s", stage, target)
    return results
