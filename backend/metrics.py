"""Matting metrics SAD, MSE, Grad and Conn, as the DIM MATLAB evaluation code computes them.

Reference: the official Deep Image Matting evaluation code (Ning Xu, 2018; the copy shipped in
GCA-Matting ``DIM_evaluation_code/``), summarised in ``docs/serving-and-metrics.md`` §5 and
``docs/sim-reference.md`` §6 of the shared reference docs. The points where Python ports usually
go wrong, and what this module does instead:

* Only pixels whose trimap value is exactly 128 count (``trimap == 128``; a 127 band counts as
  known and silently drops out, as in the official code).
* Alphas are in [0, 1]: uint8 / 255, uint16 / 65535, floats as given.
* Grad rescales *each* matte with ``mat2gray`` (min-max over the whole image), not ``/255``;
  the 9x9 Gaussian-derivative kernel is normalised to unit L2 norm; borders are replicated.
* Conn takes the largest 4-connected *foreground* component (label 0, the below-threshold
  region, is never a candidate). Comparisons run in float32, like MATLAB's ``single``, so the
  8-bit values 51, 102, 153, 204 count as >= 0.2, 0.4, 0.6, 0.8. Ties between equally large
  components go to the first one in column-major order, as MATLAB's ``bwconncomp`` numbers them.
* Empty component (no pixel has both mattes >= t at some threshold t, e.g. a GT that never
  reaches 1.0): we follow the guarded GCA copy of the official code -- Omega is empty, so every
  not-yet-assigned pixel gets the level of the previous threshold. (The unguarded original
  crashes; the GFM port skips the threshold instead, which gives different numbers.)

Units. The individual functions return the *raw* DIM quantities (sums over the unknown region,
MSE as the mean over the unknown region). :func:`compute_metrics` returns reporting units, the
ones papers print: ``sad`` = SAD / 1000, ``mse`` = MSE x 1e3 (MSE is divided by the number of
unknown pixels, as ``compute_mse_loss.m`` does), ``grad`` = Grad / 1000, ``conn`` = Conn / 1000.
When the trimap has no unknown pixel every metric is 0.0 (the MATLAB MSE would be 0/0 = NaN;
a NaN would poison every mean it enters).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "METRIC_KEYS",
    "REPORT_SCALE",
    "MetricAccumulator",
    "aggregate_metrics",
    "compute_metrics",
    "connectivity_error",
    "gauss_gradient",
    "gauss_gradient_kernel",
    "gradient_error",
    "mse_error",
    "sad_error",
    "to_unit_alpha",
    "unknown_mask",
]

#: Metric names, in the order tables print them.
METRIC_KEYS: tuple[str, ...] = ("sad", "mse", "grad", "conn")

#: Factor from the raw DIM value to the reporting unit (SAD/1000, MSE x 1e3, Grad/1000, Conn/1000).
REPORT_SCALE: dict[str, float] = {"sad": 1e-3, "mse": 1e3, "grad": 1e-3, "conn": 1e-3}

UNKNOWN_VALUE = 128  # exact trimap value of the unknown region (DIM code: trimap == 128)

# Floats may overshoot [0, 1] by rounding noise (e.g. a sigmoid computed in float16); more than this
# is a caller bug and raises.
_RANGE_TOL = 1e-6


# --------------------------------------------------------------------------------------------------
# input normalisation


def _as_2d(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D H x W array (or H x W x 1), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return arr


def to_unit_alpha(alpha: Any, name: str = "alpha", dtype: Any = np.float64) -> np.ndarray:
    """Convert an alpha matte to floats in [0, 1].

    Args:
        alpha: H x W (or H x W x 1) array; uint8 is divided by 255, uint16 by 65535, float
            arrays are taken as already in [0, 1] (overshoot up to 1e-6 is clipped).
        name: name used in error messages.
        dtype: output float dtype. For uint8 / uint16 the division runs in this dtype, so
            ``np.float32`` reproduces MATLAB's ``single(x) / 255`` bit for bit.

    Returns:
        H x W array of ``dtype`` in [0, 1].

    Raises:
        ValueError: wrong shape, unsupported dtype (bool, signed/other integers), NaN/inf, or
            float values outside [0, 1].
    """
    arr = _as_2d(alpha, name)
    if arr.dtype == np.uint8:
        return arr.astype(dtype) / dtype(255.0)
    if arr.dtype == np.uint16:
        return arr.astype(dtype) / dtype(65535.0)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"{name} has dtype {arr.dtype}; expected uint8 (0..255), uint16 (0..65535) or float in [0, 1]"
        )
    out = arr.astype(dtype)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(out.min()), float(out.max())
    if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
        raise ValueError(f"{name} must lie in [0, 1] for float input, got range [{lo:.6g}, {hi:.6g}]")
    return np.clip(out, 0.0, 1.0, out=out)


def unknown_mask(trimap: Any) -> np.ndarray:
    """Boolean H x W mask of the unknown region: exactly ``trimap == 128`` (DIM code).

    Args:
        trimap: H x W (or H x W x 1) array of raw 8-bit trimap values (any integer dtype, or a
            float array holding integral values such as 128.0).

    Raises:
        ValueError: wrong shape, or a float trimap with non-integral values (a trimap scaled to
            [0, 1] would otherwise silently have no unknown pixel).
    """
    tri = _as_2d(trimap, "trimap")
    if np.issubdtype(tri.dtype, np.floating):
        if not np.all(np.isfinite(tri)) or not np.all(tri == np.round(tri)):
            raise ValueError(
                "trimap must hold raw 8-bit values (0 / 128 / 255); got non-integral floats "
                "(a trimap scaled to [0, 1] must be multiplied back by 255)"
            )
    elif not (np.issubdtype(tri.dtype, np.integer) or tri.dtype == np.bool_):
        raise ValueError(f"trimap has unsupported dtype {tri.dtype}")
    return tri == UNKNOWN_VALUE


def _prepare(pred: Any, gt: Any, trimap: Any, dtype: Any = np.float64):
    p = to_unit_alpha(pred, "pred", dtype)
    g = to_unit_alpha(gt, "gt", dtype)
    u = unknown_mask(trimap)
    if p.shape != g.shape or p.shape != u.shape:
        raise ValueError(f"shape mismatch: pred {p.shape}, gt {g.shape}, trimap {u.shape} must be equal")
    return p, g, u


# --------------------------------------------------------------------------------------------------
# SAD / MSE


def sad_error(pred: Any, gt: Any, trimap: Any) -> float:
    """Raw SAD: sum over the unknown region of ``|pred - gt|`` (alphas in [0, 1]).

    Args:
        pred: H x W predicted alpha (uint8, uint16 or float in [0, 1]).
        gt: H x W ground-truth alpha, same conventions.
        trimap: H x W raw trimap; only pixels equal to 128 count.

    Returns:
        The sum, *not* divided by 1000 (``compute_metrics`` does that).
    """
    p, g, u = _prepare(pred, gt, trimap)
    return float(np.abs(p[u] - g[u]).sum())


def mse_error(pred: Any, gt: Any, trimap: Any) -> float:
    """Raw MSE: mean over the unknown region of ``(pred - gt)**2``; 0.0 if there is none.

    Divided by the number of unknown pixels, as DIM's ``compute_mse_loss.m``; *not* multiplied
    by 1e3 (``compute_metrics`` does that). Arguments as :func:`sad_error`.
    """
    p, g, u = _prepare(pred, gt, trimap)
    n = int(u.sum())
    if n == 0:
        return 0.0
    d = p[u] - g[u]
    return float(np.dot(d, d) / n)


# --------------------------------------------------------------------------------------------------
# Grad


def _gauss_gradient_factors(sigma: float = 1.4, epsilon: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """1-D factors (G, G') of the DIM kernel, scaled so that ``outer(G, G')`` has unit L2 norm."""
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * epsilon)))
    u = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(u**2) / (2.0 * sigma**2)) / (sigma * math.sqrt(2.0 * math.pi))
    dg = -u * g / sigma**2
    # ||outer(g, dg)||_F = ||g|| * ||dg||: normalise each factor by its own norm.
    return g / np.linalg.norm(g), dg / np.linalg.norm(dg)


def gauss_gradient_kernel(sigma: float = 1.4, epsilon: float = 1e-2) -> np.ndarray:
    """The x-derivative kernel of DIM's ``gaussgradient.m``.

    Half size ``ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma epsilon)))`` (4 for sigma 1.4, so 9 x 9);
    ``hx[i, j] = G(u_i) * G'(u_j)`` with G the 1-D Gaussian and G' its derivative, u = -4..4;
    normalised to unit L2 norm. The y kernel is ``hx.T``.

    Returns:
        (2h+1) x (2h+1) float64 array.
    """
    g, dg = _gauss_gradient_factors(sigma, epsilon)
    return np.outer(g, dg)  # rows: Gaussian, columns: derivative -> d/dx


def gauss_gradient(image: np.ndarray, sigma: float = 1.4) -> tuple[np.ndarray, np.ndarray]:
    """x and y Gaussian-derivative gradients of a 2-D float image, as ``gaussgradient.m``.

    Convolution (``imfilter(..., 'replicate', 'conv')``) with replicated borders
    (``mode="nearest"``). The kernel is separable and replicate padding is too, so two 1-D
    passes give the same result as the 9 x 9 convolution at a fraction of the cost.

    Args:
        image: H x W float array.
        sigma: Gaussian sigma (DIM uses 1.4).

    Returns:
        ``(gx, gy)``, two H x W float64 arrays.
    """
    g, dg = _gauss_gradient_factors(sigma)
    img = np.asarray(image, dtype=np.float64)
    gx = ndimage.convolve1d(ndimage.convolve1d(img, g, axis=0, mode="nearest"), dg, axis=1, mode="nearest")
    gy = ndimage.convolve1d(ndimage.convolve1d(img, dg, axis=0, mode="nearest"), g, axis=1, mode="nearest")
    return gx, gy


def _mat2gray(a: np.ndarray) -> np.ndarray:
    # MATLAB mat2gray: min-max over the whole image. A constant image has zero gradient whatever
    # constant it maps to, so map it to zeros.
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float64)
    return (a - lo) / (hi - lo)


def gradient_error(pred: Any, gt: Any, trimap: Any, sigma: float = 1.4) -> float:
    """Raw Grad: sum over the unknown region of ``(|grad pred| - |grad gt|)**2``.

    Both mattes are first rescaled with ``mat2gray`` (per-image min-max), which is what the
    official code does (the common Python port divides by 255 instead and is wrong whenever a
    matte does not span the full range). Arguments as :func:`sad_error`.

    Returns:
        The sum, *not* divided by 1000 (``compute_metrics`` does that).
    """
    p, g, u = _prepare(pred, gt, trimap)
    if not u.any():
        return 0.0
    px, py = gauss_gradient(_mat2gray(p), sigma)
    gx, gy = gauss_gradient(_mat2gray(g), sigma)
    # The official code casts the magnitudes to single before differencing.
    p_amp = np.sqrt(px * px + py * py).astype(np.float32).astype(np.float64)
    g_amp = np.sqrt(gx * gx + gy * gy).astype(np.float32).astype(np.float64)
    d = p_amp[u] - g_amp[u]
    return float(np.dot(d, d))


# --------------------------------------------------------------------------------------------------
# Conn

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a boolean mask (all False if the mask is empty).

    Labelling the transpose numbers components in column-major order of their first pixel, as
    MATLAB's ``bwconncomp``, so ``argmax`` (first maximum) breaks ties the way ``max`` does there.
    """
    labels_t, n = ndimage.label(mask.T, structure=_FOUR_CONNECTED)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels_t.ravel(), minlength=n + 1)[1:]  # label 0 = background: excluded
    return (labels_t == (int(np.argmax(sizes)) + 1)).T


