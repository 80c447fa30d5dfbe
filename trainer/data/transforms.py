"""Composable augmentation steps for matting samples (numpy + OpenCV, no torch).

A *sample* is a dict of numpy arrays with these keys (all optional until a step needs them):

==========  ==============================  =========================================================
key         shape / dtype                   meaning
==========  ==============================  =========================================================
``fg``      H×W×3 float32 in [0, 1]         foreground colours
``alpha``   H×W float32 in [0, 1]           alpha matte
``bg``      H×W×3 float32 in [0, 1]         background
``image``   H×W×3 float32 in [0, 1]         the composite / photo fed to the network
``trimap``  H×W uint8 in {0, 128, 255}      training trimap
``class_id`` int                            semantic class (−1 unknown)
==========  ==============================  =========================================================

Every step is a callable ``step(sample, rng) -> sample`` (it may modify the dict in place and returns it);
randomness comes only from the ``numpy.random.Generator`` passed in, so a pipeline is reproducible
given the generator. Steps are registered by name in :data:`STEPS` so that pipelines can be built from
config files with :func:`build_pipeline`.

"Definite" alpha: a pixel is definite foreground / background when its alpha rounds to 255 / 0 in 8 bits
(|α − 1| < 0.5/255, α < 0.5/255). Every other pixel is *unknown*; every trimap produced here marks all
unknown pixels 128 (:func:`enforce_unknown` guarantees it after resampling).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = [
    "STEPS",
    "TRIMAP_BG",
    "TRIMAP_FG",
    "TRIMAP_UNKNOWN",
    "ChannelShuffle",
    "ColorJitter",
    "Compose",
    "Composite",
    "CropAroundUnknown",
    "FitBackground",
    "GammaJitter",
    "GaussianNoise",
    "GenerateTrimap",
    "JpegArtifacts",
    "RandomAffine",
    "Resize",
    "Sample",
    "Step",
    "TwoForegroundComposite",
    "build_pipeline",
    "enforce_unknown",
    "matting_pipeline",
    "register_step",
    "trimap_from_alpha",
    "unknown_mask",
]

TRIMAP_BG, TRIMAP_UNKNOWN, TRIMAP_FG = 0, 128, 255
_EPS = 0.5 / 255.0

Sample = dict[str, Any]
Step = Callable[[Sample, np.random.Generator], Sample]
STEPS: dict[str, type] = {}

_COLOR_KEYS = ("fg", "bg", "image")


def register_step(name: str) -> Callable[[type], type]:
    """Class decorator: make a step constructible by name from a config."""

    def deco(cls: type) -> type:
        if name in STEPS:
            raise ValueError(f"step {name!r} registered twice")
        STEPS[name] = cls
        cls.step_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def build_pipeline(spec: Iterable[str | Mapping[str, Any] | Step]) -> Compose:
    """Build a :class:`Compose` from names, ``{"name": ..., **kwargs}`` dicts or ready step objects.

    Example::

        build_pipeline(["affine", {"name": "trimap", "mode": "gca"}, {"name": "crop", "out_size": 320}])
    """
    steps: list[Step] = []
    for item in spec:
        if callable(item) and not isinstance(item, (str, Mapping)):
            steps.append(item)
            continue
        if isinstance(item, str):
            name, kwargs = item, {}
        else:
            kwargs = dict(item)
            name = kwargs.pop("name")
        if name not in STEPS:
            raise ValueError(f"unknown transform step {name!r}; known: {', '.join(sorted(STEPS))}")
        steps.append(STEPS[name](**kwargs))
    return Compose(steps)


class Compose:
    """Apply steps in order."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for step in self.steps:
            sample = step(sample, rng)
        return sample

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(s).__name__ for s in self.steps) + ")"

    def split_before(self, *types: type) -> tuple[Compose, Compose]:
        """(the steps before the first step of one of ``types``, that step and the rest)."""
        for i, step in enumerate(self.steps):
            if isinstance(step, types):
                return Compose(self.steps[:i]), Compose(self.steps[i:])
        names = ", ".join(t.__name__ for t in types)
        raise ValueError(f"{self!r} has no {names} step to split before")


# ----------------------------------------------------------------------------------------------------------
# Trimaps
# ----------------------------------------------------------------------------------------------------------


def unknown_mask(alpha: np.ndarray) -> np.ndarray:
    """Boolean H×W mask of pixels whose alpha is neither 0 nor 1 in 8 bits."""
    return (alpha >= _EPS) & (alpha <= 1.0 - _EPS)


