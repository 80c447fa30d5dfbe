"""Procedural SIMD-like foregrounds: one generator per semantic class (SIM §2.1).

Each generator returns a foreground colour image (defined on the whole canvas, as DIM / SIMD foregrounds
are) and an alpha matte with the matting character of its class: thin curved strands for hair and fur,
soft turbulent mattes for fire and smoke, semi-transparent interiors with sharp rims for glass and
plastic, many small holes for nets, webs and holed textures, blur-widened edges for motion and defocus,
hard anti-aliased edges for ``sharp``.

Everything is numpy + OpenCV; one 512² sample takes a few to a few tens of milliseconds on one core, so
the generator can be used on the fly inside a training ``Dataset``.

Determinism: a sample is a pure function of the numpy ``Generator`` passed in.
:func:`sample_rng` derives the generator from ``(seed, class_id, index, stream)`` so that
``generate(c, sample_rng(seed, c, i))`` is bitwise reproducible on any machine with the same numpy
(``Generator`` streams are stable across platforms) and OpenCV versions.

Typical use::

    from trainer.data.synthetic import generate, sample_rng, write_dataset, contact_sheet
    s = generate("hair_hard", sample_rng(seed=0, class_id=5, index=17))
    s.fg      # H×W×3 uint8
    s.alpha   # H×W uint8
    write_dataset("out/simd_train", per_class=50, size=512, seed=0, layout="train")
    write_dataset("out/simd_test", per_class=10, size=512, seed=0, layout="test")
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from backend.classes import SIMD_CLASSES

__all__ = [
    "GENERATORS",
    "STREAM_TEST",
    "STREAM_TRAIN",
    "SyntheticSample",
    "class_index",
    "contact_sheet",
    "generate",
    "generate_indexed",
    "main",
    "sample_rng",
    "test_trimap",
    "value_noise",
    "write_dataset",
]

# Independent random streams so that a training set and a test set made with the same seed never share
# a sample.
STREAM_TRAIN = 0
STREAM_TEST = 1

_SHIFT = 4  # cv2 fixed-point sub-pixel bits for drawing (1/16 px)
_ONE = 1 << _SHIFT

Array = np.ndarray
GenFn = Callable[[np.random.Generator, int], tuple[Array, Array]]


@dataclass(frozen=True)
class SyntheticSample:
    """One procedural foreground.

    Attributes:
        fg: H×W×3 uint8 RGB foreground colours (defined everywhere, meaningful where alpha > 0).
        alpha: H×W uint8 alpha matte.
        class_id: index into ``backend.classes.SIMD_CLASSES``.
    """

    fg: Array
    alpha: Array
    class_id: int

    @property
    def class_name(self) -> str:
        return SIMD_CLASSES[self.class_id]


# ----------------------------------------------------------------------------------------------------------
# Primitives
# ----------------------------------------------------------------------------------------------------------


def class_index(cls: str | int) -> int:
    """Map a class name or id to its SIMD index (raises ``ValueError`` for unknown classes)."""
    if isinstance(cls, (int, np.integer)):
        if not 0 <= int(cls) < len(SIMD_CLASSES):
            raise ValueError(f"class id {cls} out of range 0..{len(SIMD_CLASSES) - 1}")
        return int(cls)
    try:
        return SIMD_CLASSES.index(str(cls))
    except ValueError:
        raise ValueError(f"unknown class {cls!r}; known: {', '.join(SIMD_CLASSES)}") from None


def sample_rng(seed: int, class_id: int, index: int, stream: int = STREAM_TRAIN) -> np.random.Generator:
    """The generator for sample ``index`` of class ``class_id`` (independent streams per tuple)."""
    return np.random.default_rng([int(stream), int(seed), int(class_id), int(index)])


def value_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    cell: float | tuple[float, float],
    octaves: int = 4,
    persistence: float = 0.5,
) -> Array:
    """Fractal value noise in [0, 1]: a sum of bicubically upsampled random grids.

    Args:
        rng: random generator.
        shape: (H, W) of the output.
        cell: size in pixels of the coarsest grid cell; a (cy, cx) pair gives anisotropic (streaky) noise.
        octaves: number of grids, each with half the cell size of the previous one.
        persistence: amplitude factor from one octave to the next.

    Returns:
        H×W float32 array normalised to [0, 1].
    """
    h, w = shape
    cy, cx = (float(cell), float(cell)) if np.isscalar(cell) else (float(cell[0]), float(cell[1]))  # type: ignore[index]
    # Work at reduced resolution when even the finest octave is smooth (>= 4 px per cell), then upsample:
    # same look, a fraction of the cost.
    finest = min(cy, cx) / 2 ** (octaves - 1)
    d = int(min(8, max(1, finest // 4)))
    if d > 1:
        small = value_noise(rng, (-(-h // d), -(-w // d)), (cy / d, cx / d), octaves, persistence)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)[:h, :w]
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for _ in range(octaves):
        cy_, cx_ = max(cy, 1.5), max(cx, 1.5)
        gh, gw = math.ceil(h / cy_) + 3, math.ceil(w / cx_) + 3
        grid = rng.random((gh, gw), dtype=np.float32)
        up = cv2.resize(grid, (int(gw * cx_), int(gh * cy_)), interpolation=cv2.INTER_CUBIC)
        # A random sub-cell offset hides the grid alignment of the octaves.
        oy = int(rng.integers(0, max(1, up.shape[0] - h)))
        ox = int(rng.integers(0, max(1, up.shape[1] - w)))
        out += amp * up[oy : oy + h, ox : ox + w]
        amp *= persistence
        cy, cx = cy / 2, cx / 2
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _smoothstep(x: Array, lo: float, hi: float) -> Array:
    t = np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _fx(points: Array) -> Array:
    """Float pixel coordinates → cv2 fixed-point int32 (sub-pixel accurate drawing)."""
    return np.round(np.asarray(points) * _ONE).astype(np.int32)


# OpenCV anti-aliases only on 8-bit images, so every drawing canvas is uint8 (values 0..255) and drawing
# helpers take values in [0, 1]. cv2's AA drawing blends the colour *over* what is already there with the
# pixel coverage, which is exactly alpha "over" compositing for stacked layers.


def _zeros(s: int, channels: int = 0) -> Array:
    return np.zeros((s, s, channels) if channels else (s, s), np.uint8)


def _f32(canvas: Array) -> Array:
    return canvas.astype(np.float32) * (1.0 / 255.0)


def _val(value: float | Sequence[float]) -> float | tuple[float, ...]:
    if np.isscalar(value):
        return float(value) * 255.0  # type: ignore[arg-type]
    return tuple(float(v) * 255.0 for v in value)  # type: ignore[union-attr]


def _check(canvas: Array) -> None:
    if canvas.dtype != np.uint8:
        raise TypeError("drawing canvases must be uint8 (OpenCV anti-aliases only 8-bit images)")


def _fill_poly(canvas: Array, polys: Sequence[Array] | Array, value: float | Sequence[float] = 1.0) -> None:
    _check(canvas)
    if isinstance(polys, np.ndarray) and polys.ndim == 2:
        polys = [polys]
    cv2.fillPoly(canvas, [_fx(p) for p in polys], _val(value), cv2.LINE_AA, _SHIFT)


def _polylines(
    canvas: Array, paths: Array | Sequence[Array], value: float | Sequence[float] = 1.0, thickness: int = 1
) -> None:
    _check(canvas)
    if len(paths) == 0:
        return
    cv2.polylines(
        canvas, [_fx(p) for p in paths], False, _val(value), max(1, int(thickness)), cv2.LINE_AA, _SHIFT
    )


def _circle(
    canvas: Array,
    center: Sequence[float],
    radius: float,
    value: float | Sequence[float] = 1.0,
    thickness: int = -1,
) -> None:
    cv2.circle(
        canvas,
        (int(center[0] * _ONE), int(center[1] * _ONE)),
        max(1, int(radius * _ONE)),
        _val(value),
        thickness,
        cv2.LINE_AA,
        _SHIFT,
    )


def _ellipse(
    canvas: Array,
    center: Sequence[float],
    axes: Sequence[float],
    angle_deg: float,
    value: float | Sequence[float] = 1.0,
    thickness: int = -1,
    start: float = 0,
    end: float = 360,
) -> None:
    cv2.ellipse(
        canvas,
        (int(center[0] * _ONE), int(center[1] * _ONE)),
        (max(1, int(axes[0] * _ONE)), max(1, int(axes[1] * _ONE))),
        float(angle_deg),
        start,
        end,
        _val(value),
        thickness,
        cv2.LINE_AA,
        _SHIFT,
    )


def _rot(angle: float) -> Array:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]], np.float64)


def _dir(angle: float) -> Array:
    return np.array([math.cos(angle), math.sin(angle)])


def _blob(
    rng: np.random.Generator,
    center: Sequence[float],
    radius: float,
    irregularity: float = 0.3,
    aspect: float = 1.0,
    angle: float = 0.0,
    n: int = 200,
    harmonics: int = 6,
) -> Array:
    """A star-shaped random closed outline (n×2 float points, x/y order)."""
    phi = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 2 + harmonics):
        r += irregularity / k * rng.normal() * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.35, None)
    pts = np.stack([r * np.cos(phi) * aspect, r * np.sin(phi)], 1) @ _rot(angle).T
    return pts + np.asarray(center, np.float64)


def _outward_normals(poly: Array) -> Array:
    t = np.roll(poly, -1, 0) - np.roll(poly, 1, 0)
    nrm = np.stack([t[:, 1], -t[:, 0]], 1)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-9
    flip = np.sum(nrm * (poly - poly.mean(0)), 1) < 0
    nrm[flip] *= -1
    return nrm


def _strands(
    rng: np.random.Generator,
    starts: Array,
    theta: Array,
    length: Array,
    n_steps: int,
    curl: float,
    wiggle: float,
) -> Array:
    """Smooth random curves (hair, fur, antennae): n×(n_steps+1)×2 points.

    Each curve turns by a constant per-strand curvature plus a small random walk in angle.
    """
    n = len(starts)
    kappa = rng.normal(0.0, curl, n)[:, None]
    dtheta = kappa + rng.normal(0.0, wiggle, (n, n_steps))
    ang = theta[:, None] + np.cumsum(dtheta, 1)
    step = (np.asarray(length, np.float64) / n_steps)[:, None, None]
    delta = np.stack([np.cos(ang), np.sin(ang)], -1) * step
    pts = np.concatenate([np.zeros((n, 1, 2)), np.cumsum(delta, 1)], 1)
    return pts + starts[:, None, :]


def _color_field(
    rng: np.random.Generator,
    s: int,
    base: Sequence[float],
    var: float = 0.15,
    cell: float | tuple[float, float] = 64,
    chroma: float = 0.05,
) -> Array:
    """A smoothly varying colour image around ``base`` (RGB in [0, 1]); s×s×3 float32."""
    cmin = float(cell) if np.isscalar(cell) else float(min(cell))  # type: ignore[arg-type]
    d = int(min(8, max(1, cmin // 8)))  # the field is smooth: build it small, upsample once
    n = -(-s // d)
    cl = cell / d if np.isscalar(cell) else (cell[0] / d, cell[1] / d)  # type: ignore[operator,index]
    lum = value_noise(rng, (n, n), cl, 3) - 0.5
    tint = value_noise(rng, (n, n), cl, 2) - 0.5
    dirn = rng.normal(0.0, 1.0, 3)
    dirn /= np.linalg.norm(dirn) + 1e-9
    img = np.asarray(base, np.float32)[None, None, :] * (1.0 + 2 * var * lum[..., None])
    img += (2 * chroma * tint)[..., None] * dirn[None, None, :].astype(np.float32)
    if d > 1:
        img = cv2.resize(img, (s, s), interpolation=cv2.INTER_LINEAR)
    return np.clip(img, 0.0, 1.0)


def _premult_filter(fg: Array, alpha: Array, kernel: Array) -> tuple[Array, Array]:
    """Blur an object the physically right way: filter premultiplied colour and alpha, then unpremultiply."""
    a = cv2.filter2D(alpha, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    pf = cv2.filter2D(fg * alpha[..., None], -1, kernel, borderType=cv2.BORDER_CONSTANT)
    out = np.where(a[..., None] > 1e-3, pf / np.maximum(a[..., None], 1e-3), fg)
    return np.clip(out, 0, 1).astype(np.float32), np.clip(a, 0, 1)


def _solid_object(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    """A generic opaque object (blob or polygon union) with a textured colour; base for motion/defocus."""
    alpha = _zeros(s)
    c = rng.uniform(0.38, 0.62, 2) * s
    if rng.random() < 0.5:
        _fill_poly(
            alpha,
            _blob(
                rng,
                c,
                rng.uniform(0.16, 0.27) * s,
                rng.uniform(0.2, 0.5),
                rng.uniform(0.6, 1.4),
                rng.uniform(0, np.pi),
            ),
        )
    else:
        for _ in range(int(rng.integers(1, 4))):
            cc = c + rng.normal(0, 0.08 * s, 2)
            pts = cc + rng.normal(0, 0.14 * s, (int(rng.integers(3, 7)), 2))
            hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)
            _fill_poly(alpha, hull.astype(np.float64))
    base = rng.uniform(0.15, 0.95, 3)
    fg = _color_field(rng, s, base, 0.25, rng.uniform(16, 64))
    # Some high-frequency detail so that the blur is visible in the colours too.
    stripes = value_noise(rng, (s, s), rng.uniform(4, 10), 2)
    fg = np.clip(fg * (0.75 + 0.5 * stripes[..., None]), 0, 1)
    return fg, _f32(alpha)


# ----------------------------------------------------------------------------------------------------------
# One generator per class. Signature: (rng, size) -> (fg float32 H×W×3 in [0,1], alpha float32 H×W in [0,1])
# ----------------------------------------------------------------------------------------------------------


def _gen_defocus(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    fg, alpha = _solid_object(rng, s)
    # Defocus = convolution with a disc (the lens aperture). Filtered at half resolution: the result is
    # smooth anyway and this keeps the large kernel cheap.
    h = s // 2
    r = rng.uniform(0.012, 0.035) * h * 2 / 2  # radius in half-resolution pixels (1.2–3.5 % of the image)
    r = max(r, 1.5)
    k = math.ceil(r) * 2 + 3
    disc = np.zeros((k, k), np.uint8)
    _circle(disc, (k // 2, k // 2), r)
    ker = _f32(disc)
    ker /= ker.sum()
    fg_s = cv2.resize(fg, (h, h), interpolation=cv2.INTER_AREA)
    a_s = cv2.resize(alpha, (h, h), interpolation=cv2.INTER_AREA)
    fg_s, a_s = _premult_filter(fg_s, a_s, ker)
    return cv2.resize(fg_s, (s, s), interpolation=cv2.INTER_LINEAR), cv2.resize(a_s, (s, s))


def _gen_motion(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    fg, alpha = _solid_object(rng, s)
    # A straight motion path of 3–10 % of the image, filtered at half resolution (long kernels are costly).
    h = s // 2
    length = rng.uniform(0.03, 0.1) * h
    ang = rng.uniform(0, np.pi)
    k = math.ceil(length) | 1
    ker_u8 = np.zeros((k + 2, k + 2), np.uint8)
    d = _dir(ang) * (length - 1) / 2
    c = np.array([(k + 2) // 2, (k + 2) // 2], np.float64)
    _polylines(ker_u8, [np.stack([c - d, c + d])])
    ker = _f32(ker_u8)
    ker /= ker.sum()
    fg_s = cv2.resize(fg, (h, h), interpolation=cv2.INTER_AREA)
    a_s = cv2.resize(alpha, (h, h), interpolation=cv2.INTER_AREA)
    fg_s, a_s = _premult_filter(fg_s, a_s, ker)
    return cv2.resize(fg_s, (s, s), interpolation=cv2.INTER_LINEAR), cv2.resize(a_s, (s, s))


def _gen_sharp(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    alpha = _zeros(s)
    fg = _zeros(s, 3)
    c = rng.uniform(0.4, 0.6, 2) * s
    g = np.linspace(-1, 1, s, dtype=np.float32)
    for _ in range(int(rng.integers(1, 5))):
        kind = rng.integers(0, 3)
        cc = c + rng.normal(0, 0.1 * s, 2)
        if kind == 0:  # random convex polygon
            pts = cc + rng.normal(0, 0.15 * s, (int(rng.integers(3, 9)), 2))
            poly = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)
        elif kind == 1:  # star
            m = int(rng.integers(4, 9))
            phi = np.linspace(0, 2 * np.pi, 2 * m, endpoint=False) + rng.uniform(0, np.pi)
            rr = np.where(np.arange(2 * m) % 2 == 0, 1.0, rng.uniform(0.35, 0.7)) * rng.uniform(0.1, 0.22) * s
            poly = cc + np.stack([rr * np.cos(phi), rr * np.sin(phi)], 1)
        else:  # rotated rectangle
            wh = rng.uniform(0.08, 0.3, 2) * s
            poly = (
                cc + (np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * wh / 2) @ _rot(rng.uniform(0, np.pi)).T
            )
        _fill_poly(alpha, poly)
        _fill_poly(fg, poly, rng.uniform(0.05, 0.95, 3))
    # Flat man-made colours with a gentle linear shading gradient.
    shade = 1.0 + rng.uniform(-0.15, 0.15) * g[None, :] + rng.uniform(-0.15, 0.15) * g[:, None]
    a = _f32(alpha)
    fgf = _f32(fg)
    # The fg canvas was blended over black at AA edges: unpremultiply to get the true edge colour.
    fgf = np.where(a[..., None] > 0, fgf / np.maximum(a[..., None], 1e-3), 0.5)
    return np.clip(fgf * shade[..., None], 0, 1).astype(np.float32), a


def _gen_fire(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    h = s // 2  # soft matte: compute at half resolution
    yy, xx = np.mgrid[0:h, 0:h].astype(np.float32) / h
    # Domain warp by turbulent noise gives the flickering tongues.
    wx = (value_noise(rng, (h, h), (h / 6, h / 10), 4) - 0.5) * rng.uniform(0.15, 0.3)
    wy = (value_noise(rng, (h, h), (h / 8, h / 8), 4) - 0.5) * 0.15
    xw, yw = xx + wx, yy + wy
    base_y = rng.uniform(0.82, 0.95)
    heat = np.zeros((h, h), np.float32)
    for _ in range(int(rng.integers(2, 6))):
        cx = rng.uniform(0.3, 0.7)
        height = rng.uniform(0.35, 0.75)
        width = rng.uniform(0.08, 0.2)
        u = (base_y - yw) / height  # 0 at the base, 1 at the tip
        wid = width * np.sqrt(np.clip(1.0 - u, 0.0, 1.0))
        tongue = np.exp(-(((xw - cx) / np.maximum(wid, 1e-3)) ** 2)) * _smoothstep(u, -0.08, 0.05)
        tongue *= np.clip(1.0 - u, 0.0, 1.0) ** 0.5
        heat = np.maximum(heat, tongue.astype(np.float32))
    turb = value_noise(rng, (h, h), h / 12, 4)
    heat = heat * (0.65 + 0.6 * turb)
    alpha = np.clip((heat - 0.08) * rng.uniform(1.6, 2.6), 0.0, 1.0)
    # Colour ramp by temperature: dark red → red → orange → yellow → near white.
    t = np.clip(heat * 1.2, 0, 1)
    stops = np.array(
        [[0.35, 0.02, 0.0], [0.85, 0.12, 0.02], [1.0, 0.45, 0.05], [1.0, 0.8, 0.2], [1.0, 0.97, 0.8]],
        np.float32,
    )
    pos = t * (len(stops) - 1)
    i0 = np.clip(pos.astype(np.int32), 0, len(stops) - 2)
    f = (pos - i0)[..., None]
    fg = stops[i0] * (1 - f) + stops[i0 + 1] * f
    fg = cv2.resize(fg, (s, s), interpolation=cv2.INTER_LINEAR)
    alpha = cv2.resize(alpha, (s, s), interpolation=cv2.INTER_LINEAR)
    return fg.astype(np.float32), alpha


def _gen_smoke_cloud(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    h = s // 2
    n = value_noise(rng, (h, h), h / rng.uniform(3, 6), 6, 0.55)
    env_u8 = _zeros(h)
    for _ in range(int(rng.integers(1, 4))):
        c = rng.uniform(0.35, 0.65, 2) * h
        _fill_poly(
            env_u8,
            _blob(rng, c, rng.uniform(0.15, 0.3) * h, 0.4, rng.uniform(0.7, 1.8), rng.uniform(0, np.pi)),
        )
    env = cv2.GaussianBlur(_f32(env_u8), (0, 0), h * 0.08)
    density = env * (0.35 + n)
    cloud = rng.random() < 0.5  # clouds have dense opaque cores, smoke stays translucent
    gain = rng.uniform(1.5, 2.5) if cloud else rng.uniform(0.7, 1.2)
    alpha = np.clip((density - 0.25) * gain, 0.0, 1.0 if cloud else rng.uniform(0.5, 0.85))
    grey = rng.uniform(0.55, 0.95)
    tint = rng.normal(0, 0.03, 3)
    shade = (0.75 + 0.35 * value_noise(rng, (h, h), h / 8, 3))[..., None]
    fg = np.clip((grey + tint)[None, None] * shade * (1.05 - 0.25 * alpha[..., None]), 0, 1).astype(
        np.float32
    )
    return cv2.resize(fg, (s, s)), cv2.resize(alpha, (s, s))


def _gen_glass_ice(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    shape_u8 = _zeros(s)
    c = rng.uniform(0.42, 0.58, 2) * s
    if rng.random() < 0.5:  # glass vessel: mirror-symmetric profile
        half_h = rng.uniform(0.25, 0.38) * s
        ys = np.linspace(-half_h, half_h, 24)
        prof = (
            rng.uniform(0.06, 0.16)
            * s
            * (1 + 0.6 * np.sin(np.linspace(0, np.pi, 24) * rng.uniform(1, 2.5) + rng.uniform(0, np.pi)))
        )
        poly = np.concatenate(
            [np.stack([c[0] + prof, c[1] + ys], 1), np.stack([c[0] - prof, c[1] + ys], 1)[::-1]]
        )
    else:  # ice: faceted irregular polygon
        pts = c + rng.normal(0, 0.15 * s, (int(rng.integers(5, 10)), 2))
        poly = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    _fill_poly(shape_u8, poly)
    shape = _f32(shape_u8)
    rim_w = max(1, round(0.008 * s))
    inner = cv2.erode(shape, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)), iterations=rim_w)
    rim = np.clip(shape - inner, 0, 1)
    refr = value_noise(rng, (s, s), s / 10, 4)
    bands = np.abs(np.sin(refr * rng.uniform(8, 16)))  # caustic-like refraction bands
    alpha = shape * (rng.uniform(0.08, 0.22) + 0.2 * bands**4 + 0.1 * refr)
    # Highlights: a few bright specular streaks.
    hl_u8 = _zeros(s)
    for _ in range(int(rng.integers(2, 6))):
        p = c + rng.normal(0, 0.08 * s, 2)
        d = _dir(rng.uniform(0, np.pi)) * rng.uniform(0.04, 0.15) * s
        _polylines(hl_u8, [np.stack([p - d, p + d])], 1.0, int(rng.integers(2, 6)))
    hl = cv2.GaussianBlur(_f32(hl_u8), (0, 0), 1.5) * inner
    alpha = np.maximum(alpha, rim * rng.uniform(0.6, 0.9))
    alpha = np.clip(alpha + 0.6 * hl, 0, 1) * shape
    base = np.array([0.8, 0.9, 0.95]) + rng.normal(0, 0.05, 3)
    fg = _color_field(rng, s, np.clip(base, 0, 1), 0.15, s / 8)
    fg = np.clip(fg * (0.75 + 0.4 * bands[..., None]) + hl[..., None], 0, 1)
    fg = fg * (1 - 0.5 * rim[..., None])  # dark refracting rim
    return fg.astype(np.float32), alpha.astype(np.float32)


def _gen_water_drop(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    alpha = _zeros(s)
    light = np.clip(np.array([0.75, 0.85, 0.92]) + rng.normal(0, 0.05, 3), 0, 1)
    dark = light * rng.uniform(0.25, 0.55)
    fg = np.empty((s, s, 3), np.uint8)
    fg[:] = np.round(light * 255).astype(np.uint8)
    n = int(rng.integers(40, 160))
    radii = np.exp(rng.uniform(math.log(0.006 * s), math.log(0.05 * s), n))
    centers = rng.uniform(0.08, 0.92, (n, 2)) * s
    for (x, y), r in zip(centers, radii):
        # Rim (darker, more opaque: refraction of the surroundings), the clear body, then a highlight.
        _circle(alpha, (x, y), r, rng.uniform(0.6, 0.9))
        _circle(fg, (x, y), r, dark)
        _circle(alpha, (x, y), r * 0.8, rng.uniform(0.12, 0.35))
        _circle(fg, (x, y), r * 0.8, light)
        hp, hr = (x - 0.35 * r, y - 0.35 * r), max(0.18 * r, 0.7)
        _circle(alpha, hp, hr, 1.0)
        _circle(fg, hp, hr, (1.0, 1.0, 1.0))
    return _f32(fg), _f32(alpha)


def _gen_water_spray(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    src = np.array([rng.uniform(0.3, 0.7) * s, rng.uniform(0.75, 0.95) * s])
    ang = -np.pi / 2 + rng.normal(0, 0.4)
    spread = rng.uniform(0.2, 0.5)
    n = int(rng.integers(2500, 6000))
    dist = np.abs(rng.normal(0, 0.3, n)) * s
    theta = ang + rng.normal(0, spread, n) * (0.3 + dist / s)
    pts = src + np.stack([np.cos(theta), np.sin(theta)], 1) * dist[:, None]
    keep = (pts > 1).all(1) & (pts < s - 2).all(1)
    pts, theta = pts[keep], theta[keep]
    # Fine particles: splat sub-pixel droplets, then a tiny blur spreads them over 1–3 px.
    acc = np.zeros((s, s), np.float32)
    ij = pts.astype(np.int32)
    np.add.at(acc, (ij[:, 1], ij[:, 0]), rng.uniform(0.6, 2.5, len(ij)).astype(np.float32))
    acc = cv2.GaussianBlur(acc, (0, 0), 0.7)
    # Streaks of fast droplets along the flow direction.
    m = len(pts) // 8
    d = np.stack([np.cos(theta[:m]), np.sin(theta[:m])], 1) * rng.uniform(2, 10, (m, 1))
    streak = _zeros(s)
    _polylines(streak, np.stack([pts[:m] - d, pts[:m] + d], 1), 0.7)
    # A few larger drops.
    for x, y in pts[m : m + int(rng.integers(20, 80))]:
        _circle(streak, (x, y), rng.uniform(1.0, 3.5), 0.9)
    # Mist: a low-opacity cloud around the jet.
    mist = np.zeros((s // 4, s // 4), np.float32)
    q = np.clip((pts[::10] / 4).astype(np.int32), 0, s // 4 - 1)
    np.add.at(mist, (q[:, 1], q[:, 0]), 1.0)
    mist = cv2.GaussianBlur(mist, (0, 0), s / 40)
    mist = cv2.resize(mist / max(float(mist.max()), 1e-6), (s, s)) * rng.uniform(0.1, 0.3)
    alpha = 1 - (1 - np.clip(acc, 0, 1)) * (1 - _f32(streak)) * (1 - mist)
    fg = _color_field(
        rng, s, np.clip(np.array([0.85, 0.92, 0.97]) + rng.normal(0, 0.04, 3), 0, 1), 0.08, s / 6
    )
    return fg, alpha.astype(np.float32)


def _gen_net(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    alpha = _zeros(s)
    pitch = rng.uniform(0.03, 0.08) * s
    thick = int(rng.integers(1, 4))
    rot = _rot(rng.uniform(0, np.pi))
    sag = rng.uniform(0, 0.3) * pitch
    c = np.array([s / 2, s / 2])
    k = np.arange(-int(0.8 * s / pitch), int(0.8 * s / pitch) + 1)
    t = np.linspace(-0.8 * s, 0.8 * s, 64)
    ph = rng.uniform(0, 2 * np.pi)
    paths = []
    for j in (0, 1):
        for kk in k:
            off = kk * pitch + sag * np.sin(t / (3.1 * pitch) + ph + kk * 0.3)
            p = np.stack([t, off], 1) if j == 0 else np.stack([off, t], 1)
            paths.append(p @ rot.T + c)
    _polylines(alpha, paths, 1.0, thick)
    # Knots at the crossings.
    gx, gy = np.meshgrid(k * pitch, k * pitch)
    knots = np.stack([gx.ravel(), gy.ravel()], 1) @ rot.T + c
    knots = knots[(knots > 0).all(1) & (knots < s).all(1)]
    # Zero-length thick segments draw all knots in one call.
    _polylines(alpha, np.stack([knots, knots + 0.01], 1), 1.0, thick + 2)
    # The net covers a random region of the frame (cut edges of a larger net).
    env = _zeros(s)
    _fill_poly(
        env,
        _blob(
            rng,
            rng.uniform(0.4, 0.6, 2) * s,
            rng.uniform(0.3, 0.45) * s,
            0.3,
            rng.uniform(0.8, 1.3),
            rng.uniform(0, np.pi),
        ),
    )
    palette = [(0.95, 0.95, 0.92), (0.1, 0.5, 0.2), (0.95, 0.45, 0.1), (0.1, 0.1, 0.12), (0.2, 0.3, 0.8)]
    base = np.array(palette[int(rng.integers(len(palette)))]) * rng.uniform(0.8, 1.1)
    fg = _color_field(rng, s, np.clip(base, 0, 1), 0.2, s / 8)
    return fg, _f32(alpha) * _f32(env)


def _gen_spider_web(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    alpha = _zeros(s)
    c = rng.uniform(0.4, 0.6, 2) * s
    nr = int(rng.integers(12, 28))
    angs = np.sort(np.linspace(0, 2 * np.pi, nr, endpoint=False) + rng.normal(0, 0.08, nr))
    reach = rng.uniform(0.3, 0.48, nr) * s
    ends = c + np.stack([np.cos(angs), np.sin(angs)], 1) * reach[:, None]
    strength = rng.uniform(0.6, 1.0)
    # Capture spiral: straight segments between neighbouring radials, radius growing each turn.
    r0, r1 = rng.uniform(0.02, 0.05) * s, float(reach.min()) * rng.uniform(0.85, 1.0)
    pitch = rng.uniform(0.012, 0.03) * s
    idx = np.arange(int((r1 - r0) / pitch * nr))
    a = angs[idx % nr] + 2 * np.pi * (idx // nr)
    rr = (r0 + pitch * idx / nr) * (1 + 0.03 * np.sin(a * 3 + rng.uniform(0, 6)))
    spiral = c + np.stack([np.cos(a), np.sin(a)], 1) * rr[:, None]
    _polylines(alpha, [spiral], strength * rng.uniform(0.6, 0.9))
    _polylines(alpha, [np.stack([c, e]) for e in ends], strength)
    # Hub: dense silk in the centre; anchor threads: thicker, out towards the frame.
    _circle(alpha, c, r0 * 0.7)
    for e in ends[rng.choice(nr, size=min(nr, int(rng.integers(3, 6))), replace=False)]:
        _polylines(alpha, [np.stack([e, c + (e - c) * rng.uniform(1.6, 2.5)])], 1.0, 2)
    fg = _color_field(rng, s, np.clip(np.array([0.9, 0.9, 0.88]) + rng.normal(0, 0.03, 3), 0, 1), 0.08, s / 8)
    return fg, _f32(alpha)


def _gen_texture_holed(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    shape = _zeros(s)
    c = rng.uniform(0.45, 0.55, 2) * s
    _fill_poly(
        shape,
        _blob(
            rng,
            c,
            rng.uniform(0.3, 0.42) * s,
            rng.uniform(0.1, 0.3),
            rng.uniform(0.8, 1.25),
            rng.uniform(0, np.pi),
        ),
    )
    if rng.random() < 0.5:  # lace / sieve: a jittered hexagonal lattice of holes
        holes_u8 = _zeros(s)
        p = rng.uniform(0.03, 0.07) * s
        for i, y in enumerate(np.arange(0, s + p, p * 0.866)):
            for x in np.arange(0, s + p, p) + (p / 2 if i % 2 else 0):
                r = p * rng.uniform(0.22, 0.38)
                _ellipse(
                    holes_u8,
                    (x, y) + rng.normal(0, 0.06 * p, 2),
                    (r, r * rng.uniform(0.7, 1.0)),
                    rng.uniform(0, 180),
                )
        holes = _f32(holes_u8)
    else:  # sponge / cheese: thresholded noise gives irregular holes
        n = value_noise(rng, (s, s), rng.uniform(0.03, 0.07) * s, 3, 0.4)
        thr = rng.uniform(0.6, 0.7)
        holes = _smoothstep(n, thr, thr + 0.03)
    alpha = _f32(shape) * (1.0 - holes)
    fg = _color_field(rng, s, rng.uniform(0.2, 0.9, 3), 0.2, s / 16)
    return fg, alpha.astype(np.float32)


def _gen_texture_smooth(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    alpha = _zeros(s)
    c = rng.uniform(0.42, 0.58, 2) * s
    _fill_poly(
        alpha,
        _blob(
            rng,
            c,
            rng.uniform(0.22, 0.36) * s,
            rng.uniform(0.1, 0.5),
            rng.uniform(0.7, 1.4),
            rng.uniform(0, np.pi),
            harmonics=4,
        ),
    )
    a = cv2.GaussianBlur(_f32(alpha), (0, 0), rng.uniform(0.5, 1.2))  # slightly soft material edge
    fg = _color_field(rng, s, rng.uniform(0.15, 0.9, 3), 0.25, s / rng.uniform(6, 20))
    weave = value_noise(rng, (s, s), (3.0, 12.0) if rng.random() < 0.5 else (12.0, 3.0), 2)
    fg = np.clip(fg * (0.85 + 0.3 * weave[..., None]), 0, 1)
    return fg.astype(np.float32), a


def _gen_plastic_bag(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    shape_u8 = _zeros(s)
    c = rng.uniform(0.45, 0.55, 2) * s
    w, h = rng.uniform(0.2, 0.3) * s, rng.uniform(0.22, 0.32) * s
    body = c + np.array([[-w, -h * 0.6], [w, -h * 0.6], [w * 1.05, h], [-w * 1.05, h]])
    body += rng.normal(0, 0.02 * s, body.shape)
    _fill_poly(shape_u8, body)
    # Handles: two thick arcs above the body.
    for sx in (-1, 1):
        _ellipse(
            shape_u8,
            (c[0] + sx * w * 0.55, c[1] - h * 0.6),
            (w * 0.3, h * 0.45),
            0,
            1.0,
            max(2, int(0.03 * s)),
            180,
            360,
        )
    shape = _f32(shape_u8)
    # Wrinkles: ridged, stretched noise (creases are where the film folds and looks denser).
    n = value_noise(rng, (s, s), (s / 6, s / 18) if rng.random() < 0.5 else (s / 18, s / 6), 4)
    ridge = (1.0 - np.abs(2 * n - 1)) ** rng.uniform(3, 6)
    inner = cv2.erode(
        shape, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)), iterations=max(1, s // 150)
    )
    rim = np.clip(shape - inner, 0, 1)
    alpha = shape * np.clip(rng.uniform(0.2, 0.5) + 0.45 * ridge, 0, 0.95)
    alpha = np.maximum(alpha, rim * 0.9)
    palette = [(0.95, 0.95, 0.95), (0.9, 0.85, 0.6), (0.6, 0.75, 0.95), (0.3, 0.3, 0.32), (0.95, 0.6, 0.6)]
    fg = _color_field(rng, s, palette[int(rng.integers(len(palette)))], 0.1, s / 8)
    fg = np.clip(fg * (0.8 + 0.4 * ridge[..., None]), 0, 1)
    return fg.astype(np.float32), alpha.astype(np.float32)


def _leaf_outline(
    center: Array, length: float, width: float, angle: float, serr: float, pointy: float
) -> Array:
    t = np.linspace(0, 1, 60)
    half = width * np.sin(np.pi * t) ** pointy * (1 + serr * np.abs(np.sin(t * 40)))
    upper = np.stack([t * length, half], 1)
    lower = np.stack([t * length, -half], 1)[::-1]
    return np.concatenate([upper, lower]) @ _rot(angle).T + center


def _gen_plant_leaf(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    alpha = _zeros(s)
    veins = _zeros(s)
    base = np.array([rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.7), rng.uniform(0.05, 0.25)])
    fg = _color_field(rng, s, base, 0.25, s / 10)
    stem0 = np.array([rng.uniform(0.35, 0.65) * s, rng.uniform(0.85, 0.95) * s])
    nl = int(rng.integers(1, 6))
    stem_top = stem0 + np.array([rng.normal(0, 0.08), -rng.uniform(0.35, 0.5)]) * s
    _polylines(alpha, [np.stack([stem0, stem_top])], 1.0, max(1, int(0.008 * s)))
    serr = rng.uniform(0.02, 0.1) if rng.random() < 0.5 else 0.0
    for i in range(nl):
        f = (i + 1) / (nl + 1) if nl > 1 else 1.0
        at = stem0 + (stem_top - stem0) * f
        ang = -np.pi / 2 + (rng.uniform(0.5, 1.2) * (-1) ** i if nl > 1 else rng.normal(0, 0.3))
        length = rng.uniform(0.22, 0.38) * s * ((1.2 - 0.4 * f) if nl > 1 else 1.3)
        width = length * rng.uniform(0.18, 0.35)
        _fill_poly(alpha, _leaf_outline(at, length, width, ang, serr, rng.uniform(0.6, 1.1)))
        d = _dir(ang)
        nrm = np.array([-d[1], d[0]])
        paths = [np.stack([at, at + d * length * 0.95])]
        for tt in np.linspace(0.15, 0.8, 6):
            p = at + d * length * tt
            for sg in (-1, 1):
                paths.append(np.stack([p, p + (d * 0.5 + nrm * sg) * width * 0.8]))
        _polylines(veins, paths)
    fg = np.clip(fg + 0.2 * _f32(veins)[..., None], 0, 1)
    return fg.astype(np.float32), _f32(alpha)


def _gen_plant_tree(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    alpha = _zeros(s)
    leaves = rng.random() < 0.5
    depth_max = int(rng.integers(6, 9))
    root = np.array([rng.uniform(0.4, 0.6) * s, 0.97 * s])
    stack = [
        (root, -np.pi / 2 + rng.normal(0, 0.1), rng.uniform(0.16, 0.24) * s, rng.uniform(0.025, 0.04) * s, 0)
    ]
    tips = []
    # Branch segments grouped by (thickness, opacity) so that they can be drawn in few cv2 calls.
    groups: dict[tuple[int, float], list[Array]] = {}
    while stack:
        p, ang, length, thick, depth = stack.pop()
        pts = [p]  # slightly curved branch: three sub-segments with small angle changes
        a = ang
        for _ in range(3):
            a += rng.normal(0, 0.12)
            pts.append(pts[-1] + _dir(a) * length / 3)
        op = min(1.0, float(thick)) ** 0.7  # sub-pixel twigs are partially transparent
        groups.setdefault((max(1, round(thick)), round(op, 1)), []).append(np.array(pts))
        if depth >= depth_max or thick < 0.35:
            tips.append(pts[-1])
            continue
        for _ in range(int(rng.integers(2, 4))):
            stack.append(
                (
                    pts[-1],
                    a + rng.normal(0, 0.45),
                    length * rng.uniform(0.6, 0.8),
                    thick * rng.uniform(0.55, 0.72),
                    depth + 1,
                )
            )
    for (t_px, op), paths in sorted(groups.items(), key=lambda kv: (kv[0][1], -kv[0][0])):
        _polylines(alpha, paths, op, t_px)
    if leaves and tips:
        tips_a = np.array(tips)
        n = min(len(tips_a) * 3, 1200)
        centers = tips_a[rng.integers(0, len(tips_a), n)] + rng.normal(0, 0.012 * s, (n, 2))
        # Leaves as short thick dabs: a few polyline calls instead of one ellipse per leaf.
        d = np.stack([np.cos(th := rng.uniform(0, np.pi, n)), np.sin(th)], 1) * rng.uniform(
            1, 0.012 * s + 2, (n, 1)
        )
        segs = np.stack([centers - d, centers + d], 1)
        for chunk, w in zip(np.array_split(np.arange(n), 3), (2, 3, max(3, int(0.008 * s)))):
            _polylines(alpha, segs[chunk], 1.0, w)
    bark = np.array([rng.uniform(0.2, 0.4), rng.uniform(0.15, 0.3), rng.uniform(0.08, 0.2)])
    fg = _color_field(rng, s, bark, 0.25, s / 16)
    if leaves:
        green = _color_field(
            rng, s, (rng.uniform(0.1, 0.3), rng.uniform(0.35, 0.6), rng.uniform(0.05, 0.2)), 0.3, s / 20
        )
        mix = _smoothstep(value_noise(rng, (s, s), s / 30, 2), 0.3, 0.5)[..., None]
        fg = fg * (1 - mix) + green * mix
    return fg.astype(np.float32), _f32(alpha)


def _gen_plant_flower(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    alpha = _zeros(s)
    fg = _zeros(s, 3)
    palette = [
        (0.95, 0.3, 0.5),
        (0.98, 0.85, 0.15),
        (0.97, 0.97, 0.95),
        (0.85, 0.1, 0.1),
        (0.6, 0.3, 0.85),
        (1.0, 0.55, 0.1),
    ]
    heads = []
    for _ in range(int(rng.integers(1, 4))):
        c = rng.uniform(0.3, 0.7, 2) * s
        R = rng.uniform(0.1, 0.2) * s
        heads.append((c, R))
        bottom = np.array([c[0] + rng.normal(0, 0.05 * s), s * 1.02])
        mid = (c + bottom) / 2 + rng.normal(0, 0.04 * s, 2)
        stem = [np.stack([c, mid, bottom])]
        w = max(2, int(0.012 * s))
        _polylines(alpha, stem, 1.0, w)
        _polylines(fg, stem, (0.15, 0.5, 0.15), w)
    for c, R in heads:  # heads over all stems
        npet = int(rng.integers(5, 17))
        pw = rng.uniform(0.2, 0.45) * R * (8 / npet) ** 0.5
        a0 = rng.uniform(0, 2 * np.pi)
        col = np.clip(np.array(palette[int(rng.integers(len(palette)))]) + rng.normal(0, 0.05, 3), 0, 1)
        op = 1.0 if rng.random() < 0.6 else rng.uniform(0.8, 0.95)  # some petals are thin and translucent
        for k in range(npet):
            a = a0 + 2 * np.pi * k / npet + rng.normal(0, 0.05)
            pc = c + _dir(a) * R * 0.55
            axes = (R * 0.5 * rng.uniform(0.85, 1.1), pw)
            _ellipse(alpha, pc, axes, math.degrees(a), op)
            _ellipse(fg, pc, axes, math.degrees(a), col * op * rng.uniform(0.85, 1.0))
        ctr = np.array([0.9, 0.7, 0.1]) if rng.random() < 0.5 else np.array([0.35, 0.2, 0.08])
        rc = R * rng.uniform(0.15, 0.3)
        _circle(alpha, c, rc)
        _circle(fg, c, rc, ctr)
    a = _f32(alpha)
    # fg was drawn with premultiplied colours (col·op over black): unpremultiply.
    fgf = np.where(a[..., None] > 1e-3, _f32(fg) / np.maximum(a[..., None], 1e-3), 0.5)
    tex = value_noise(rng, (s, s), s / 40, 2)[..., None]
    return np.clip(fgf * (0.9 + 0.2 * tex), 0, 1).astype(np.float32), a


def _gen_insect(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    body = _zeros(s)
    wing_u8 = _zeros(s)
    vein_u8 = _zeros(s)
    c = rng.uniform(0.45, 0.55, 2) * s
    ang = rng.uniform(0, 2 * np.pi)
    R = _rot(ang)
    L = rng.uniform(0.3, 0.42) * s  # body length

    def at(u: float, v: float) -> Array:  # body frame (units of L) → image
        return c + R @ np.array([u * L, v * L])

    # Wings (a translucent layer): ellipses with a few veins.
    nwing = 2 if rng.random() < 0.5 else 4
    veins = []
    for k in range(nwing):
        side = 1 if k % 2 == 0 else -1
        root = at(0.05 if k < 2 else -0.02, side * 0.04)
        wa = ang + np.pi + side * rng.uniform(1.9, 2.6) * (1 if k < 2 else 0.8)
        wl = L * rng.uniform(0.5, 0.75)
        d = _dir(wa)
        _ellipse(wing_u8, root + d * wl / 2, (wl / 2, wl * rng.uniform(0.14, 0.22)), math.degrees(wa))
        nrm = np.array([-d[1], d[0]])
        for off in np.linspace(-0.1, 0.1, 4):
            veins.append(
                np.stack(
                    [root, root + d * wl * 0.5 + nrm * off * wl, root + d * wl * 0.92 + nrm * off * wl * 0.4]
                )
            )
    _polylines(vein_u8, veins, 0.8)
    wing_a = _f32(wing_u8)
    wing = np.maximum(wing_a * rng.uniform(0.15, 0.45), _f32(vein_u8) * wing_a)
    # Body: abdomen, thorax, head.
    for u, ru, rv in ((-0.28, 0.3, 0.12), (0.05, 0.11, 0.09), (0.2, 0.07, 0.07)):
        _ellipse(body, at(u, 0), (ru * L, rv * L), math.degrees(ang))
    # Six legs with two joints, two long antennae.
    legs = []
    for k in range(3):
        for side in (-1, 1):
            p0 = at(0.0 + 0.06 * (k - 1), side * 0.06)
            a1 = ang + side * (np.pi / 2 - (k - 1) * 0.6) + rng.normal(0, 0.15)
            p1 = p0 + _dir(a1) * L * rng.uniform(0.2, 0.3)
            a2 = a1 - side * (k - 1) * rng.uniform(0.3, 0.8)
            p2 = p1 + _dir(a2) * L * rng.uniform(0.25, 0.4)
            legs.append(np.stack([p0, p1, p2]))
    _polylines(body, legs, 1.0, max(1, int(0.005 * s)))
    head = at(0.25, 0)
    th = np.array([ang - 0.35, ang + 0.35]) + rng.normal(0, 0.1, 2)
    _polylines(
        body,
        _strands(rng, np.array([head, head]), th, np.full(2, L * rng.uniform(0.4, 0.8)), 12, 0.03, 0.03),
        0.9,
    )
    b = _f32(body)
    alpha = 1 - (1 - b) * (1 - wing)
    body_col = np.clip(
        np.array(
            [(0.12, 0.08, 0.05), (0.1, 0.35, 0.12), (0.55, 0.35, 0.05), (0.05, 0.05, 0.08)][
                int(rng.integers(4))
            ]
        )
        + rng.normal(0, 0.03, 3),
        0,
        1,
    )
    fg_body = _color_field(rng, s, body_col, 0.4, s / 30)
    wing_col = _color_field(rng, s, (0.85, 0.88, 0.9), 0.1, s / 10, chroma=0.12)
    wb = (b / np.maximum(alpha, 1e-3))[..., None]
    fg = fg_body * wb + wing_col * (1 - wb)
    return np.clip(fg, 0, 1).astype(np.float32), alpha.astype(np.float32)


def _hair_like(
    rng: np.random.Generator,
    s: int,
    *,
    n_strands: int,
    length: tuple[float, float],
    curl: float,
    wiggle: float,
    opacity: tuple[float, float],
    thickness: int,
    body_r: tuple[float, float],
    tangent: float,
    fringe_blur: float,
    palette: Sequence[Sequence[float]],
    steps: int = 16,
    flyaway: int = 0,
) -> tuple[Array, Array]:
    """Shared engine of hair_easy / hair_hard / fur: an opaque body with strands growing outwards."""
    body = _zeros(s)
    alpha = _zeros(s)  # strand layer, kept apart so faint strands never thin out the opaque body
    c = np.array([rng.uniform(0.4, 0.6) * s, rng.uniform(0.45, 0.6) * s])
    outline = _blob(
        rng,
        c,
        rng.uniform(*body_r) * s,
        rng.uniform(0.1, 0.3),
        rng.uniform(0.75, 1.25),
        rng.uniform(0, np.pi),
        n=256,
    )
    _fill_poly(body, outline)
    nrm = _outward_normals(outline)
    idx = rng.integers(0, len(outline), n_strands)
    # Roots lie a little inside the body so that strands emerge from it.
    starts = outline[idx] - nrm[idx] * rng.uniform(0.0, 0.03 * s, (n_strands, 1))
    base_ang = np.arctan2(nrm[idx, 1], nrm[idx, 0])
    # A shared combing direction (tangent bias) makes the strands flow like groomed hair.
    theta = base_ang + tangent * rng.choice([-1, 1]) + rng.normal(0, 0.35, n_strands)
    lens = np.exp(rng.uniform(math.log(length[0] * s), math.log(length[1] * s), n_strands))
    paths = _strands(rng, starts, theta, lens, steps, curl, wiggle)
    ops = rng.uniform(*opacity, n_strands)
    order = np.argsort(ops)  # faint strands first: AA "over" blending keeps the denser ones on top
    for chunk in np.array_split(order, 4):
        if len(chunk):
            _polylines(alpha, paths[chunk], float(ops[chunk].mean()), thickness)
    if flyaway:
        fi = rng.integers(0, len(outline), flyaway)
        fth = np.arctan2(nrm[fi, 1], nrm[fi, 0]) + rng.normal(0, 0.6, flyaway)
        fp = _strands(
            rng,
            outline[fi],
            fth,
            rng.uniform(length[1] * s, 2 * length[1] * s, flyaway),
            steps * 2,
            curl * 2,
            wiggle,
        )
        _polylines(alpha, fp, opacity[0])
    a = 1.0 - (1.0 - _f32(body)) * (1.0 - _f32(alpha))
    if fringe_blur > 0:
        a = cv2.GaussianBlur(a, (0, 0), fringe_blur)
    base = np.asarray(palette[int(rng.integers(len(palette)))], np.float32) * rng.uniform(0.85, 1.15)
    fg = _color_field(rng, s, np.clip(base, 0, 1), 0.25, s / 8)
    # Streaky lightness variation along the combing direction imitates strand highlights.
    streak = value_noise(rng, (s, s), (s / 40, s / 6) if rng.random() < 0.5 else (s / 6, s / 40), 2)
    fg = np.clip(fg * (0.7 + 0.6 * streak[..., None]), 0, 1)
    return fg.astype(np.float32), a


_HAIR_PALETTE = [
    (0.08, 0.06, 0.05),
    (0.35, 0.2, 0.1),
    (0.6, 0.42, 0.22),
    (0.9, 0.78, 0.5),
    (0.6, 0.25, 0.1),
    (0.7, 0.7, 0.7),
]
_FUR_PALETTE = [(0.5, 0.35, 0.2), (0.85, 0.8, 0.7), (0.25, 0.2, 0.18), (0.8, 0.5, 0.2), (0.55, 0.55, 0.55)]


def _gen_hair_easy(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    return _hair_like(
        rng,
        s,
        n_strands=int(rng.integers(250, 500)),
        length=(0.03, 0.1),
        curl=0.02,
        wiggle=0.02,
        opacity=(0.5, 1.0),
        thickness=2,
        body_r=(0.22, 0.3),
        tangent=0.9,
        fringe_blur=0.8,
        palette=_HAIR_PALETTE,
        steps=10,
    )


def _gen_hair_hard(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    return _hair_like(
        rng,
        s,
        n_strands=int(rng.integers(1500, 2600)),
        length=(0.05, 0.22),
        curl=rng.uniform(0.01, 0.06),
        wiggle=0.04,
        opacity=(0.25, 0.8),
        thickness=1,
        body_r=(0.15, 0.24),
        tangent=rng.uniform(0.2, 0.8),
        fringe_blur=0.0,
        palette=_HAIR_PALETTE,
        steps=18,
        flyaway=int(rng.integers(30, 120)),
    )


def _gen_fur(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    return _hair_like(
        rng,
        s,
        n_strands=int(rng.integers(2500, 4000)),
        length=(0.015, 0.05),
        curl=0.05,
        wiggle=0.05,
        opacity=(0.4, 0.9),
        thickness=1,
        body_r=(0.2, 0.3),
        tangent=rng.uniform(0.0, 0.5),
        fringe_blur=0.0,
        palette=_FUR_PALETTE,
        steps=6,
    )


GENERATORS: dict[str, GenFn] = {
    "defocus": _gen_defocus,
    "fire": _gen_fire,
    "fur": _gen_fur,
    "glass_ice": _gen_glass_ice,
    "hair_easy": _gen_hair_easy,
    "hair_hard": _gen_hair_hard,
    "insect": _gen_insect,
    "motion": _gen_motion,
    "net": _gen_net,
    "plant_flower": _gen_plant_flower,
    "plant_leaf": _gen_plant_leaf,
    "plant_tree": _gen_plant_tree,
    "plastic_bag": _gen_plastic_bag,
    "sharp": _gen_sharp,
    "smoke_cloud": _gen_smoke_cloud,
    "spider_web": _gen_spider_web,
    "texture_holed": _gen_texture_holed,
    "texture_smooth": _gen_texture_smooth,
    "water_drop": _gen_water_drop,
    "water_spray": _gen_water_spray,
}
assert tuple(sorted(GENERATORS)) == tuple(sorted(SIMD_CLASSES))


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def generate(cls: str | int, rng_or_seed: np.random.Generator | int, size: int = 512) -> SyntheticSample:
    """Generate one foreground of a class.

    Args:
        cls: class name (``backend.classes.SIMD_CLASSES``) or its index.
        rng_or_seed: a numpy ``Generator`` (consumed), or an int seed (then the stream is
            ``sample_rng(seed, class_id, 0)``, so different classes never share random numbers).
        size: output side length in pixels (square); features scale with it. At least 64.

    Returns:
        ``SyntheticSample`` with ``fg`` size×size×3 uint8, ``alpha`` size×size uint8 and ``class_id``.
    """
    cid = class_index(cls)
    if size < 64:
        raise ValueError(f"size must be >= 64, got {size}")
    rng = (
        rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else sample_rng(int(rng_or_seed), cid, 0)
    )
    fg, alpha = GENERATORS[SIMD_CLASSES[cid]](rng, int(size))
    fg8 = np.clip(np.rint(fg * 255.0), 0, 255).astype(np.uint8)
    a8 = np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)
    return SyntheticSample(np.ascontiguousarray(fg8), np.ascontiguousarray(a8), cid)


def generate_indexed(
    cls: str | int, seed: int, index: int, size: int = 512, stream: int = STREAM_TRAIN
) -> SyntheticSample:
    """``generate`` for sample ``index`` of the (seed, class, stream) sequence."""
    cid = class_index(cls)
    return generate(cid, sample_rng(seed, cid, index, stream), size)


def test_trimap(alpha: Array, iterations: int | None = None) -> Array:
    """The SIMD test-set trimap: 3×3 elliptical kernel, dilate (α>0) and erode (α==255).

    SIM's ``generate_testset.py`` uses 5 iterations on images whose short side is at least 800 px. To keep
    the unknown band the same *fraction* of the image for smaller synthetic images, the default number of
    iterations is ``max(1, round(5 * min(H, W) / 800))`` (3 at 512², 5 at 800²).

    Args:
        alpha: H×W uint8 alpha.
        iterations: override the size-scaled default.

    Returns:
        H×W uint8 trimap with values {0, 128, 255}.
    """
    if iterations is None:
        iterations = max(1, round(5 * min(alpha.shape[:2]) / 800))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    fg = cv2.erode((alpha >= 255).astype(np.uint8), k, iterations=iterations)
    unknown = cv2.dilate((alpha > 0).astype(np.uint8), k, iterations=iterations)
    tri = np.where(unknown > 0, 128, 0).astype(np.uint8)
    tri[fg > 0] = 255
    return tri


test_trimap.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


def _write_png(path: Path, img: Array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def write_dataset(
    out_dir: str | Path,
    per_class: int,
    size: int = 512,
    seed: int = 0,
    layout: str = "train",
    backgrounds: object = None,
    classes: Sequence[str] | None = None,
    bg_per_fg: int = 1,
    progress: bool = False,
) -> dict[str, int]:
    """Write a procedural dataset to disk.

    Layouts:
        * ``"train"``: the SIM class layout ``<out>/<class>/fg/<class>_<i>.png`` and ``<class>/alpha/...``
          (RGB and 8-bit grey PNGs), readable by ``CompositionDataset``.
        * ``"test"``: the SIMD evaluation layout ``<out>/<class>/{merged,trimap,alpha}/<class>_<i>_<j>.png``:
          composited on backgrounds as SIM's test generator does (``fg·α + bg·(1−α)`` truncated to uint8),
          trimap from :func:`test_trimap`. The test set draws from its own random stream
          (``STREAM_TEST``), so it never overlaps a training set made with the same seed.

    Args:
        out_dir: root folder (created).
        per_class: foregrounds per class.
        size: image side length.
        seed: base seed.
        layout: ``"train"`` or ``"test"``.
        backgrounds: for ``"test"``: None (generated backgrounds only), a folder / list of folders or image
            paths, or a ``trainer.data.backgrounds.BackgroundSource``.
        classes: subset of class names (default: all 20).
        bg_per_fg: backgrounds per foreground for ``"test"`` (SIMD uses 10).
        progress: print one line per class.

    Returns:
        Mapping class name → number of images written.
    """
    if layout not in ("train", "test"):
        raise ValueError(f"layout must be 'train' or 'test', got {layout!r}")
    out = Path(out_dir)
    names = list(classes) if classes is not None else list(SIMD_CLASSES)
    stream = STREAM_TRAIN if layout == "train" else STREAM_TEST
    bgsrc = None
    if layout == "test":
        from trainer.data.backgrounds import BackgroundSource

        bgsrc = backgrounds if isinstance(backgrounds, BackgroundSource) else BackgroundSource(backgrounds)
    counts: dict[str, int] = {}
    for name in names:
        cid = class_index(name)
        n = 0
        for i in range(per_class):
            smp = generate_indexed(cid, seed, i, size, stream)
            stem = f"{name}_{i:05d}"
            if layout == "train":
                _write_png(out / name / "fg" / f"{stem}.png", smp.fg)
                _write_png(out / name / "alpha" / f"{stem}.png", smp.alpha)
                n += 1
                continue
            tri = test_trimap(smp.alpha)
            for j in range(bg_per_fg):
                brng = np.random.default_rng([STREAM_TEST, int(seed), cid, i, j, 7])
                bg = bgsrc.sample(brng, size, size)  # type: ignore[union-attr]
                a = smp.alpha.astype(np.float32)[..., None] / 255.0
                merged = smp.fg.astype(np.float32) * a + bg * 255.0 * (1.0 - a)
                merged8 = np.clip(merged, 0, 255).astype(np.uint8)  # truncation, as the SIMD generator
                _write_png(out / name / "merged" / f"{stem}_{j:02d}.png", merged8)
                _write_png(out / name / "trimap" / f"{stem}_{j:02d}.png", tri)
                _write_png(out / name / "alpha" / f"{stem}_{j:02d}.png", smp.alpha)
                n += 1
        counts[name] = n
        if progress:
            print(f"{name}: {n} images", flush=True)
    return counts


def _checker(h: int, w: int, cell: int = 8) -> Array:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.where(((yy // cell) + (xx // cell)) % 2 == 0, 0.8, 0.55).astype(np.float32)


def contact_sheet(
    path: str | Path,
    per_class: int = 2,
    seed: int = 0,
    size: int = 256,
    thumb: int = 128,
    columns: int = 4,
    palette: bool = True,
) -> Path:
    """Write one labelled PNG showing ``per_class`` samples of every class.

    Each sample is shown twice: composited over a checkerboard (colour and transparency) and as its alpha.

    Args:
        path: output PNG path.
        per_class: samples per class.
        seed: generator seed (training stream).
        size: generation size (features scale with it).
        thumb: side of each thumbnail.
        columns: classes per row.
        palette: store as a 256-colour palette PNG (about 1/3 of the size; fine for a preview).

    Returns:
        The path written.
    """
    label_h = 18
    cell_w = per_class * 2 * thumb
    rows = math.ceil(len(SIMD_CLASSES) / columns)
    sheet = np.full((rows * (thumb + label_h), columns * cell_w + (columns - 1) * 6, 3), 255, np.uint8)
    checker = _checker(thumb, thumb)[..., None]
    for k, name in enumerate(SIMD_CLASSES):
        r, cidx = divmod(k, columns)
        y0, x0 = r * (thumb + label_h), cidx * (cell_w + 6)
        cv2.putText(
            sheet,
            f"{k}: {name}",
            (x0 + 3, y0 + 13),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        for i in range(per_class):
            smp = generate_indexed(name, seed, i, size)
            fg = cv2.resize(smp.fg, (thumb, thumb), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
            a = (
                cv2.resize(smp.alpha, (thumb, thumb), interpolation=cv2.INTER_AREA).astype(np.float32)[
                    ..., None
                ]
                / 255
            )
            comp = fg * a + checker * (1 - a)
            xs = x0 + i * 2 * thumb
            sheet[y0 + label_h : y0 + label_h + thumb, xs : xs + thumb] = np.clip(comp * 255 + 0.5, 0, 255)
            sheet[y0 + label_h : y0 + label_h + thumb, xs + thumb : xs + 2 * thumb] = np.clip(
                a * 255 + 0.5, 0, 255
            )
    out = Path(path)
    if palette:
        from PIL import Image

        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)
    else:
        _write_png(out, sheet)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m trainer.data.synthetic {train,test,sheet} OUT [options]``."""
    ap = argparse.ArgumentParser(prog="python -m trainer.data.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument(
        "what", choices=["train", "test", "sheet"], help="training layout, test layout or contact sheet"
    )
    ap.add_argument("out", help="output folder (or PNG path for 'sheet')")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", default=None, help="comma-separated subset of class names")
    ap.add_argument("--backgrounds", action="append", default=None, help="background folder (repeatable)")
    ap.add_argument("--bg-per-fg", type=int, default=1)
    args = ap.parse_args(argv)
    if args.what == "sheet":
        contact_sheet(args.out, per_class=min(args.per_class, 4), seed=args.seed)
        return 0
    classes = args.classes.split(",") if args.classes else None
    write_dataset(
        args.out,
        args.per_class,
        args.size,
        args.seed,
        args.what,
        args.backgrounds,
        classes,
        args.bg_per_fg,
        progress=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