def connectivity_error(pred: Any, gt: Any, trimap: Any, step: float = 0.1) -> float:
    """Raw Conn: sum over the unknown region of ``|phi(pred) - phi(gt)|``.

    For each threshold t_i = i * step (i >= 1), Omega = the largest 4-connected component of
    ``(pred >= t_i) & (gt >= t_i)``; pixels not yet assigned and outside Omega get the level
    l = t_{i-1}; pixels never assigned get l = 1. With d = alpha - l,
    ``phi = 1 - d * [d >= 0.15]``. All in float32 like the official code. An empty Omega assigns
    t_{i-1} to every remaining pixel (guarded GCA copy; see the module docstring).

    Args:
        pred, gt, trimap: as :func:`sad_error`.
        step: threshold step (DIM uses 0.1).

    Returns:
        The sum, *not* divided by 1000 (``compute_metrics`` does that).
    """
    if not (0.0 < step <= 1.0):
        raise ValueError(f"step must be in (0, 1], got {step}")
    p, g, u = _prepare(pred, gt, trimap, dtype=np.float32)
    if not u.any():
        return 0.0
    # MATLAB 0:step:1 in double, compared against single alpha -> float32 thresholds.
    n_steps = math.floor(1.0 / step + 1e-9)
    thresholds = (np.arange(n_steps + 1, dtype=np.float64) * step).astype(np.float32)
    level = np.full(p.shape, -1.0, dtype=np.float32)
    for i in range(1, len(thresholds)):
        t = thresholds[i]
        omega = _largest_component((p >= t) & (g >= t))
        level[(level == -1.0) & ~omega] = thresholds[i - 1]
    level[level == -1.0] = 1.0

    limit = np.float32(0.15)
    pd = p - level
    gd = g - level
    p_phi = np.float32(1.0) - pd * (pd >= limit)
    g_phi = np.float32(1.0) - gd * (gd >= limit)
    return float(np.abs(p_phi[u] - g_phi[u]).astype(np.float64).sum())