def enforce_unknown(trimap: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Set every unknown-alpha pixel of ``trimap`` to 128 (in place; returns it).

    Needed after resampling a trimap next to linearly resampled alpha.
    """
    trimap[unknown_mask(alpha)] = TRIMAP_UNKNOWN
    return trimap


def _ellipse(k: int) -> np.ndarray:
    """Elliptical kernel of odd size ``k`` (an even ``k`` becomes k + 1). OpenCV anchors an even kernel off
    its centre, so each erosion with it also shifts the mask by half a pixel: with SIM's 4×4 kernel and 10
    iterations the unknown band moved 2 px down and 5 px right of the true edge it should surround."""
    k = max(1, k) | 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def trimap_from_alpha(
    alpha: np.ndarray, fg_kernel: int, fg_iter: int, bg_kernel: int | None = None, bg_iter: int | None = None
) -> np.ndarray:
    """Trimap by eroding the definite foreground and the definite background with elliptical kernels.

    Eroding the background mask equals dilating the "α > 0" mask (SIM's ``data/util.py`` recipe).

    Args:
        alpha: H×W float in [0, 1].
        fg_kernel, fg_iter: elliptical kernel size and iterations for the foreground erosion.
        bg_kernel, bg_iter: the same for the background (default: as the foreground).

    Returns:
        H×W uint8 trimap with values {0, 128, 255}; unknown covers every non-definite alpha pixel.
    """
    bg_kernel = fg_kernel if bg_kernel is None else bg_kernel
    bg_iter = fg_iter if bg_iter is None else bg_iter
    fg = (alpha > 1.0 - _EPS).astype(np.uint8)
    bg = (alpha < _EPS).astype(np.uint8)
    if fg_kernel > 1 and fg_iter > 0:
        fg = cv2.erode(fg, _ellipse(fg_kernel), iterations=fg_iter, borderType=cv2.BORDER_REPLICATE)
    if bg_kernel > 1 and bg_iter > 0:
        bg = cv2.erode(bg, _ellipse(bg_kernel), iterations=bg_iter, borderType=cv2.BORDER_REPLICATE)
    tri = np.full(alpha.shape[:2], TRIMAP_UNKNOWN, np.uint8)
    tri[fg > 0] = TRIMAP_FG
    tri[bg > 0] = TRIMAP_BG
    return tri


@register_step("trimap")
class GenerateTrimap:
    """Random training trimap from ``alpha`` (writes ``trimap``).

    Modes:
        * ``"sim"`` (SIM §4.5 config defaults): one elliptical kernel of size ``ksize`` (inclusive range,
          default 3–5) applied ``iterations`` times (inclusive, default 5–15) to both sides.
        * ``"gca"`` (GCA-Matting): independent elliptical kernels for foreground and background with sizes
          drawn from ``gca_kernel`` (inclusive, default 1–29), one iteration each.
    Even kernel sizes are used as the next odd size (see ``_ellipse``: an even kernel shifts the band).

    Args:
        mode: ``"sim"``, ``"gca"`` or ``"mixed"`` (pick one of the two per sample).
        ksize, iterations: SIM ranges.
        gca_kernel: GCA range.
        scale_ref: if set, kernel extents scale with ``min(H, W) / scale_ref`` (so the band keeps its
            relative width on images of another resolution); None = no scaling.
    """

    def __init__(
        self,
        mode: str = "sim",
        ksize: tuple[int, int] = (3, 5),
        iterations: tuple[int, int] = (5, 15),
        gca_kernel: tuple[int, int] = (1, 29),
        scale_ref: float | None = None,
    ) -> None:
        if mode not in ("sim", "gca", "mixed"):
            raise ValueError(f"trimap mode must be sim, gca or mixed, got {mode!r}")
        self.mode, self.ksize, self.iterations, self.gca_kernel, self.scale_ref = (
            mode,
            tuple(ksize),
            tuple(iterations),
            tuple(gca_kernel),
            scale_ref,
        )

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        alpha = sample["alpha"]
        f = 1.0 if self.scale_ref is None else min(alpha.shape[:2]) / float(self.scale_ref)
        mode = self.mode if self.mode != "mixed" else ("sim", "gca")[int(rng.integers(2))]
        if mode == "sim":
            k = int(rng.integers(self.ksize[0], self.ksize[1] + 1))
            it = max(1, round(int(rng.integers(self.iterations[0], self.iterations[1] + 1)) * f))
            sample["trimap"] = trimap_from_alpha(alpha, k, it)
        else:
            kf, kb = (
                max(1, round(int(rng.integers(self.gca_kernel[0], self.gca_kernel[1] + 1)) * f))
                for _ in range(2)
            )
            sample["trimap"] = trimap_from_alpha(alpha, kf, 1, kb, 1)
        return sample


# ----------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------


def _resize(img: np.ndarray, w: int, h: int, trimap: bool = False) -> np.ndarray:
    """Area (shrinking) or bilinear resize; a ``trimap`` keeps a pixel definite only where every source pixel
    it covers was definite, so its band widens by under a pixel on both sides. (Nearest-neighbour sampling
    would instead shift the band against the area-resized alpha: by 0.23 px at 640 → 320, 0.49 px at
    640 → 427.)"""
    if img.shape[1] == w and img.shape[0] == h:
        return img
    interp = cv2.INTER_AREA if (w < img.shape[1] and h < img.shape[0]) else cv2.INTER_LINEAR
    if not trimap:
        return cv2.resize(img, (w, h), interpolation=interp)
    out = np.full((h, w), TRIMAP_UNKNOWN, np.uint8)
    for value in (TRIMAP_FG, TRIMAP_BG):
        cover = cv2.resize((img == value).astype(np.float32), (w, h), interpolation=interp)
        out[cover > 1.0 - 1e-3] = value
    return out


def _spatial_keys(sample: Sample, h: int, w: int) -> list[str]:
    return [
        k
        for k in ("fg", "alpha", "bg", "image", "trimap")
        if k in sample and isinstance(sample[k], np.ndarray) and sample[k].shape[:2] == (h, w)
    ]


@register_step("affine")
class RandomAffine:
    """Random flip, scale, rotation and shear about the image centre (output keeps the input size).

    Applied identically to every spatial key of the same size. Colours use reflected borders; alpha and
    trimap get 0 outside (uncovered corners become background) unless ``reflect_alpha`` is set, which real
    photos (an ``image`` with its own background) need so that I = αF + (1 − α)B keeps holding there.

    Args:
        scale: range of the isotropic scale factor (log-uniform).
        rotation: maximum absolute rotation in degrees.
        shear: maximum absolute shear in degrees.
        flip: probability of a horizontal flip.
        prob: probability of applying the scale / rotation / shear part at all.
        reflect_alpha: reflect alpha and trimap at the borders like the colours.
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.8, 1.25),
        rotation: float = 30.0,
        shear: float = 10.0,
        flip: float = 0.5,
        prob: float = 1.0,
        reflect_alpha: bool = False,
    ) -> None:
        self.scale, self.rotation, self.shear, self.flip, self.prob = (
            tuple(scale),
            rotation,
            shear,
            flip,
            prob,
        )
        self.reflect_alpha = reflect_alpha

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample["alpha"].shape[:2]
        keys = _spatial_keys(sample, h, w)
        if rng.random() < self.flip:
            for k in keys:
                sample[k] = np.ascontiguousarray(sample[k][:, ::-1])
        if rng.random() >= self.prob:
            return sample
        sc = math.exp(rng.uniform(math.log(self.scale[0]), math.log(self.scale[1])))
        rot = math.radians(rng.uniform(-self.rotation, self.rotation))
        sh = math.radians(rng.uniform(-self.shear, self.shear))
        a = (
            np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
            @ np.array([[1.0, math.tan(sh)], [0.0, 1.0]])
            * sc
        )
        c = np.array([(w - 1) / 2, (h - 1) / 2])
        m = np.hstack([a, (c - a @ c)[:, None]]).astype(np.float64)
        if np.allclose(m, [[1, 0, 0], [0, 1, 0]]):
            return sample
        a_border = cv2.BORDER_REFLECT_101 if self.reflect_alpha else cv2.BORDER_CONSTANT
        for k in keys:
            if k == "trimap":
                sample[k] = cv2.warpAffine(
                    sample[k], m, (w, h), flags=cv2.INTER_NEAREST, borderMode=a_border, borderValue=0
                )
            elif k == "alpha":
                sample[k] = cv2.warpAffine(
                    sample[k], m, (w, h), flags=cv2.INTER_LINEAR, borderMode=a_border, borderValue=0
                )
            else:
                sample[k] = cv2.warpAffine(
                    sample[k], m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
                )
        if "trimap" in keys:
            enforce_unknown(sample["trimap"], sample["alpha"])
        return sample


