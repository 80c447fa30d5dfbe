"""Dataset discovery, the evaluation loop, result tables and a markdown + contact-sheet report.

Layouts recognised by :func:`find_samples` (files are paired by file stem, extensions may differ):

* alphamatting.com: ``<root>/image/``, ``<root>/trimap1/`` (``trimap2/``, ``trimap3/`` ...),
  ``<root>/alpha/``. ``group`` is the trimap set name (e.g. ``"trimap1"``), so evaluating both
  trimap sets in one run gives one table row per set. It is *not* a SIM class name.
* SIM test set (``docs/sim-reference.md`` §4.6): ``<root>/<class>/merged/``, ``<class>/trimap/``,
  ``<class>/alpha/``; ``group`` is the class folder name. (The official script zips sorted file
  lists and assumes they align; we pair by stem and fail loudly when they do not.)
* Composition-1k style: ``<root>/merged/``, ``<root>/trimap/``, ``<root>/alpha/``; ``group`` is
  the root folder's name.

Evaluation protocol (``docs/serving-and-metrics.md`` §5.1, ``docs/sim-reference.md`` §5.2, §6): the
prediction is clipped to [0, 1], known regions are forced (alpha = 0 where trimap == 0, 1 where
trimap == 255), and it is quantised to 8 bits by rounding -- exactly what saving it as an 8-bit PNG
(:func:`backend.imageio.write_alpha`) and reading it back does -- before the DIM metrics are
computed on the ``trimap == 128`` region. Time is the wall clock of the ``predict_fn`` call only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from backend.imageio import (
    InputError,
    MissingFileError,
    check_same_size,
    read_alpha,
    read_image,
    read_trimap,
    write_alpha,
)
from backend.metrics import MetricAccumulator, compute_metrics

__all__ = [
    "DatasetError",
    "EvalResult",
    "PredictFn",
    "Sample",
    "SampleResult",
    "evaluate",
    "find_samples",
    "format_table",
    "write_report",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})

#: predict_fn(image H x W x 3 float32 in [0, 1], trimap H x W uint8, group) -> alpha H x W float32 in [0, 1]
PredictFn = Callable[[np.ndarray, np.ndarray, str], np.ndarray]


class DatasetError(InputError):
    """A dataset folder whose layout is not recognised or whose files do not pair up."""


# alphamatting.com training set GT01..GT27: every third image is held out for evaluation and must never be
# used for training, model selection or tuning (the project's fixed split; the trainer enforces it).
ALPHAMATTING_NAMES: tuple[str, ...] = tuple(f"GT{i:02d}" for i in range(1, 28))
ALPHAMATTING_HELD_OUT: tuple[str, ...] = ("GT02", "GT05", "GT08", "GT11", "GT14", "GT17", "GT20", "GT23", "GT26")


# Three training photos that a run may leave out of its training data to select snapshots on (real photos,
# unlike the procedural test set, and never the held-out ones).
ALPHAMATTING_VALIDATION: tuple[str, ...] = ("GT01", "GT10", "GT19")


def held_out_samples(samples: list[Sample]) -> list[Sample]:
    """The fixed held-out alphamatting images among ``samples`` (evaluation of the default model)."""
    return [s for s in samples if s.name in ALPHAMATTING_HELD_OUT]


def validation_samples(samples: list[Sample], names: Sequence[str] = ALPHAMATTING_VALIDATION) -> list[Sample]:
    """The model-selection photos among ``samples``: :data:`ALPHAMATTING_VALIDATION`, or a wider set ``names``
    that a training run held out of its data. The held-out evaluation photos are refused: nothing is selected
    or tuned on them."""
    wanted = set(names)
    bad = sorted(wanted & set(ALPHAMATTING_HELD_OUT))
    if bad:
        raise ValueError(f"{', '.join(bad)} belong to the held-out evaluation set: never select on them")
    return [s for s in samples if s.name in wanted]


@dataclass(frozen=True)
class Sample:
    """One evaluation item. ``alpha_path`` is None only for sets without ground truth."""

    name: str
    group: str
    image_path: Path
    trimap_path: Path
    alpha_path: Path | None


# --------------------------------------------------------------------------------------------------
# discovery


def _index(folder: Path) -> dict[str, Path]:
    """stem -> image file in ``folder`` (hidden files and non-images such as README skipped)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.stem in out:
            raise DatasetError(
                f"two files with stem {p.stem!r} in {folder}: {out[p.stem].name}, {p.name}", path=folder
            )
        out[p.stem] = p
    return out


