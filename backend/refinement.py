"""Band refinement: closed-form matting solved only where the network is unsure.

The network knows *where* the transition is (semantics, long-range context) but its output is
smooth: strands and holes finer than its decoder resolves get blurred. The closed-form Laplacian
(Levin et al. 2008) resolves them from the local colour-line model, yet has no notion of what the
object is. Refinement keeps the network's confident pixels as constraints and re-solves alpha under
the Laplacian in the remaining band (the unsure pixels, widened by ``margin`` px so the solve can
also move an edge the network placed a pixel off). The band is a small part of the trimap's
unknown region, so the sparse solve costs a fraction of full closed-form matting.

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

from backend.protocol import TRIMAP_FG, TRIMAP_UNKNOWN

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
# CG iterations before giving up on a tile (its band then keeps the network's alpha).
MAX_ITERATIONS = 2000
# The solve runs in tiles of TILE² px that contain band pixels, each with CONTEXT px around it whose outer
# ring is held at the current alpha: cf_laplacian builds its matrix for the whole crop it is given (about
# 320 B and 0.2 ms per px here), so an untiled 8k image would need ~20 GB for a thin band. Closed-form
# solutions propagate far along an edge, so the context is generous (a crop is at most 1280², ~0.5 GB).
# Images up to TILE + 2·CONTEXT px on both sides are solved in one piece.
TILE = 1024
CONTEXT = 128


def refinement_band(alpha: np.ndarray, trimap: np.ndarray, *, sure: float = SURE, margin: int = MARGIN) -> np.ndarray:
    """H×W bool: the trimap-unknown pixels whose alpha the refinement solves for."""
    unsure = ((alpha > sure) & (alpha < 1.0 - sure)).astype(np.uint8)
    if margin > 0:
        unsure = cv2.dilate(unsure, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return (unsure > 0) & (trimap == TRIMAP_UNKNOWN)


def refine_alpha(image: np.ndarray, trimap: np.ndarray, alpha: np.ndarray, *, sure: float = SURE,
                 margin: int = MARGIN, epsilon: float = EPSILON, prior: float = PRIOR,
                 max_iterations: int = MAX_ITERATIONS, tile: int = TILE, context: int = CONTEXT) -> np.ndarray:
    """Re-solve ``alpha`` in the network's unsure band under the closed-form matting Laplacian.

    Args:
        image: H×W×3 float in [0, 1].
        trimap: H×W uint8, 0 / 128 / 255 (the validated trimap).
        alpha: H×W float32 in [0, 1], the network's alpha with known regions already forced.
        sure, margin: band definition (see :func:`refinement_band`).
        epsilon: the Laplacian's regulariser.
        prior: weight of the pull towards ``alpha`` inside the band.
        max_iterations: CG iterations per tile before giving up on that tile.
        tile, context: tiling of the solve (see ``TILE``).

    Returns:
        H×W float32 alpha: the solution in the band; elsewhere the trimap's values, and 0 or 1 where the
        network was sure. A tile whose solve does not converge keeps the network's alpha in its band.
    """
    band = refinement_band(alpha, trimap, sure=sure, margin=margin)
    # Outside the band every pixel is a constraint: the trimap's known regions, and the network's sure
    # pixels snapped to 0 or 1.
    out = np.where(trimap == TRIMAP_UNKNOWN, alpha >= 0.5, trimap == TRIMAP_FG).astype(np.float32)
    out[band] = alpha[band]
    h, w = band.shape
    for y0, y1 in _spans(h, tile, context):
        for x0, x1 in _spans(w, tile, context):
            if not band[y0:y1, x0:x1].any():
                continue
            cy0, cy1, cx0, cx1 = max(0, y0 - context), min(h, y1 + context), max(0, x0 - context), min(w, x1 + context)
            crop_band = band[cy0:cy1, cx0:cx1].copy()
            # a crop edge inside the image is held at the current alpha (the next tile's context overlaps it)
            crop_band[0, :] &= cy0 == 0
            crop_band[-1, :] &= cy1 == h
            crop_band[:, 0] &= cx0 == 0
            crop_band[:, -1] &= cx1 == w
            solved = _solve(image[cy0:cy1, cx0:cx1], out[cy0:cy1, cx0:cx1], crop_band, epsilon, prior, max_iterations)
            if solved is None:
                continue
            core = band[y0:y1, x0:x1]
            out[y0:y1, x0:x1][core] = solved[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0][core]
    return out


def _spans(n: int, tile: int, context: int) -> list[tuple[int, int]]:
    if n <= tile + 2 * context:
        return [(0, n)]
    return [(s, min(s + tile, n)) for s in range(0, n, tile)]


def _solve(image: np.ndarray, current: np.ndarray, band: np.ndarray, epsilon: float, prior: float,
           max_iterations: int) -> np.ndarray | None:
    """One crop: alpha in ``band`` (H×W bool) given ``current`` everywhere else; None if CG does not converge."""
    from pymatting import cf_laplacian, cg  # numba JIT: import only when refining

    inside = band.ravel()
    outside = ~inside
    values = current.ravel().astype(np.float64)
    lap = cf_laplacian(np.ascontiguousarray(image, dtype=np.float64), epsilon=epsilon, is_known=outside)
    rows = lap[inside, :]
    x0 = values[inside]
    lap_band = (rows[:, inside] + prior * sparse.identity(int(inside.sum()), format="csr")).tocsr()
    rhs = prior * x0 - rows[:, outside].dot(values[outside])
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
