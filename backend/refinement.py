"""Band refinement: closed-form matting solved only where the network is unsure.

The network knows *where* the transition is (semantics, long-range context) but its output is
smooth: strands and holes finer than its decoder resolves get blurred. The closed-form Laplacian
(Levin et al. 2008) resolves them from the local colour-line model, yet has no notion of what the
object is. Refinement keeps the network's confident pixels as constraints and re-solves alpha under
the Laplacian in the remaining band (the unsure pixels, widened by ``margin`` px so the solve can
also move an edge the network placed a pixel off). The band is a small part of the trimap's
unknown region, so the sparse solve costs a fraction of full closed-form matting.

Chosen on the validation photos only (GT01/GT10/GT19 × both trimaps, `models/README.md`).
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable

import cv2
import numpy as np
from scipy import sparse

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
# CG iterations before giving up (then the network's alpha is kept).
MAX_ITERATIONS = 2000
# Largest band solved, in pixels (time and the Laplacian's memory grow with it); larger bands keep the
# network's alpha.
MAX_BAND_PIXELS = 4_000_000


def refinement_band(alpha: np.ndarray, trimap: np.ndarray, *, sure: float = SURE, margin: int = MARGIN) -> np.ndarray:
    """H×W bool: the trimap-unknown pixels whose alpha the refinement solves for."""
    unsure = ((alpha > sure) & (alpha < 1.0 - sure)).astype(np.uint8)
    if margin > 0:
        unsure = cv2.dilate(unsure, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return (unsure > 0) & (trimap == 128)


def refine_alpha(image: np.ndarray, trimap: np.ndarray, alpha: np.ndarray, *, sure: float = SURE,
                 margin: int = MARGIN, epsilon: float = EPSILON, prior: float = PRIOR, max_iterations: int = MAX_ITERATIONS,
                 max_pixels: int = MAX_BAND_PIXELS) -> np.ndarray | None:
    """Re-solve ``alpha`` in the network's unsure band under the closed-form matting Laplacian.

    Args:
        image: H×W×3 float in [0, 1].
        trimap: H×W uint8, 0 / 128 / 255 (the validated trimap).
        alpha: H×W float32 in [0, 1], the network's alpha with known regions already forced.
        sure, margin: band definition (see :func:`refinement_band`).
        epsilon: the Laplacian's regulariser.
        prior: weight of the pull towards ``alpha`` inside the band.
        max_iterations: CG iterations before giving up.
        max_pixels: a larger band is not solved.

    Returns:
        The refined H×W float32 alpha (outside the band: the trimap's values, and 0 or 1 where the network was sure), or None when the band is
        larger than ``max_pixels`` or the solve does not converge (the caller keeps the network's alpha).
    """
    from pymatting import cf_laplacian, cg  # numba JIT: import only when refining

    band = refinement_band(alpha, trimap, sure=sure, margin=margin)
    n = int(band.sum())
    if n > max_pixels:
        log.warning("refinement skipped: band of %d px exceeds %d", n, max_pixels)
        return None
    # Outside the band every pixel is a constraint: the trimap's known regions, and the network's sure
    # pixels snapped to 0 or 1.
    fixed = np.where(trimap == 128, alpha >= 0.5, trimap == 255).astype(np.float64).ravel()
    if n == 0:
        return fixed.reshape(alpha.shape).astype(np.float32)
    known = ~band.ravel()
    lap = cf_laplacian(np.ascontiguousarray(image, dtype=np.float64), epsilon=epsilon, is_known=known)
    rows = lap[band.ravel(), :]
    x0 = alpha.ravel()[band.ravel()].astype(np.float64)
    lap_band = (rows[:, band.ravel()] + prior * sparse.identity(n, format="csr")).tocsr()
    rhs = prior * x0 - rows[:, known].dot(fixed[known])
    try:
        solved = cg(lap_band, rhs, x0=x0, M=_preconditioner(lap_band), rtol=1e-5, maxiter=max_iterations)
    except ValueError as exc:  # pymatting's "did not converge"
        log.warning("refinement skipped: %s", exc)
        return None
    fixed[band.ravel()] = np.clip(solved, 0.0, 1.0)
    return fixed.reshape(alpha.shape).astype(np.float32)


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