def _names(stems: Sequence[str], limit: int = 5) -> str:
    s = ", ".join(sorted(stems)[:limit])
    return s + (f" ... ({len(stems)} in all)" if len(stems) > limit else "")


def _pair(group: str, image_dir: Path, trimap_dir: Path, alpha_dir: Path | None) -> list[Sample]:
    images, trimaps = _index(image_dir), _index(trimap_dir)
    alphas = _index(alpha_dir) if alpha_dir is not None else None
    if not images:
        raise DatasetError(f"no images in {image_dir}", path=image_dir)
    folders = [(trimap_dir, trimaps)] + ([(alpha_dir, alphas)] if alpha_dir is not None else [])
    for folder, files in folders:
        missing = set(images) - set(files)
        extra = set(files) - set(images)
        if missing:
            raise DatasetError(
                f"{len(missing)} image(s) in {image_dir} have no file in {folder}: {_names(list(missing))}",
                path=folder,
            )
        if extra:
            raise DatasetError(
                f"{len(extra)} file(s) in {folder} have no image in {image_dir}: {_names(list(extra))}",
                path=folder,
            )
    return [
        Sample(stem, group, images[stem], trimaps[stem], None if alphas is None else alphas[stem])
        for stem in sorted(images)
    ]


def find_samples(
    root: str | Path, trimap_set: str = "trimap1", *, require_alpha: bool = True
) -> list[Sample]:
    """Discover an evaluation set (see the module docstring for the layouts).

    Args:
        root: dataset folder.
        trimap_set: trimap folder of the alphamatting layout (``trimap1``, ``trimap2``, ...);
            ignored by the SIM and Composition-1k layouts, which have a single ``trimap/``.
        require_alpha: raise if the ground-truth ``alpha/`` folder is missing (False lists sets
            such as the alphamatting.com test images, with ``alpha_path=None``).

    Returns:
        Samples sorted by (group, name).

    Raises:
        MissingFileError: root does not exist.
        DatasetError: unrecognised layout, missing trimap set / alpha folder, unpaired or
            duplicate files.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"dataset folder not found: {root}", path=root)

    def alpha_dir(base: Path) -> Path | None:
        if (base / "alpha").is_dir():
            return base / "alpha"
        if require_alpha:
            raise DatasetError(f"no ground-truth folder {base / 'alpha'}", path=base)
        return None

    # alphamatting.com: image/ + trimapN/
    if (root / "image").is_dir():
        sets = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("trimap"))
        if not sets:
            raise DatasetError(f"{root} has image/ but no trimap folder (trimap1/, trimap2/ ...)", path=root)
        if trimap_set not in sets:
            raise DatasetError(
                f"trimap set {trimap_set!r} not in {root}; available: {', '.join(sets)}", path=root
            )
        return _pair(trimap_set, root / "image", root / trimap_set, alpha_dir(root))

    # Composition-1k: merged/ + trimap/ directly under root
    if (root / "merged").is_dir() and (root / "trimap").is_dir():
        return _pair(root.resolve().name, root / "merged", root / "trimap", alpha_dir(root))

    # SIM: <class>/{merged, trimap, alpha}
    classes = sorted(
        p for p in root.iterdir() if p.is_dir() and (p / "merged").is_dir() and (p / "trimap").is_dir()
    )
    if classes:
        samples: list[Sample] = []
        for c in classes:
            samples += _pair(c.name, c / "merged", c / "trimap", alpha_dir(c))
        return samples

    found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())
    raise DatasetError(
        f"dataset layout of {root} not recognised (expected image/ + trimap1/ + alpha/, "
        f"<class>/merged|trimap|alpha/, or merged/ + trimap/ + alpha/); subfolders: {', '.join(found) or 'none'}",
        path=root,
    )


# --------------------------------------------------------------------------------------------------
# evaluation loop


@dataclass
class SampleResult:
    """Outcome for one sample: metrics in reporting units (empty when ``error`` is set)."""

    sample: Sample
    metrics: dict[str, float]
    time_s: float
    n_unknown: int
    error: str | None = None
    pred_path: Path | None = None
    # small uint8 previews for the contact sheet: "pred" (alpha) and "error" (|pred - gt|)
    thumbs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


@dataclass
class EvalResult:
    """All per-sample results plus means overall and per group (``summary``)."""

    results: list[SampleResult]
    summary: dict[str, Any]
    settings: dict[str, Any]

    @property
    def ok(self) -> list[SampleResult]:
        return [r for r in self.results if r.error is None]

    @property
    def failed(self) -> list[SampleResult]:
        return [r for r in self.results if r.error is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: settings, summary and one row per image."""
        rows = []
        for r in self.results:
            row: dict[str, Any] = {
                "name": r.sample.name,
                "group": r.sample.group,
                "time_s": r.time_s,
                "n_unknown": r.n_unknown,
                **r.metrics,
            }
            if r.error is not None:
                row["error"] = r.error
            if r.pred_path is not None:
                row["pred_path"] = str(r.pred_path)
            rows.append(row)
        return {"settings": self.settings, "summary": self.summary, "images": rows}


