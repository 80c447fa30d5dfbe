"""Torch datasets for matting, patch-classifier and discriminator training.

Every dataset returns the same dict (fixed keys, collatable by ``torch.utils.data.default_collate``):

============  ==================  ===================================================================
key           shape / dtype       meaning
============  ==================  ===================================================================
``image``     3×S×S float32       network input composite (or real photo), RGB in [0, 1]
``fg``        3×S×S float32       foreground colours in [0, 1] (estimated for real photos)
``bg``        3×S×S float32       background in [0, 1]
``alpha``     1×S×S float32       ground-truth alpha in [0, 1]
``trimap``    1×S×S float32       training trimap holding the 8-bit values {0., 128., 255.} (not /255:
                                  the official masks compare with 128 exactly; divide by 255 for the
                                  classifier input)
``class_id``  int64 scalar        index into the dataset's ``class_list`` (−1: unknown class)
============  ==================  ===================================================================

Datasets:
    * :class:`CompositionDataset`: foreground/alpha folders in the DIM layout (``<root>/fg``, ``<root>/alpha``)
      or the SIM class layout (``<root>/<class>/{fg,alpha}``), composited on the fly on backgrounds.
    * :class:`AlphamattingDataset`: the alphamatting.com training photos with GT alpha; foregrounds (and
      backgrounds) estimated once with pymatting's multi-level ``estimate_foreground_ml``. The held-out
      images :data:`ALPHAMATTING_HELD_OUT` can never be used for training (:class:`HeldOutError`).
    * :class:`SyntheticDataset`: procedural SIMD-like classes generated on the fly (``synthetic.py``).
    * :class:`MixedDataset`: weighted mixture of datasets.

Views (``view=`` argument of every dataset), all returning the same dict:
    * ``"matting"``: the full pipeline (two-foreground composition on).
    * ``"classifier"``: patches around the unknown region for the patch classifier; two-foreground
      composition off so that the label stays pure.
    * ``"discriminator"``: foreground + alpha → class for the multi-class discriminator; two-foreground
      composition off, photometric jitter on the foreground kept.

Determinism: item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)`` (``set_epoch``), independent of
the DataLoader worker that produces it. Use :func:`worker_init_fn` to stop OpenCV threads oversubscribing
the CPU inside workers.

Without ``/work/shared/data`` everything still works: :class:`SyntheticDataset` and generated backgrounds
need no files.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from backend.classes import SIMD_CLASSES
from backend.evaluation import ALPHAMATTING_HELD_OUT, ALPHAMATTING_NAMES  # the fixed split: one definition
from trainer.data.backgrounds import BackgroundSource, list_images, read_rgb
from trainer.data.synthetic import STREAM_TEST, STREAM_TRAIN, class_index, generate_indexed
from trainer.data.transforms import Compose, CropAroundUnknown, GenerateTrimap, Sample, matting_pipeline

__all__ = [
    "ALPHAMATTING_HELD_OUT",
    "ALPHAMATTING_NAMES",
    "ALPHAMATTING_TRAIN",
    "SAMPLE_KEYS",
    "VIEWS",
    "AlphamattingDataset",
    "CompositionDataset",
    "HeldOutError",
    "MattingDataset",
    "MixedDataset",
    "SyntheticDataset",
    "build_dataset",
    "check_trainable",
    "default_backgrounds",
    "estimate_foreground",
    "read_alpha",
    "to_tensors",
    "worker_init_fn",
]

SAMPLE_KEYS: tuple[str, ...] = ("image", "fg", "bg", "alpha", "trimap", "class_id")
VIEWS: tuple[str, ...] = ("matting", "classifier", "discriminator")

ALPHAMATTING_TRAIN: tuple[str, ...] = tuple(n for n in ALPHAMATTING_NAMES if n not in ALPHAMATTING_HELD_OUT)

# Shared real data (``$SEMANTIC_MATTE_DATA`` overrides); everything degrades gracefully when it is absent.
DEFAULT_DATA_ROOT = Path(
    os.environ.get("SEMANTIC_MATTE_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)


class HeldOutError(ValueError):
    """Raised when a caller asks to train on held-out evaluation images."""


def check_trainable(names: Sequence[str]) -> None:
    """Raise :class:`HeldOutError` if any of ``names`` (stems like ``"GT02"``) is held out."""
    bad = sorted({Path(str(n)).stem.upper() for n in names} & set(ALPHAMATTING_HELD_OUT))
    if bad:
        raise HeldOutError(
            f"held-out evaluation images cannot be used for training: {', '.join(bad)} "
            f"(held out: {', '.join(ALPHAMATTING_HELD_OUT)})"
        )


def default_backgrounds(root: str | Path | None = None, generated_fraction: float = 0.3) -> BackgroundSource:
    """Backgrounds from ``<data>/backgrounds`` and ``<data>/alphamatting_test/image`` plus generated ones.

    Missing folders are skipped (then all backgrounds are generated).
    """
    base = Path(root) if root is not None else DEFAULT_DATA_ROOT
    return BackgroundSource([base / "backgrounds", base / "alphamatting_test" / "image"], generated_fraction)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread per worker (the workers already run in parallel)."""
    cv2.setNumThreads(1)


