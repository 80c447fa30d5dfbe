"""Band refinement: closed-form matting solved only where the network is unsure.

The network knows *where* the transition is (semantics, long-range context) but its output is
smooth: strands and holes finer than its decoder resolves get blurred. The closed-form Laplacian
(Levin et al. 2008) resolves them from the local colour-line model, yet has no notion of what the
object is. Refinement keeps the network's confident pixels as constraints and re-solves alpha under
the Laplacian in the remaining band (the unsure pixels, widened by ``margin`` px so the solve can
also move an edge the network placed a pixel off). The band is a small part of the trimap's
unknown region, so the sparse solve costs a fraction of full closed-form matting.

A confident pixel is only kept if its colour agrees: where the colour-line estimate from the nearby known
foreground and background colours (:func:`colour_alpha`) contradicts the network's 0 or 1 by more than
``COLOUR_TOLERANCE``, the pixel joins the band. This catches the network's confident mistakes (holes it
filled, background it kept) that a threshold on its own output cannot see.

Settings chosen on the validation photos only (GT01/GT10/GT19 × both trimaps):
`docs/bench/refinement_validation.md`.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable

import cv2
import numpy as np
from scipy import sparse

from backend.protocol import TRIMAP_BG, TRIMAP_FG, TRIMAP_UNKNOWN

log = logging.getLogger(__name__)

# Pixels the network puts within SURE of 0 or 1 become constraints; the rest (plus MARGIN px) is solved.
SURE = 0.02
MARGIN = 2
# The Laplacian's regulariser: 1e-5 rather than closed-form matting's usual 1e-7 conditions the band's
# system better (hard synthetic edges) and scored a little better on the validation photos (1.853 vs 1.875).
EPSILON = 1e-5
# Weight of a pull towards the network's alpha inside the band: keeps the system positive definite where a
# band component is all but cut off from its constraints (hard synthetic edges); too small to move results.
PRIOR = 1e-5
# A sure pixel whose colour-line alpha differs from its snapped value by more than this is re-solved
# (None: trust every sure pixel). Validation photos 1.782 -> 1.709, procedural validation 8.91 -> 8.43.
COLOUR_TOLERANCE: float | None = 0.5
# Scales (px) of the local known-colour means, finest first: each pixel takes the finest scale that has
# known pixels nearby, so a wide unknown band still finds colours to compare with.
COLOUR_SCALES = (8, 32, 128)
# Prior weight towards the colour alpha on contradicted pixels. It has to outweigh the regulariser's
# preference for flat alpha: inside a hole ringed by sure pixels both "filled" and "empty" fit the colour
# lines, and ε favours "filled".
COLOUR_PRIOR = 1e-3
# CG iterations before giving up on a tile (its band then keeps the network's alpha).
MAX_ITERATIONS = 2000
# The solve runs in tiles of TILE² px that contain band pixels, each with CONTEXT px around it whose outer
# ring is held at the current alpha: cf_laplacian builds its matrix for the whole crop it is given (about
# 320 B and 0.2 ms per px here), so an untiled 8k image would need ~20 GB for a thin band. Closed-form
# solutions propagate far along an edge, so the context is generous (a crop is at most 1280², ~0.5 GB).
# Images up to TILE + 2·CONTEXT px on both sides are solved in one piece.
TILE = 1024
CONTEXT = 128


def _known_mean(values: np.ndarray, weight: np.ndarray, scales: tuple[int, ...], base: int) -> np.ndarray:
    """Normalised convolution on a grid downsampled by ``base``: the ``weight``-weighted mean of ``values``
    around each cell at the finest of ``scales`` (sigma in full-size px) with enough weight nearby; zero
    where none has. Each blur runs on a grid coarse enough for sigma <= 8 cells."""
    h, w = weight.shape
    out = np.zeros(values.shape, np.float32)
    have = np.zeros((h, w), bool)
    weighted = values * weight[..., None]
    for sigma in scales:
        f = max(1, sigma // (8 * base))
        small = (max(1, w // f), max(1, h // f))
        num, den = (cv2.resize(a, small, interpolation=cv2.INTER_AREA) for a in (weighted, weight))
        num, den = cv2.GaussianBlur(num, (0, 0), sigma / base / f), cv2.GaussianBlur(den, (0, 0), sigma / base / f)
        num, den = (cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR) for a in (num, den))
        take = (den > 1e-3) & ~have
        out[take] = num.reshape(out.shape)[take] / den[take, None]
        have |= take
    return out


def colour_alpha(image: np.ndarray, trimap: np.ndarray, scales: tuple[int, ...] = COLOUR_SCALES) -> np.ndarray:
    """H×W alpha from colour alone on the trimap's unknown region (0 elsewhere): each pixel projected onto
    the line between the local means of the known foreground and background colours (the colour-line
    model at a coarse scale). The means are smooth, so they are computed at 1/``min(scales)/4`` size
    (a full-size sigma-128 blur alone costs ~0.3 s per plane for 0.5 MP here)."""
    h, w = trimap.shape
    base = max(1, min(scales) // 4)
    small = (max(1, w // base), max(1, h // base))
    image_s = cv2.resize(image.astype(np.float32), small, interpolation=cv2.INTER_AREA)
    means = [cv2.resize(_known_mean(image_s, cv2.resize((trimap == v).astype(np.float32), small,
                                                        interpolation=cv2.INTER_AREA), scales, base),
                        (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
             for v in (TRIMAP_FG, TRIMAP_BG)]
    unknown = trimap == TRIMAP_UNKNOWN
    fg, bg, pixels = means[0][unknown], means[1][unknown], image[unknown].astype(np.float32)
    d = fg - bg
    out = np.zeros((h, w), np.float32)
    out[unknown] = np.clip(((pixels - bg) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-4), 0.0, 1.0)
    return out


def refinement_band(alpha: np.ndarray, trimap: np.ndarray, *, sure: float = SURE, margin: int = MARGIN,
                    contradicted: np.ndarray | None = None) -> np.ndarray:
    """H×W bool: the trimap-unknown pixels whose alpha the refinement solves for: the network's unsure
    pixels plus the ``contradicted`` ones (see :func:`contradicted_by_colour`), widened by ``margin`` px."""
    unsure = (alpha > sure) & (alpha < 1.0 - sure)
    if contradicted is not None:
        unsure |= contradicted
    band = unsure.astype(np.uint8)
    if margin > 0:
        band = cv2.dilate(band, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return (band > 0) & (trimap == TRIMAP_UNKNOWN)


def contradicted_by_colour(alpha: np.ndarray, trimap: np.ndarray, colour: np.ndarray, *, sure: float = SURE,
                           tolerance: float = COLOUR_TOLERANCE) -> np.ndarray:
    """H×W bool: trimap-unknown pixels the network is sure of whose colour alpha (:func:`colour_alpha`)
    differs from the snapped value by more than ``tolerance``."""
    is_sure = (alpha <= sure) | (alpha >= 1.0 - sure)
    snapped = (alpha >= 0.5).astype(np.float32)
    return (trimap == TRIMAP_UNKNOWN) & is_sure & (np.abs(colour - snapped) > tolerance)


def refine_alpha(image: np.ndarray, trimap: np.ndarray, alpha: np.ndarray, *, sure: float = SURE,
                 margin: int = MARGIN, colour_tolerance: float | None = COLOUR_TOLERANCE,
                 epsilon: float = EPSILON, prior: float = PRIOR, colour_prior: float = COLOUR_PRIOR,
                 max_iterations: int = MAX_ITERATIONS, tile: int = TILE, context: int = CONTEXT) -> np.ndarray:
    """Re-solve ``alpha`` in the network's unsure band under the closed-form matting Laplacian.

    Args:
        image: H×W×3 float in [0, 1].
        trimap: H×W uint8, 0 / 128 / 255 (the validated trimap).
        alpha: H×W float32 in [0, 1], the network's alpha with known regions already forced.
        sure, margin: band definition (see :func:`refinement_band`).
        colour_tolerance: sure pixels whose colour alpha differs more join the band (None: trust them all).
        epsilon: the Laplacian's regulariser.
        prior: weight of the pull towards the network's alpha inside the band.
        colour_prior: weight of the pull towards the colour alpha on contradicted pixels.
        max_iterations: CG iterations per tile before giving up on that tile.
        tile, context: tiling of the solve (see ``TILE``).

    Returns:
        H×W float32 alpha: the solution in the band; elsewhere the trimap's values, and 0 or 1 where the
        network was sure. A tile whose solve does not converge keeps the network's alpha in its band.
    """
    start, weights = alpha, np.full(alpha.shape, prior, np.float32)
    contradicted = None
    if colour_tolerance is not None and (trimap == TRIMAP_UNKNOWN).any():
        colour = colour_alpha(image, trimap)
        contradicted = contradicted_by_colour(alpha, trimap, colour, sure=sure, tolerance=colour_tolerance)
        start = np.where(contradicted, colour, alpha).astype(np.float32)
        weights[contradicted] = colour_prior
    band = refinement_band(alpha, trimap, sure=sure, margin=margin, contradicted=contradicted)
    # Outside the band every pixel is a constraint: the trimap's known regions, and the network's sure
    # pixels (that the colour does not contradict) snapped to 0 or 1.
    out = np.where(trimap == TRIMAP_UNKNOWN, alpha >= 0.5, trimap == TRIMAP_FG).astype(np.float32)
    out[band] = start[band]
    h, w = band.shape
    for y0, y1 in _spans(h, tile, context):
        for x0, x1 in _spans(w, tile, context):
            core = band[y0:y1, x0:x1]
            if not core.any():
                continue
            cy0, cy1, cx0, cx1 = max(0, y0 - context), min(h, y1 + context), max(0, x0 - context), min(w, x1 + context)
            crop_band = band[cy0:cy1, cx0:cx1].copy()
            # a crop edge inside the image is held at the current alpha (the next tile's context overlaps it)
            crop_band[0, :] &= cy0 == 0
            crop_band[-1, :] &= cy1 == h
            crop_band[:, 0] &= cx0 == 0
            crop_band[:, -1] &= cx1 == w
            solved = _solve(image[cy0:cy1, cx0:cx1], out[cy0:cy1, cx0:cx1], crop_band, epsilon,
                            weights[cy0:cy1, cx0:cx1], max_iterations)
            if solved is None:
                solved, cy0, cx0 = alpha, 0, 0  # this tile keeps the network's alpha
            out[y0:y1, x0:x1][core] = solved[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0][core]
    return out


def _spans(n: int, tile: int, context: int) -> list[tuple[int, int]]:
    if n <= tile + 2 * context:
        return [(0, n)]
    return [(s, min(s + tile, n)) for s in range(0, n, tile)]


def _solve(image: np.ndarray, current: np.ndarray, band: np.ndarray, epsilon: float, prior: np.ndarray,
           max_iterations: int) -> np.ndarray | None:
    """One crop: alpha in ``band`` (H×W bool) given ``current`` everywhere else, pulled towards ``current``
    in the band with per-pixel weights ``prior``; None if CG does not converge."""
    from pymatting import cf_laplacian, cg  # numba JIT: import only when refining

    inside = band.ravel()
    outside = ~inside
    values = current.ravel().astype(np.float64)
    lap = cf_laplacian(np.ascontiguousarray(image, dtype=np.float64), epsilon=epsilon, is_known=outside)
    rows = lap[inside, :]
    x0 = values[inside]
    weights = prior.ravel()[inside].astype(np.float64)
    lap_band = (rows[:, inside] + sparse.diags(weights, format="csr")).tocsr()
    rhs = weights * x0 - rows[:, outside].dot(values[outside])
    try:
        solved = cg(lap_band, rhs, x0=x0, M=_preconditioner(lap_band), rtol=1e-5, maxiter=max_iterations)
    except ValueError as exc:  # pymatting's "did not converge"
        log.warning("refinement of a %d-px band skipped: %s", int(inside.sum()), exc)
        return None
    values[inside] = np.clip(solved, 0.0, 1.0)
    return values.reshape(current.shape).astype(np.float32)


def _preconditioner(matrix: sparse.csr_matrix) -> Callable[[np.ndarray], np.ndarray]:
    """Incomplete Cholesky (CG then converges in a few iterations: about 2x faster than Jacobi on the
    held-out photos' bands); Jacobi where the factorisation fails (near-singular flat-colour windows)."""
    from pymatting import ichol, jacobi

    # pymatting reports each failed attempt with print(): keep that off stdout and in the debug log.
    # (A process-wide swap, but only print() consults sys.stdout; logging handlers hold their stream.)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            return ichol(matrix.tocsc(), shifts=[0.0, 1e-4, 1e-3])
    except ValueError:
        log.debug("incomplete Cholesky failed, Jacobi instead")
        return jacobi(matrix)
    finally:
        if captured.getvalue():
            log.debug("pymatting: %s", captured.getvalue().strip())