def _thumb(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H x W float [0, 1] -> uint8 preview fitting in size=(w, h), box-filtered."""
    im = Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))
    im.thumbnail(size, Image.Resampling.BOX)
    return np.asarray(im)


def _as_uint8_if_exact(a: np.ndarray) -> np.ndarray:
    """A float GT read from an 8-bit file back to uint8, so the metrics see exactly k/255 in
    both mattes (as the DIM code, which reads both PNGs as uint8); other GTs stay float."""
    q = np.round(a.astype(np.float64) * 255.0)
    if np.all(np.abs(q / 255.0 - a) < 1e-6):
        return q.astype(np.uint8)
    return a


def _check_prediction(pred: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    arr = np.asarray(pred)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.shape != shape:
        raise ValueError(f"predict_fn returned shape {arr.shape} for {name}, expected {shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"predict_fn returned NaN/inf for {name}")
    return arr


def closed_form_alpha(image: np.ndarray, trimap: np.ndarray, group: str = "") -> np.ndarray:
    """The classical baseline the reports compare against, as a :data:`PredictFn`: pymatting's closed-form
    matting (Levin et al. 2008) over the whole unknown region."""
    from pymatting import estimate_alpha_cf  # numba JIT: import only when used

    return estimate_alpha_cf(image.astype(np.float64), trimap / 255.0)


def evaluate(
    predict_fn: PredictFn,
    samples: Sequence[Sample],
    *,
    force_known: bool = True,
    quantize: bool = True,
    save_dir: str | Path | None = None,
    on_error: str = "raise",
    progress: Callable[[int, int, SampleResult], None] | None = None,
    thumb_size: tuple[int, int] = (160, 120),
    warm_up: bool = True,
) -> EvalResult:
    """Run ``predict_fn`` on every sample and score it with the DIM metrics.

    Args:
        predict_fn: ``(image H x W x 3 float32 [0, 1], trimap H x W uint8, group) -> alpha``
            (H x W float in [0, 1], or uint8). ``group`` is the sample's group (SIM class name
            for the SIM layout, trimap set name for alphamatting).
        samples: from :func:`find_samples`; each needs an ``alpha_path``.
        force_known: set alpha = 0 on trimap 0 and 1 on trimap 255 (the official protocol).
        quantize: round to 8 bits before scoring, as saving the PNG does (the official protocol
            scores saved 8-bit PNGs). False scores the float prediction.
        save_dir: if given, the scored (forced, 8-bit) predictions are written there as
            ``<group>/<name>.png``.
        on_error: ``"raise"`` (default) or ``"skip"``: record the error for that sample and go on;
            failed samples are left out of the means and listed by :func:`format_table`.
        progress: called after each sample with (index, total, result).
        thumb_size: (w, h) box for the preview thumbnails kept for :func:`write_report`.
        warm_up: run ``predict_fn`` once on the first sample, untimed, so its one-time costs (lazy
            imports, compiled-kernel loading, allocator growth) are not charged to the first image.

    Returns:
        :class:`EvalResult`; ``summary`` holds means of sad / mse / grad / conn (reporting units,
        see ``backend.metrics``) and ``time`` (s), overall and per group.

    Raises:
        ValueError: bad ``on_error``; with ``on_error="raise"``, whatever reading or
            ``predict_fn`` raises (InputError subclasses for bad files).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    no_gt = [s.name for s in samples if s.alpha_path is None]
    if no_gt:
        raise DatasetError(f"{len(no_gt)} sample(s) have no ground truth: {_names(no_gt)}")
    out_dir = None if save_dir is None else Path(save_dir)
    acc = MetricAccumulator()
    results: list[SampleResult] = []
    if warm_up and samples:
        with contextlib.suppress(Exception):  # a failing first sample is reported by the loop below
            predict_fn(read_image(samples[0].image_path), read_trimap(samples[0].trimap_path), samples[0].group)
    for i, s in enumerate(samples):
        try:
            image = read_image(s.image_path)
            trimap = read_trimap(s.trimap_path)
            gt = read_alpha(s.alpha_path)  # type: ignore[arg-type]
            check_same_size({"image": image, "trimap": trimap, "alpha": gt})
            t0 = time.perf_counter()
            raw = predict_fn(image, trimap, s.group)
            dt = time.perf_counter() - t0
            pred = np.clip(_check_prediction(raw, trimap.shape, s.name), 0.0, 1.0)
            if force_known:
                pred[trimap == 0] = 0.0
                pred[trimap == 255] = 1.0
            if quantize:
                # np.round, not truncation: truncation biases SAD (serving-and-metrics.md §5.2 item 6)
                pred_eval: np.ndarray = np.round(pred.astype(np.float64) * 255.0).astype(np.uint8)
                pred = pred_eval.astype(np.float32) / np.float32(255.0)
            else:
                pred_eval = pred
            metrics = compute_metrics(pred_eval, _as_uint8_if_exact(gt), trimap)
            res = SampleResult(s, metrics, dt, int((trimap == 128).sum()))
            if out_dir is not None:
                res.pred_path = write_alpha(out_dir / s.group / f"{s.name}.png", pred_eval)
            res.thumbs = {"pred": _thumb(pred, thumb_size), "error": _thumb(np.abs(pred - gt), thumb_size)}
            acc.add({**metrics, "time": dt}, s.group)
        except Exception as e:
            if on_error == "raise":
                raise
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            res = SampleResult(s, {}, math.nan, 0, error=msg)
        results.append(res)
        if progress is not None:
            progress(i, len(samples), res)
    settings = {
        "force_known": force_known,
        "quantize": "8-bit" if quantize else "none",
        "unknown_region": "trimap == 128",
        "n_samples": len(samples),
        "groups": sorted({s.group for s in samples}),
    }
    return EvalResult(results, acc.summary(), settings)