def read_alpha(path: str | Path) -> np.ndarray:
    """Read an alpha matte (grey, RGB with equal channels, RGBA's alpha, 8 or 16 bit) as H×W float32 in [0, 1]."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"cannot read alpha {path}")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    if img.ndim == 3:
        img = img[..., 3] if img.shape[2] == 4 else img[..., 0]
    return img.astype(np.float32) / scale


def to_tensors(sample: Sample) -> dict[str, torch.Tensor]:
    """Numpy sample (H×W×C float / H×W uint8 trimap) → the fixed tensor dict (:data:`SAMPLE_KEYS`)."""
    missing = [k for k in SAMPLE_KEYS[:-1] if k not in sample]
    if missing:
        raise KeyError(f"sample lacks {missing}; the pipeline must end with a composite (or real image)")
    out: dict[str, torch.Tensor] = {}
    for k in ("image", "fg", "bg"):
        out[k] = torch.from_numpy(np.ascontiguousarray(sample[k].transpose(2, 0, 1), dtype=np.float32))
    out["alpha"] = torch.from_numpy(np.ascontiguousarray(np.clip(sample["alpha"], 0, 1), np.float32)[None])
    out["trimap"] = torch.from_numpy(sample["trimap"].astype(np.float32)[None])
    out["class_id"] = torch.tensor(int(sample.get("class_id", -1)), dtype=torch.int64)
    shapes = {tuple(v.shape[-2:]) for k, v in out.items() if k != "class_id"}
    if len(shapes) != 1:
        raise ValueError(f"sample tensors disagree in size: { {k: tuple(v.shape) for k, v in out.items()} }")
    return out


class MattingDataset(Dataset):
    """Base class: subclasses provide ``__len__``-worth of raw samples through :meth:`load`.

    Args:
        out_size: network input side S.
        seed: base seed; item i of epoch e uses ``numpy.random.default_rng([seed, e, i])``.
        view: ``"matting"``, ``"classifier"`` or ``"discriminator"`` (see module docstring).
        backgrounds: a ``BackgroundSource`` (or folders for one); None → :func:`default_backgrounds`.
        trimap: training trimap recipe: ``"sim"``, ``"gca"`` or ``"mixed"``.
        crop_sizes: crop sides before resizing to ``out_size``.
        augment: False → no geometric / photometric augmentation (crop + trimap + composite only).
        pipeline: a custom pipeline replacing the default one (must produce every :data:`SAMPLE_KEYS` key).
        length: prepared samples per epoch (default: the number of raw samples).
        class_list: names that ``class_id`` indexes (default: the 20 SIMD classes).
        crops_per_item: crops taken from each prepared sample (repeated augmentation). The costly part of
            the pipeline (loading / generation, affine, two-foreground composition: everything before the
            trimap and crop steps) runs once per group of ``crops_per_item`` consecutive items; each crop
            draws its own trimap, crop window, background and photometric jitter. The dataset then holds
            ``length × crops_per_item`` items. For a loader that, not the GPU, limits training.
    """

    real: bool = False  # subclasses with real photos (image + estimated fg/bg) set this

    def __init__(
        self,
        *,
        out_size: int = 320,
        seed: int = 0,
        view: str = "matting",
        backgrounds: BackgroundSource | str | Path | Sequence[str | Path] | None = None,
        trimap: str = "sim",
        crop_sizes: Sequence[int] = (320, 480, 640),
        augment: bool = True,
        pipeline: Compose | Callable[[Sample, np.random.Generator], Sample] | None = None,
        length: int | None = None,
        class_list: Sequence[str] | None = None,
        crops_per_item: int = 1,
    ) -> None:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        if crops_per_item < 1:
            raise ValueError(f"crops_per_item must be ≥ 1, got {crops_per_item}")
        self.out_size, self.seed, self.view, self.epoch = int(out_size), int(seed), view, 0
        self.class_list: tuple[str, ...] = tuple(class_list) if class_list is not None else SIMD_CLASSES
        if backgrounds is None:
            backgrounds = default_backgrounds()
        elif not isinstance(backgrounds, BackgroundSource):
            backgrounds = BackgroundSource(backgrounds)  # type: ignore[arg-type]
        self.backgrounds = backgrounds
        self._length = length
        if pipeline is None:
            pipeline = matting_pipeline(
                out_size=self.out_size,
                crop_sizes=crop_sizes,
                trimap=trimap,
                backgrounds=backgrounds,
                second_fg=self._second_fg if view == "matting" else None,
                augment=augment,
                real=self.real,
            )
        self.pipeline = pipeline
        self.crops_per_item = int(crops_per_item)
        if self.crops_per_item > 1:
            if not isinstance(pipeline, Compose):
                raise ValueError("crops_per_item > 1 needs a Compose pipeline (split before its trimap / crop)")
            self._prepare, self._per_crop = pipeline.split_before(GenerateTrimap, CropAroundUnknown)
        self._prepared: tuple[tuple[int, int], Sample] | None = None  # (epoch, group) → prepared sample

    # -- to implement ------------------------------------------------------------------------------------
    def num_raw(self) -> int:
        """Number of distinct raw samples."""
        raise NotImplementedError

    def load(self, index: int, rng: np.random.Generator) -> Sample:
        """Raw sample ``index`` (0 ≤ index < num_raw): ``fg``, ``alpha`` (+ ``image``, ``bg`` for real photos)
        as float32 arrays, and ``class_id``."""
        raise NotImplementedError

    def _second_fg(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random second foreground for two-foreground composition (default: any raw sample)."""
        s = self.load(int(rng.integers(self.num_raw())), rng)
        return s["fg"], s["alpha"]

    # -- Dataset -----------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of an epoch (call before each epoch, e.g. next to a sampler's)."""
        self.epoch = int(epoch)

    def class_id_of(self, name: str | None) -> int:
        return self.class_list.index(name) if name in self.class_list else -1

    def num_prepared(self) -> int:
        """Prepared samples per epoch (``length``; items = this × ``crops_per_item``)."""
        return int(self._length) if self._length is not None else self.num_raw()

    def __len__(self) -> int:
        return self.num_prepared() * self.crops_per_item

    def sample_numpy(self, index: int) -> Sample:
        """Item ``index`` as the numpy sample (before tensor conversion); useful for inspection."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = self.crops_per_item
        if k == 1:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            sample = self.load(index % self.num_raw(), rng)
            return self.pipeline(sample, rng)
        # Item i is still a pure function of (seed, epoch, i): the group's stream prepares, the item's own
        # stream crops; the one-entry cache only saves recomputing the group (consecutive items of a batch).
        key = (self.epoch, index // k)
        if self._prepared is None or self._prepared[0] != key:
            rng = np.random.default_rng([self.seed, self.epoch, key[1], k])
            self._prepared = (key, self._prepare(self.load(key[1] % self.num_raw(), rng), rng))
        # A shallow copy suffices: the per-crop steps replace arrays, they never write into them.
        return self._per_crop(dict(self._prepared[1]), np.random.default_rng([self.seed, self.epoch, int(index)]))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return to_tensors(self.sample_numpy(int(index)))


# ----------------------------------------------------------------------------------------------------------
# Folders of foregrounds
# ----------------------------------------------------------------------------------------------------------


def _pair_files(fg_dir: Path, alpha_dir: Path) -> list[tuple[Path, Path]]:
    alphas = {p.stem: p for p in list_images(alpha_dir)}
    pairs = [(f, alphas[f.stem]) for f in list_images(fg_dir) if f.stem in alphas]
    return pairs


class CompositionDataset(MattingDataset):
    """DIM-style on-the-fly composition from foreground + alpha folders.

    Layouts (detected automatically):
        * DIM: ``<root>/fg/*.png`` and ``<root>/alpha/*.png`` (matched by file stem; class −1 unless
          ``class_name`` is given);
        * SIM class layout: ``<root>/<class>/fg/*`` and ``<root>/<class>/alpha/*`` (as written by
          ``synthetic.write_dataset(layout="train")``); ``class_id`` = index of ``<class>`` in ``class_list``.

    Args:
        root: dataset root.
        classes: restrict the class layout to these class folders (default: all that exist).
        class_name: class of every sample in the DIM layout.
        cache: keep decoded images in memory (for small sets).
        **kwargs: see :class:`MattingDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        classes: Sequence[str] | None = None,
        class_name: str | None = None,
        cache: bool = False,
        **kwargs: Any,
    ) -> None:
        self.root = Path(root)
        self.items: list[tuple[Path, Path, str | None]] = []
        if (self.root / "fg").is_dir() and (self.root / "alpha").is_dir():
            self.items = [(f, a, class_name) for f, a in _pair_files(self.root / "fg", self.root / "alpha")]
        else:
            wanted = set(classes) if classes is not None else None
            for d in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []:
                if wanted is not None and d.name not in wanted:
                    continue
                if (d / "fg").is_dir() and (d / "alpha").is_dir():
                    self.items += [(f, a, d.name) for f, a in _pair_files(d / "fg", d / "alpha")]
        if not self.items:
            raise FileNotFoundError(
                f"no fg/alpha pairs under {self.root} (expected <root>/fg + <root>/alpha "
                f"or <root>/<class>/fg + <root>/<class>/alpha)"
            )
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        self._current_class: str | None = self.items[0][2]
        self._by_class: dict[str | None, list[int]] = {}
        for i, (_, _, c) in enumerate(self.items):
            self._by_class.setdefault(c, []).append(i)
        super().__init__(**kwargs)
        unknown = sorted({c for _, _, c in self.items if c is not None and c not in self.class_list})
        if unknown:
            raise ValueError(f"class folders {unknown} are not in class_list {list(self.class_list)}")

    def num_raw(self) -> int:
        return len(self.items)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        f, a, _ = self.items[index]
        fg = read_rgb(f).astype(np.float32) / 255.0
        alpha = read_alpha(a)
        if alpha.shape != fg.shape[:2]:
            alpha = cv2.resize(alpha, (fg.shape[1], fg.shape[0]), interpolation=cv2.INTER_LINEAR)
        if self._cache is not None:
            self._cache[index] = (fg, alpha)
        return fg, alpha

    def load(self, index: int, rng: np.random.Generator) -> Sample:
        fg, alpha = self._read(index)
        self._current_class = self.items[index][2]  # for _second_fg (one item at a time per process)
        return {"fg": fg.copy(), "alpha": alpha.copy(), "class_id": self.class_id_of(self.items[index][2])}

    def _second_fg(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        # The second foreground comes from the class of the current sample, so the label stays pure.
        idx = self._by_class[self._current_class]
        fg, alpha = self._read(idx[int(rng.integers(len(idx)))])
        return fg, alpha


# ----------------------------------------------------------------------------------------------------------
# Real photos: alphamatting.com
# ----------------------------------------------------------------------------------------------------------

_FG_CACHE: dict[tuple[str, float], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
_FG_LOCK = threading.Lock()


def estimate_foreground(image: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours from a photo and its alpha (pymatting ``estimate_foreground_ml``).

    Germer et al.'s multi-level foreground estimation (the fast approximation of closed-form foreground
    estimation that pymatting ships): solves for smooth F and B with I = αF + (1 − α)B, coarse to fine.
    The result is an *extended* foreground defined on the whole image, as FBA recommends for F supervision.
    Where α = 1 the photo is the foreground exactly, where α = 0 it is the background.

    Args:
        image: H×W×3 float in [0, 1].
        alpha: H×W float in [0, 1].

    Returns:
        (fg, bg): two H×W×3 float32 arrays in [0, 1].
    """
    from pymatting import estimate_foreground_ml

    img64, a64 = image.astype(np.float64), alpha.astype(np.float64)
    fg, bg = estimate_foreground_ml(img64, a64, return_background=True)
    fg = np.clip(fg, 0, 1).astype(np.float32)
    bg = np.clip(bg, 0, 1).astype(np.float32)
    fg[alpha >= 1.0] = image[alpha >= 1.0]
    bg[alpha <= 0.0] = image[alpha <= 0.0]
    return fg, bg


class AlphamattingDataset(MattingDataset):
    """alphamatting.com training photos with ground-truth alpha.

    Foreground (and background) colours are estimated once per image with :func:`estimate_foreground`
    (about 0.1 s per 800 px image) and cached in a process-wide dictionary keyed by path and mtime, so
    several datasets and forked DataLoader workers share the work when :meth:`prepare` is called before the
    DataLoader starts; with ``cache_dir`` the estimates are also stored as ``<stem>_fg.png`` /
    ``<stem>_bg.png`` files.

    Modes:
        * ``"composite"``: the estimated foreground is composited on random backgrounds (like DIM data).
        * ``"real"``: the photo itself is the image; the estimated F and B are the F/B targets. Only flips and
          scaling are applied (rotation would invent borders that do not match the photo).

    Args:
        root: the alphamatting folder (``image/``, ``alpha/``; default ``/work/shared/data/alphamatting``).
        split: ``"train"`` (the 18 non-held-out images) or ``"test"`` (the 9 held-out images, for evaluation).
        names: explicit subset of image stems; for ``split="train"`` any held-out name raises
            :class:`HeldOutError`.
        mode: ``"composite"`` or ``"real"``.
        cache_dir: optional folder for the foreground estimates.
        **kwargs: see :class:`MattingDataset` (``class_id`` is always −1).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        split: str = "train",
        names: Sequence[str] | None = None,
        mode: str = "composite",
        cache_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if mode not in ("composite", "real"):
            raise ValueError(f"mode must be 'composite' or 'real', got {mode!r}")
        self.root = Path(root) if root is not None else DEFAULT_DATA_ROOT / "alphamatting"
        default = ALPHAMATTING_TRAIN if split == "train" else ALPHAMATTING_HELD_OUT
        chosen = tuple(Path(str(n)).stem for n in names) if names is not None else default
        if split == "train":
            check_trainable(chosen)
        self.split, self.mode = split, mode
        self.real = mode == "real"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        img_dir, a_dir = self.root / "image", self.root / "alpha"
        self.names = [
            n for n in chosen if (img_dir / f"{n}.png").is_file() and (a_dir / f"{n}.png").is_file()
        ]
        if not self.names:
            raise FileNotFoundError(f"no alphamatting images {list(chosen)[:3]}... under {self.root}")
        super().__init__(**kwargs)

    def num_raw(self) -> int:
        return len(self.names)

    def _cache_paths(self, name: str) -> tuple[Path, Path] | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{name}_fg.png", self.cache_dir / f"{name}_bg.png"

    def warm_up(self) -> None:
        """Before spawned loader workers start (they prepare their own copy). With ``cache_dir``: fill the
        cache here, once, so the workers only read it (no concurrent writers) and, when it was complete
        already, never import pymatting. Without: import pymatting here, which compiles its numba kernels
        (≈ 30 s of CPU on a cold cache, as on a fresh GPU machine) into numba's on-disk cache, so the workers
        load them instead of each compiling its own copy (2 workers on 2 busy cores, cold cache: first batch
        after 50 s instead of 88 s)."""
        if self.cache_dir is not None:
            self.prepare()
        else:
            import pymatting  # noqa: F401

    def prepare(self) -> None:
        """Estimate (or load) every foreground now, e.g. before forking DataLoader workers."""
        for i in range(len(self.names)):
            self._get(i)

    def _get(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        name = self.names[index]
        ipath, apath = self.root / "image" / f"{name}.png", self.root / "alpha" / f"{name}.png"
        key = (str(ipath.resolve()), ipath.stat().st_mtime)
        with _FG_LOCK:
            hit = _FG_CACHE.get(key)
        if hit is not None:  # decoding two PNGs per sample was the loader's largest cost
            return hit
        image = read_rgb(ipath).astype(np.float32) / 255.0
        alpha = read_alpha(apath)
        # Estimate (or load) the foreground / background once per process.
        paths = self._cache_paths(name)
        if paths is not None and all(p.is_file() for p in paths):
            hit = tuple(read_rgb(p).astype(np.float32) / 255.0 for p in paths)
        else:
            hit = estimate_foreground(image, alpha)
            if paths is not None:
                paths[0].parent.mkdir(parents=True, exist_ok=True)
                for p, arr in zip(paths, hit):
                    cv2.imwrite(str(p), np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8)[..., ::-1])
        with _FG_LOCK:
            _FG_CACHE[key] = hit = (image, alpha, hit[0], hit[1])
        return hit

    def load(self, index: int, rng: np.random.Generator) -> Sample:
        image, alpha, fg, bg = self._get(index)
        s: Sample = {"fg": fg.copy(), "alpha": alpha.copy(), "class_id": -1}
        if self.real:
            s["image"], s["bg"] = image.copy(), bg.copy()
        return s


# ----------------------------------------------------------------------------------------------------------
# Procedural
# ----------------------------------------------------------------------------------------------------------


class SyntheticDataset(MattingDataset):
    """Procedural SIMD-like foregrounds generated on the fly (no files needed).

    Item ``i`` is class ``classes[i % len(classes)]``; its foreground is
    ``generate_indexed(class, seed, k, gen_size, stream)`` with ``k = i // len(classes)`` (plus an
    epoch-dependent offset when ``fresh_per_epoch``), so the same item is bitwise identical wherever it is
    produced.

    Args:
        classes: class names to generate (default all 20 SIMD classes).
        length: items per epoch (default ``50 × len(classes)``).
        gen_size: side of the generated foreground (crops of 320/480/640 are taken from it, upscaling
            when needed).
        stream: ``synthetic.STREAM_TRAIN`` or ``STREAM_TEST``.
        fresh_per_epoch: new foregrounds every epoch (True) or the same set each epoch.
        **kwargs: see :class:`MattingDataset` (``class_list`` defaults to the SIMD classes so ids match the
            official order).
    """

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        *,
        length: int | None = None,
        gen_size: int = 512,
        stream: int = STREAM_TRAIN,
        fresh_per_epoch: bool = True,
        **kwargs: Any,
    ) -> None:
        self.classes = tuple(classes) if classes is not None else SIMD_CLASSES
        for c in self.classes:
            class_index(c)  # validates the name
        self.gen_size, self.stream, self.fresh_per_epoch = int(gen_size), int(stream), fresh_per_epoch
        kwargs.setdefault("length", length if length is not None else 50 * len(self.classes))
        self._current_class: str = self.classes[0]
        super().__init__(**kwargs)

    def num_raw(self) -> int:
        return self.num_prepared()

    def _gen(self, cls: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = generate_indexed(cls, self.seed, k, self.gen_size, self.stream)
        return s.fg.astype(np.float32) / 255.0, s.alpha.astype(np.float32) / 255.0

    def load(self, index: int, rng: np.random.Generator) -> Sample:
        n = len(self.classes)
        cls = self.classes[index % n]
        k = index // n
        if self.fresh_per_epoch:
            k += self.epoch * math.ceil(self.num_prepared() / n)
        self._current_class = cls
        fg, alpha = self._gen(cls, k)
        return {"fg": fg, "alpha": alpha, "class_id": self.class_id_of(cls)}

    def _second_fg(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        # Same class as the current sample (keeps the label pure); an index far beyond any epoch's range.
        return self._gen(self._current_class, 1_000_000 + int(rng.integers(1_000_000)))


# ----------------------------------------------------------------------------------------------------------
# Mixtures
# ----------------------------------------------------------------------------------------------------------


class MixedDataset(Dataset):
    """A weighted mixture: item i draws a member dataset with probability ∝ weight, then a random item of it.

    Deterministic per ``(seed, epoch, i)``; ``set_epoch`` is forwarded to the members.

    Args:
        datasets: member datasets (each returning the :data:`SAMPLE_KEYS` dict of the same size).
        weights: sampling weights (default: proportional to member lengths).
        length: prepared samples per epoch (default: sum of member lengths / ``crops_per_item``).
        seed: base seed.
        crops_per_item: the members' group size (see :class:`MattingDataset`): the ``crops_per_item``
            consecutive items of a group map to one group of one member, so they share its preparation.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        weights: Sequence[float] | None = None,
        length: int | None = None,
        seed: int = 0,
        crops_per_item: int = 1,
    ) -> None:
        if not datasets:
            raise ValueError("MixedDataset needs at least one dataset")
        self.datasets = list(datasets)
        self.crops_per_item = k = int(crops_per_item)
        if any(getattr(d, "crops_per_item", 1) != k for d in self.datasets):
            raise ValueError(f"every member of a MixedDataset needs crops_per_item = {k}")
        w = np.asarray(weights if weights is not None else [len(d) for d in self.datasets], np.float64)  # type: ignore[arg-type]
        if w.shape != (len(self.datasets),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"bad weights {weights}")
        self.probs = w / w.sum()
        self.length = int(length) * k if length is not None else sum(len(d) for d in self.datasets)  # type: ignore[arg-type]
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def __len__(self) -> int:
        return self.length

    def locate(self, index: int) -> tuple[int, int]:
        """(member, member index) that item ``index`` maps to in the current epoch."""
        k = self.crops_per_item
        rng = np.random.default_rng([self.seed, self.epoch, int(index) // k, 0x5EED])
        d = int(rng.choice(len(self.datasets), p=self.probs))
        return d, int(rng.integers(len(self.datasets[d]) // k)) * k + int(index) % k  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        d, j = self.locate(index)
        return self.datasets[d][j]


# ----------------------------------------------------------------------------------------------------------
# Config front end
# ----------------------------------------------------------------------------------------------------------

_COMMON = (
    "out_size",
    "seed",
    "view",
    "backgrounds",
    "trimap",
    "crop_sizes",
    "augment",
    "length",
    "class_list",
    "crops_per_item",
)


def build_dataset(
    spec: Mapping[str, Any],
    *,
    out_size: int = 320,
    seed: int = 0,
    view: str = "matting",
    class_list: Sequence[str] | None = None,
    backgrounds: Any = None,
    split: str = "train",
    size: int | None = None,
    classes: Sequence[str] | None = None,
    crops_per_item: int = 1,
) -> Dataset:
    """Build a dataset from a config table ``{"kind": ..., **options}``.

    Kinds and their options (plus the common ones: ``seed``, ``view``, ``trimap``, ``crop_sizes``,
    ``augment``, ``length``, ``backgrounds`` (folders), ``out_size``):
        * ``synthetic``: ``classes`` (list; default: the model classes that have a generator), ``count``
          (= length), ``gen_size``, ``stream``, ``fresh_per_epoch``;
        * ``composition`` (alias ``folder``): ``root``, ``classes``, ``class_name``, ``cache``;
        * ``alphamatting``: ``root``, ``split``, ``names``, ``mode``, ``cache_dir``;
        * ``mixed``: ``datasets`` (list of specs), ``weights``, ``length``.

    Args:
        spec: the table.
        out_size: network input side (``size`` is an alias).
        seed: base seed.
        view: default view (a spec may override it).
        class_list: the model's class names that ``class_id`` indexes (``classes`` is an alias); a spec
            cannot override it. None → the 20 SIMD classes.
        crops_per_item: crops per prepared sample (see :class:`MattingDataset`); a spec may override it.
        backgrounds: a ``BackgroundSource`` or folders (default: :func:`default_backgrounds`).
        split: ``"train"``, or ``"val"`` / ``"test"`` for evaluation data: augmentation off by default,
            synthetic data from the test stream with a fixed set, alphamatting from the held-out images.
    """
    if size is not None:
        out_size = size
    if class_list is None and classes is not None:
        class_list = classes
    evaluating = split != "train"
    opts = dict(spec)
    kind = opts.pop("kind", None)
    common: dict[str, Any] = {
        "out_size": out_size,
        "seed": seed,
        "view": view,
        "class_list": class_list,
        "backgrounds": backgrounds,
        "crops_per_item": crops_per_item,
    }
    if evaluating:
        common["augment"] = False
    for k in list(opts):
        if k in _COMMON and k != "class_list":
            common[k] = opts.pop(k)
    if isinstance(common.get("crop_sizes"), list):
        common["crop_sizes"] = tuple(common["crop_sizes"])
    if kind == "synthetic":
        if "count" in opts:
            common["length"] = int(opts.pop("count"))
        if "classes" not in opts and class_list is not None:
            opts["classes"] = [c for c in class_list if c in SIMD_CLASSES]
            if not opts["classes"]:
                raise ValueError(
                    f"none of the classes {list(class_list)} has a procedural generator; "
                    f"give synthetic data an explicit 'classes' list or use folder data"
                )
        if evaluating:
            opts.setdefault("stream", STREAM_TEST)
            opts.setdefault("fresh_per_epoch", False)
        return SyntheticDataset(**opts, **common)
    if kind in ("composition", "folder"):
        return CompositionDataset(opts.pop("root"), **opts, **common)
    if kind == "alphamatting":
        if evaluating:
            opts.setdefault("split", "test")
        return AlphamattingDataset(opts.pop("root", None), **opts, **common)
    if kind == "mixed":
        members = [
            build_dataset(
                s,
                out_size=common["out_size"],
                seed=common["seed"] + 1000 * (i + 1),
                view=common["view"],
                class_list=class_list,
                backgrounds=backgrounds,
                split=split,
                crops_per_item=common["crops_per_item"],
            )
            for i, s in enumerate(opts.pop("datasets"))
        ]
        return MixedDataset(
            members,
            opts.pop("weights", None),
            opts.pop("length", common.get("length")),
            seed=common["seed"],
            crops_per_item=common["crops_per_item"],
        )
    raise ValueError(f"unknown dataset kind {kind!r} (synthetic, composition, alphamatting, mixed)")