# --------------------------------------------------------------------------------------------------
# all four, in reporting units


def compute_metrics(pred: Any, gt: Any, trimap: Any) -> dict[str, float]:
    """All four DIM metrics of one image, in reporting units.

    Args:
        pred: H x W predicted alpha: uint8 (/255), uint16 (/65535) or float in [0, 1]. The
            evaluation quantises predictions to 8 bits first (what saving a PNG does).
        gt: H x W ground-truth alpha, same conventions.
        trimap: H x W raw trimap (0 / 128 / 255); only pixels equal to 128 are scored.

    Returns:
        ``{"sad": SAD/1000, "mse": MSE*1e3, "grad": Grad/1000, "conn": Conn/1000}`` (floats).

    Raises:
        ValueError: bad shapes, dtypes or value ranges.
    """
    raw = {
        "sad": sad_error(pred, gt, trimap),
        "mse": mse_error(pred, gt, trimap),
        "grad": gradient_error(pred, gt, trimap),
        "conn": connectivity_error(pred, gt, trimap),
    }
    return {k: raw[k] * REPORT_SCALE[k] for k in METRIC_KEYS}


# --------------------------------------------------------------------------------------------------
# aggregation (mean over images, overall and per group / class)


class MetricAccumulator:
    """Running means of per-image metric dicts, overall and per group (e.g. SIM class).

    Every numeric key that is added is averaged (so a ``time`` key can ride along); keys keep the
    order in which they first appear. A key missing from some images is averaged over the images
    that have it.

    Example::

        acc = MetricAccumulator()
        acc.add(compute_metrics(pred, gt, trimap), group="fur")
        acc.summary()  # {"overall": {"count": 1, "sad": ...}, "groups": {"fur": {...}}}
    """

    def __init__(self) -> None:
        self._sums: dict[str | None, dict[str, float]] = {}
        self._counts: dict[str | None, dict[str, int]] = {}
        self._n: dict[str | None, int] = {}

    def add(self, metrics: Mapping[str, float], group: str | None = None) -> None:
        """Add one image's metrics (reporting units) under ``group`` (None: overall only)."""
        targets: list[str | None] = [None] if group is None else [None, str(group)]
        for key in targets:
            sums = self._sums.setdefault(key, {})
            counts = self._counts.setdefault(key, {})
            self._n[key] = self._n.get(key, 0) + 1
            for name, value in metrics.items():
                v = float(value)
                sums[name] = sums.get(name, 0.0) + v
                counts[name] = counts.get(name, 0) + 1

    def __len__(self) -> int:
        return self._n.get(None, 0)

    def _means(self, key: str | None) -> dict[str, float]:
        out: dict[str, float] = {"count": float(self._n.get(key, 0))}
        for name, s in self._sums.get(key, {}).items():
            out[name] = s / self._counts[key][name]
        return out

    def summary(self) -> dict[str, Any]:
        """``{"overall": {"count": n, key: mean, ...}, "groups": {group: {...}}}``.

        Groups are sorted by name; ``count`` is a float for uniform typing of the dicts.
        """
        groups = sorted(k for k in self._sums if k is not None)
        return {"overall": self._means(None), "groups": {g: self._means(g) for g in groups}}


def aggregate_metrics(
    records: Iterable[Mapping[str, float]], groups: Iterable[str | None] | None = None
) -> dict[str, Any]:
    """Mean of per-image metric dicts, overall and per group.

    Args:
        records: per-image dicts (e.g. from :func:`compute_metrics`, possibly with extra
            numeric keys such as ``time``).
        groups: the group of each record (same length), or None for overall only.

    Returns:
        Same structure as :meth:`MetricAccumulator.summary`.
    """
    recs = list(records)
    grp = [None] * len(recs) if groups is None else list(groups)
    if len(grp) != len(recs):
        raise ValueError(f"{len(recs)} records but {len(grp)} groups")
    acc = MetricAccumulator()
    for r, g in zip(recs, grp):
        acc.add(r, g)
    return acc.summary()