# --------------------------------------------------------------------------------------------------
# tables and report

_COLUMNS = (
    ("sad", "SAD", ".2f"),
    ("mse", "MSE", ".2f"),
    ("grad", "Grad", ".2f"),
    ("conn", "Conn", ".2f"),
    ("time", "time (s)", ".3f"),
)


def _row(label: str, stats: dict[str, float]) -> str:
    cells = [label, str(int(stats.get("count", 0)))]
    for key, _, fmt in _COLUMNS:
        v = stats.get(key)
        cells.append("-" if v is None or not math.isfinite(v) else format(v, fmt))
    return "| " + " | ".join(cells) + " |"


def format_table(result: EvalResult, *, per_image: bool = False) -> str:
    """Markdown table of means: one ``overall`` row, then one row per group.

    Units: SAD/1000, MSE x 1e3, Grad/1000, Conn/1000, seconds per image.

    Args:
        result: from :func:`evaluate`.
        per_image: append a second table with one row per image.
    """
    head = "| group | images | " + " | ".join(c[1] for c in _COLUMNS) + " |"
    sep = "|---|--:|" + "--:|" * len(_COLUMNS)
    lines = [head, sep, _row("**overall**", result.summary["overall"])]
    for g, stats in result.summary["groups"].items():
        lines.append(_row(g, stats))
    if per_image:
        lines += [
            "",
            "| image | group | " + " | ".join(c[1] for c in _COLUMNS) + " |",
            "|---|---|" + "--:|" * len(_COLUMNS),
        ]
        for r in result.ok:
            stats = {**r.metrics, "time": r.time_s}
            cells = [r.sample.name, r.sample.group] + [format(stats[k], f) for k, _, f in _COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    if result.failed:
        lines += ["", f"{len(result.failed)} image(s) failed and are not in the means:"]
        lines += [f"- {r.sample.group}/{r.sample.name}: {r.error}" for r in result.failed]
    return "\n".join(lines)


def _heat(err_u8: np.ndarray) -> np.ndarray:
    """uint8 error -> RGB heat map (black -> red -> yellow); sqrt so small errors show up."""
    e = np.sqrt(err_u8.astype(np.float32) / 255.0)
    rgb = np.stack([np.clip(2 * e, 0, 1), np.clip(2 * e - 1, 0, 1), np.zeros_like(e)], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


def _fit(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    im = im.copy()
    im.thumbnail(size, Image.Resampling.BOX)
    tile = Image.new("RGB", size, (40, 40, 40))
    tile.paste(im.convert("RGB"), ((size[0] - im.width) // 2, (size[1] - im.height) // 2))
    return tile


def _contact_sheet(rows: list[SampleResult], tile: tuple[int, int]) -> Image.Image:
    cols = ("image", "trimap", "prediction", "ground truth", "|error| (sqrt)")
    label_h, pad = 16, 4
    w = len(cols) * (tile[0] + pad) + pad
    h = label_h + len(rows) * (tile[1] + label_h + pad) + pad
    sheet = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(cols):
        draw.text((pad + c * (tile[0] + pad), 2), title, fill=(0, 0, 0))
    y = label_h
    for r in rows:
        s = r.sample
        text = f"{s.group}/{s.name}  SAD {r.metrics['sad']:.2f}  MSE {r.metrics['mse']:.2f}"
        draw.text((pad, y + 2), text, fill=(0, 0, 0))
        y += label_h
        image = Image.fromarray(np.round(read_image(s.image_path) * 255).astype(np.uint8))
        tiles = [
            image,
            Image.fromarray(read_trimap(s.trimap_path)),
            Image.fromarray(r.thumbs["pred"]),
            Image.fromarray(np.round(read_alpha(s.alpha_path) * 255).astype(np.uint8)),  # type: ignore[arg-type]
            Image.fromarray(_heat(r.thumbs["error"])),
        ]
        for c, t in enumerate(tiles):
            sheet.paste(_fit(t, tile), (pad + c * (tile[0] + pad), y))
        y += tile[1] + pad
    return sheet


def write_report(
    result: EvalResult,
    out_dir: str | Path,
    *,
    title: str = "Evaluation report",
    max_rows: int = 12,
    tile_size: tuple[int, int] = (160, 120),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``report.md`` and ``contact_sheet.png`` into ``out_dir``.

    The contact sheet shows, per row, image / trimap / prediction / GT / error map for the
    ``max_rows`` images with the highest SAD (all images if there are fewer). The error map is
    |pred - gt| on a black-red-yellow scale, square-rooted so that small errors are visible.

    Args:
        result: from :func:`evaluate`.
        out_dir: created if needed.
        title: report heading.
        max_rows: contact-sheet rows.
        tile_size: (w, h) of one tile.
        extra: more ``key: value`` lines for the settings section (model, weights, device ...).

    Returns:
        Path of ``report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    worst = sorted(result.ok, key=lambda r: -r.metrics["sad"])[: max(0, max_rows)]
    sheet_name = "contact_sheet.png"
    if worst:
        _contact_sheet(worst, tile_size).save(out / sheet_name)
    settings = {**result.settings, **(extra or {})}
    lines = [
        f"# {title}",
        "",
        f"Generated {_dt.datetime.now().isoformat(timespec='seconds')}.",
        "",
        "Metrics as the DIM MATLAB evaluation code, on trimap == 128 only; means over images.",
        "Units: SAD/1000, MSE x 1e3, Grad/1000, Conn/1000; time = predict call, seconds per image.",
        "",
        "## Settings",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "## Results", "", format_table(result, per_image=True), ""]
    if worst:
        lines += [
            f"## Contact sheet ({len(worst)} highest-SAD images)",
            "",
            "Columns: image, trimap, prediction, ground truth, |error| (sqrt scale).",
            "",
            f"![contact sheet]({sheet_name})",
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