@register_step("resize")
class Resize:
    """Resize every spatial key so that the short side is ``short_side`` (or exactly ``size`` if given)."""

    def __init__(self, short_side: int | None = None, size: int | None = None) -> None:
        if (short_side is None) == (size is None):
            raise ValueError("give exactly one of short_side and size")
        self.short_side, self.size = short_side, size

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample["alpha"].shape[:2]
        if self.size is not None:
            nh = nw = int(self.size)
        else:
            f = self.short_side / min(h, w)  # type: ignore[operator]
            nh, nw = max(1, round(h * f)), max(1, round(w * f))
        for k in _spatial_keys(sample, h, w):
            sample[k] = _resize(sample[k], nw, nh, trimap=(k == "trimap"))
        if "trimap" in sample:
            enforce_unknown(sample["trimap"], sample["alpha"])
        return sample


@register_step("crop")
class CropAroundUnknown:
    """Square crop centred on a random unknown pixel, resized to the network size.

    The crop side is drawn from ``sizes`` (SIM / FBA: 320, 480, 640). Images smaller than the crop are first
    upscaled so that their short side equals it. The centre is a random pixel of the unknown region
    (``trimap == 128`` if a trimap exists, else non-definite alpha, else the alpha edge) with probability
    ``unknown_prob``, otherwise uniform; the window is clamped inside the image. The crop is then resized
    to ``out_size`` (alpha / colours: area or bilinear; trimap: see ``_resize``, then :func:`enforce_unknown`).

    Args:
        sizes: candidate crop sides in pixels of the (possibly upscaled) source.
        out_size: side of the output (the network input size), or None to keep the crop size.
        unknown_prob: probability of centring on an unknown pixel.
    """

    def __init__(
        self, sizes: Sequence[int] = (320, 480, 640), out_size: int | None = 320, unknown_prob: float = 1.0
    ) -> None:
        self.sizes, self.out_size, self.unknown_prob = tuple(int(s) for s in sizes), out_size, unknown_prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        c = self.sizes[int(rng.integers(len(self.sizes)))]
        h, w = sample["alpha"].shape[:2]
        keys = _spatial_keys(sample, h, w)
        if min(h, w) < c:
            f = c / min(h, w)
            nh, nw = max(c, math.ceil(h * f)), max(c, math.ceil(w * f))
            for k in keys:
                sample[k] = _resize(sample[k], nw, nh, trimap=(k == "trimap"))
            h, w = nh, nw
            if "trimap" in sample:
                enforce_unknown(sample["trimap"], sample["alpha"])
        cy, cx = None, None
        if rng.random() < self.unknown_prob:
            if "trimap" in sample:
                mask = sample["trimap"] == TRIMAP_UNKNOWN
            else:
                mask = unknown_mask(sample["alpha"])
            ys, xs = np.nonzero(mask)
            if len(ys) == 0:  # a binary matte: use its edge
                a8 = (sample["alpha"] > 0.5).astype(np.uint8)
                ys, xs = np.nonzero(cv2.morphologyEx(a8, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)))
            if len(ys):
                i = int(rng.integers(len(ys)))
                cy, cx = int(ys[i]), int(xs[i])
        if cy is None:
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0 = int(np.clip(cy - c // 2, 0, h - c))
        x0 = int(np.clip(cx - c // 2, 0, w - c))
        out = self.out_size or c
        for k in keys:
            sample[k] = _resize(
                np.ascontiguousarray(sample[k][y0 : y0 + c, x0 : x0 + c]), out, out, trimap=(k == "trimap")
            )
        if "trimap" in sample:
            enforce_unknown(sample["trimap"], sample["alpha"])
        return sample


# ----------------------------------------------------------------------------------------------------------
# Composition
# ----------------------------------------------------------------------------------------------------------


@register_step("two_fg")
class TwoForegroundComposite:
    """Overlay a second foreground (FBA / GCA): α = 1 − (1 − α1)(1 − α2).

    Colours are the exact "fg1 over fg2" colour F = (α1 F1 + (1 − α1) α2 F2) / α, so that
    α F + (1 − α) B equals compositing fg1 over fg2 over B.

    Args:
        source: callable ``rng -> (fg H'×W'×3 float32, alpha H'×W' float32)``; resized to the first fg.
        prob: probability of applying (GCA: 0.5).
    """

    def __init__(
        self,
        source: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]] | None = None,
        prob: float = 0.5,
    ) -> None:
        self.source, self.prob = source, prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if self.source is None or rng.random() >= self.prob:
            return sample
        fg1, a1 = sample["fg"], sample["alpha"]
        h, w = a1.shape[:2]
        fg2, a2 = self.source(rng)
        fg2, a2 = _resize(fg2, w, h), _resize(a2, w, h)
        if rng.random() < 0.5:
            fg2, a2 = fg2[:, ::-1], a2[:, ::-1]
        alpha = 1.0 - (1.0 - a1) * (1.0 - a2)
        num = fg1 * a1[..., None] + fg2 * ((1.0 - a1) * a2)[..., None]
        safe = np.maximum(alpha, 1e-6)[..., None]
        fg = np.where(alpha[..., None] > 1e-6, num / safe, fg1 * a1[..., None] + fg2 * (1 - a1[..., None]))
        sample["fg"] = np.clip(fg, 0, 1).astype(np.float32)
        sample["alpha"] = alpha.astype(np.float32)
        sample.pop("trimap", None)  # no longer matches the alpha
        return sample


@register_step("fit_bg")
class FitBackground:
    """Provide a background of the alpha's size: draw one from ``source`` (a ``BackgroundSource`` or any
    object with ``sample(rng, h, w)``) unless a matching ``bg`` is already present.

    Args:
        source: background source; None → ``BackgroundSource(None)`` (generated backgrounds).
        resample: replace an existing ``bg`` even when its size matches.
    """

    def __init__(self, source: Any = None, resample: bool = False) -> None:
        if source is None:
            from trainer.data.backgrounds import BackgroundSource

            source = BackgroundSource(None)
        self.source, self.resample = source, resample

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample["alpha"].shape[:2]
        bg = sample.get("bg")
        if self.resample or bg is None or bg.shape[:2] != (h, w):
            sample["bg"] = self.source.sample(rng, h, w)
        return sample


@register_step("composite")
class Composite:
    """``image = fg·α + bg·(1 − α)`` (float, no quantisation)."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        a = sample["alpha"][..., None]
        sample["image"] = (sample["fg"] * a + sample["bg"] * (1.0 - a)).astype(np.float32)
        return sample


# ----------------------------------------------------------------------------------------------------------
# Photometric
# ----------------------------------------------------------------------------------------------------------


class _Photometric:
    def __init__(self, keys: Sequence[str], prob: float) -> None:
        self.keys, self.prob = tuple(keys), prob

    def _targets(self, sample: Sample) -> list[str]:
        return [k for k in self.keys if k in sample]


@register_step("color")
class ColorJitter(_Photometric):
    """HSV jitter: hue shift ±``hue`` degrees, saturation and value scaled by 1 ± ``saturation`` / ``value``.

    Each key gets its own random draw (foreground and background vary independently, as in GCA).
    """

    def __init__(
        self,
        hue: float = 20.0,
        saturation: float = 0.2,
        value: float = 0.2,
        keys: Sequence[str] = ("fg", "bg"),
        prob: float = 0.5,
    ) -> None:
        super().__init__(keys, prob)
        self.hue, self.saturation, self.value = hue, saturation, value

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for k in self._targets(sample):
            if rng.random() >= self.prob:
                continue
            hsv = cv2.cvtColor(
                np.ascontiguousarray(sample[k], np.float32), cv2.COLOR_RGB2HSV
            )  # H in [0, 360)
            hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-self.hue, self.hue), 360.0)
            hsv[..., 1] = np.clip(hsv[..., 1] * (1 + rng.uniform(-self.saturation, self.saturation)), 0, 1)
            hsv[..., 2] = np.clip(hsv[..., 2] * (1 + rng.uniform(-self.value, self.value)), 0, 1)
            sample[k] = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 1)
        return sample


@register_step("gamma")
class GammaJitter(_Photometric):
    """``x ** γ`` with γ log-uniform in ``gamma`` (SIM config range 0.2–2; default milder 0.5–2)."""

    def __init__(
        self, gamma: tuple[float, float] = (0.5, 2.0), keys: Sequence[str] = ("fg", "bg"), prob: float = 0.3
    ) -> None:
        super().__init__(keys, prob)
        self.gamma = tuple(gamma)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for k in self._targets(sample):
            if rng.random() < self.prob:
                g = math.exp(rng.uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))
                sample[k] = np.power(np.clip(sample[k], 0, 1), g).astype(np.float32)
        return sample


@register_step("channel_shuffle")
class ChannelShuffle(_Photometric):
    """Random permutation of the RGB channels (colour diversity for few foregrounds)."""

    def __init__(self, keys: Sequence[str] = ("fg",), prob: float = 0.2) -> None:
        super().__init__(keys, prob)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for k in self._targets(sample):
            if rng.random() < self.prob:
                sample[k] = np.ascontiguousarray(sample[k][..., rng.permutation(3)])
        return sample


@register_step("noise")
class GaussianNoise(_Photometric):
    """Additive Gaussian noise, σ uniform in ``sigma`` (in [0, 1] units), clipped to [0, 1]."""

    def __init__(
        self, sigma: tuple[float, float] = (0.0, 0.03), keys: Sequence[str] = ("image",), prob: float = 0.3
    ) -> None:
        super().__init__(keys, prob)
        self.sigma = tuple(sigma)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for k in self._targets(sample):
            if rng.random() < self.prob:
                x = sample[k]
                n = rng.standard_normal(x.shape, dtype=np.float32) * np.float32(rng.uniform(*self.sigma))
                sample[k] = np.clip(x + n, 0, 1)
        return sample


@register_step("jpeg")
class JpegArtifacts(_Photometric):
    """Re-encode as JPEG with quality uniform in ``quality`` (cv2.imencode) and decode again."""

    def __init__(
        self, quality: tuple[int, int] = (40, 95), keys: Sequence[str] = ("image",), prob: float = 0.3
    ) -> None:
        super().__init__(keys, prob)
        self.quality = tuple(quality)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for k in self._targets(sample):
            if rng.random() < self.prob:
                q = int(rng.integers(self.quality[0], self.quality[1] + 1))
                u8 = np.clip(sample[k] * 255.0 + 0.5, 0, 255).astype(np.uint8)
                ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
                if ok:
                    sample[k] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
        return sample


# ----------------------------------------------------------------------------------------------------------
# Default pipelines
# ----------------------------------------------------------------------------------------------------------


def matting_pipeline(
    out_size: int = 320,
    crop_sizes: Sequence[int] = (320, 480, 640),
    trimap: str = "sim",
    backgrounds: Any = None,
    second_fg: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]] | None = None,
    two_fg_prob: float = 0.5,
    augment: bool = True,
    real: bool = False,
) -> Compose:
    """The default training pipeline.

    Composite mode (``real=False``): affine → two-foreground → trimap → crop → background → colour / gamma
    (fg and bg independently) → composite → noise / JPEG on the image.
    Real-photo mode (``real=True``: the sample already has ``image`` and estimated ``fg`` / ``bg``): flip
    and scale only → trimap → crop → noise / JPEG on the image (colour jitter would break I = αF + (1−α)B).

    Args:
        out_size: network input side.
        crop_sizes: crop sides before resizing (SIM: 320/480/640).
        trimap: ``"sim"``, ``"gca"`` or ``"mixed"`` (see :class:`GenerateTrimap`).
        backgrounds: background source for :class:`FitBackground` (None → generated).
        second_fg: foreground source for :class:`TwoForegroundComposite` (None → off).
        two_fg_prob: its probability.
        augment: False → only trimap, crop, background and composite (evaluation-style, still random crops).
        real: real-photo mode.
    """
    steps: list[Step] = []
    if real:
        if augment:
            steps.append(RandomAffine(scale=(0.8, 1.25), rotation=0.0, shear=0.0, reflect_alpha=True))
        steps += [GenerateTrimap(trimap), CropAroundUnknown(crop_sizes, out_size)]
        if augment:
            steps += [GaussianNoise(), JpegArtifacts()]
        return Compose(steps)
    if augment:
        steps.append(RandomAffine())
        if second_fg is not None:
            steps.append(TwoForegroundComposite(second_fg, two_fg_prob))
    steps += [GenerateTrimap(trimap), CropAroundUnknown(crop_sizes, out_size), FitBackground(backgrounds)]
    if augment:
        steps += [ColorJitter(), GammaJitter(), ChannelShuffle()]
    steps.append(Composite())
    if augment:
        steps += [GaussianNoise(), JpegArtifacts()]
    return Compose(steps)
