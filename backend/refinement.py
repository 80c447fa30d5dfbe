"""Band refinement: closed-form matting solved only where the network is unsure.

The network knows *where* the transition is (semantics, long-range context) but its output is
smooth: strands and holes finer than its decoder resolves get blurred. The closed-form Laplacian
(Levin et al. 2008) resolves them from the local colour-line model, yet has no notion of what the
object is. Refinement keeps the network's confident pixels as constraints and re-solves alpha under
the Laplacian in the remaining band (the unsure pixels, widened by ``margin`` px so the solve can
also move an edge the network placed a pixel off). The band is a small part of the trimap's
unknown region, so the sparse solve costs a fraction of full closed-form matting.

The closed-form Laplacian only links pixels within a 3×3 window, so a band pixel learns about the foreground
and background colours only through a chain of neighbours. A nonlocal term (KNN matting, Chen et al. 2013)
also links each band pixel to the pixels of most similar colour anywhere in the crop, known ones included:
a strand of hair pulls towards the known hair colour directly (:func:`nonlocal_laplacian_rows`).

A confident pixel is only kept if its colour agrees: where a colour-sampling estimate (Shared Matting,
:func:`colour_alpha`) contradicts the network's 0 or 1 by more than ``COLOUR_TOLERANCE``, the pixel joins
the band, pulled towards that estimate. This catches the network's confident mistakes (holes it filled,
background it kept) that a threshold on its own output cannot see.

Settings chosen on the validation photos only (GT01/GT10/GT19 × both trimaps), with the other 15 training photos
and procedural images as guards: `docs/bench/refinement_validation.md`.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import sparse

from backend.protocol import TRIMAP_BG, TRIMAP_FG, TRIMAP_UNKNOWN

log = logging.getLogger(__name__)

# Pixels the network puts within SURE of 0 or 1 become constraints; the rest (plus MARGIN px) is solved.
SURE = 0.1
MARGIN = 2
# The Laplacian's regulariser: closed-form matting's usual 1e-7. (Session 5 chose 1e-5 before the colour check
# existed; re-tuned with it in session 10 on the validation photos: 1.216 at 1e-7 vs 1.274 at 1e-5, with SURE 0.02.)
EPSILON = 1e-7
# Used instead where a window's covariance is singular at EPSILON (see _solve).
EPSILON_FALLBACK = 1e-5
# Weight of a pull towards the network's alpha inside the band: keeps the system positive definite where a
# band component is all but cut off from its constraints (hard synthetic edges); too small to move results.
PRIOR = 1e-5
# A sure pixel whose colour alpha differs from its snapped value by more than this is re-solved
# (None: trust every sure pixel).
COLOUR_TOLERANCE: float | None = 0.5
# The colour alpha (Shared Matting) runs at 1/COLOUR_SCALE size, or smaller so that its long side is at most
# COLOUR_MAX_SIDE (its sampling rays grow with the band: 15 s for a 12 MP image at half size), with window
# radii COLOUR_RADIUS.
COLOUR_SCALE = 2
COLOUR_MAX_SIDE = 1024
COLOUR_RADIUS = 2
# Prior weight towards the colour alpha on contradicted pixels. It has to outweigh the regulariser's
# preference for flat alpha: inside a hole ringed by sure pixels both "filled" and "empty" fit the colour
# lines, and ε favours "filled". (Validation: 1e-4 1.635, 1e-3 1.607, 1e-2 1.487, 0.1 1.376, 1 1.405.)
COLOUR_PRIOR = 0.1
# The nonlocal term: each band pixel is linked to its nearest neighbours in (r, g, b, w·x, w·y) space (x, y in
# units of the crop's longer side), one search per (count, w) pair: 5 with w = 1 (similar colour nearby) and
# 5 with w = 0.05 (similar colour anywhere). Each link weighs NONLOCAL_WEIGHT / 10. Weight and searches chosen on
# the validation photos in session 11 with 10 + 10 neighbours; session 14 halved the counts for speed (scores
# within 0.7 %, 15 % less refinement time; docs/bench/refinement_validation.md); used by refine="nonlocal".
NONLOCAL_WEIGHT = 0.2
NONLOCAL_NEIGHBOURS = ((5, 1.0), (5, 0.05))
# Search candidates, from the trimap (session 13, for speed: the KD-trees over every pixel of the photo were most of
# the term's fixed cost): the w >= 1 search ("similar colour nearby") looks only within NEAR_PX of the unknown region,
# the others at full density within FAR_PX of it and at every 2nd row and column beyond, where all is known. Same
# scores to 0.01 % on the validation and training photos (docs/bench/refinement_validation.md).
NONLOCAL_NEAR_PX = 32
NONLOCAL_FAR_PX = 128
# Classes whose unknown pixels are no mix of nearby opaque colours: the colour seen is the background through a
# medium (glass, plastic, water, smoke). Similar colour elsewhere says little about their alpha, so the nonlocal
# term is off for an image whose unknown region is mostly theirs (procedural smoke: SAD 19.0 → 25.9 with it on;
# a weight that falls with the per-pixel share did not help: even 1 % of the weight costs smoke 5-10 %).
TRANSLUCENT_CLASSES = frozenset({"glass_ice", "plastic_bag", "smoke_cloud", "water_drop"})
TRANSLUCENT_LIMIT = 0.5
# Rows of band pixels per piece of the closed-form Laplacian's build (band_laplacian_rows).
LAPLACIAN_STRIP = 64
# The preconditioner is factorised while the nonlocal links are still being searched, so it takes their diagonal
# as this multiple of the weight: a band pixel's own links (1) plus those arriving from other band pixels (mean
# 1.33-1.65 on seven photos). Only CG's iteration count depends on it (same scores to 4 decimals).
NONLOCAL_DIAGONAL = 1.5
# CG iterations before giving up on a tile (its band then keeps the network's alpha).
MAX_ITERATIONS = 2000
# The solve runs in tiles of TILE² px that contain band pixels, each with CONTEXT px around it whose outer
# ring is held at the current alpha: cf_laplacian builds its matrix for the whole crop it is given (about
# 320 B and 0.2 ms per px here), so an untiled 8k image would need ~20 GB for a thin band. Closed-form
# solutions propagate far along an edge, so the context is generous (a crop is at most 1280², ~0.5 GB).
# Images up to TILE + 2·CONTEXT px on both sides are solved in one piece.
TILE = 1024
CONTEXT = 128


def colour_alpha(image: np.ndarray, trimap: np.ndarray) -> np.ndarray | None:
    """H×W alpha from colour samples alone (Shared Matting, Gastal & Oliveira 2010, pymatting's
    ``estimate_alpha_sm``): each unknown pixel explained by the best pair of known foreground and background
    colours found along rays. Computed at 1/``COLOUR_SCALE`` size or smaller (``COLOUR_MAX_SIDE``; holes the
    check must catch are several px wide) and upsampled. None when the trimap has no known foreground or no
    known background (nothing to sample)."""
    from pymatting import estimate_alpha_sm  # numba JIT: import only when refining

    if not (trimap == TRIMAP_FG).any() or not (trimap == TRIMAP_BG).any():
        return None
    h, w = trimap.shape
    scale = max(COLOUR_SCALE, -(-max(h, w) // COLOUR_MAX_SIDE)) if min(h, w) >= 16 * COLOUR_SCALE else 1
    small = (w // scale, h // scale)
    im, tri = image, trimap
    if scale > 1:
        im = cv2.resize(np.asarray(image, np.float32), small, interpolation=cv2.INTER_AREA)
        tri = cv2.resize(trimap, small, interpolation=cv2.INTER_NEAREST)
        if not (tri == TRIMAP_FG).any() or not (tri == TRIMAP_BG).any():  # thin known regions vanished
            im, tri, scale = image, trimap, 1
    r = COLOUR_RADIUS
    alpha = estimate_alpha_sm(np.ascontiguousarray(im, dtype=np.float64), tri.astype(np.float64) / 255.0,
                              sample_refinement_radius=r, local_smoothing_radius1=r, local_smoothing_radius2=r,
                              local_smoothing_radius3=r).astype(np.float32)
    if scale > 1:
        alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(alpha, 0.0, 1.0)


def _unsure(alpha: np.ndarray, sure: float) -> np.ndarray:
    """H×W bool: alpha further than ``sure`` from both 0 and 1."""
    return (alpha > sure) & (alpha < 1.0 - sure)


def refinement_band(alpha: np.ndarray, trimap: np.ndarray, *, sure: float = SURE, margin: int = MARGIN,
                    contradicted: np.ndarray | None = None) -> np.ndarray:
    """H×W bool: the trimap-unknown pixels whose alpha the refinement solves for: the network's unsure
    pixels plus the ``contradicted`` ones (see :func:`contradicted_by_colour`), widened by ``margin`` px."""
    unsure = _unsure(alpha, sure)
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
    snapped = (alpha >= 0.5).astype(np.float32)
    return (trimap == TRIMAP_UNKNOWN) & ~_unsure(alpha, sure) & (np.abs(colour - snapped) > tolerance)


def nonlocal_weight_for(class_shares: Mapping[str, float], weight: float = NONLOCAL_WEIGHT) -> float:
    """The nonlocal term's weight for an image whose unknown region has these class shares (as
    ``MattingResult.class_shares``): 0 when :data:`TRANSLUCENT_CLASSES` hold at least ``TRANSLUCENT_LIMIT``
    of it, else ``weight``."""
    translucent = sum(share for name, share in class_shares.items() if name in TRANSLUCENT_CLASSES)
    return 0.0 if translucent >= TRANSLUCENT_LIMIT else weight


# One (candidate raster indices, KD-tree over their features) per nonlocal search.
Searches = list[tuple[np.ndarray, Any]]


def _features(image: np.ndarray, pixels: np.ndarray, xy_weight: float) -> np.ndarray:
    """(r, g, b, w·x, w·y) of the raster indices ``pixels`` of ``image``, x and y in units of its longer side."""
    h, w = image.shape[:2]
    scale = xy_weight * (1.0 / max(h - 1, w - 1, 1))
    f = np.empty((pixels.size, 5), np.float32)
    f[:, :3] = image.reshape(h * w, 3)[pixels]
    f[:, 3] = pixels % w * scale
    f[:, 4] = pixels // w * scale
    return f


def build_searches(image: np.ndarray, unknown: np.ndarray | None,
                   neighbours: tuple[tuple[int, float], ...] = NONLOCAL_NEIGHBOURS) -> Searches:
    """The nonlocal term's KD-trees: they depend on the image and the trimap only, so the predictor builds them
    beside the network. Building a tree is serial numba code that releases the GIL: the trees are built side by
    side."""
    from pymatting import KDTree  # numba JIT: import only when refining

    shape = image.shape[:2]
    candidates = [_search_candidates(shape, unknown, xy_weight) for _, xy_weight in neighbours]
    with ThreadPoolExecutor(len(neighbours)) as pool:
        trees = list(pool.map(lambda c, nb: KDTree(_features(image, c, nb[1])), candidates, neighbours))
    return list(zip(candidates, trees))


def _search_candidates(shape: tuple[int, int], unknown: np.ndarray | None, xy_weight: float) -> np.ndarray:
    """Raster indices (int32) of the pixels one nonlocal search may link to (see :data:`NONLOCAL_NEAR_PX`)."""
    if unknown is None:
        return np.arange(shape[0] * shape[1], dtype=np.int32)
    radius = NONLOCAL_NEAR_PX if xy_weight >= 1 else NONLOCAL_FAR_PX
    keep = cv2.dilate(unknown.astype(np.uint8), np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) > 0
    if xy_weight < 1:
        keep[::2, ::2] = True
    return np.flatnonzero(keep.ravel()).astype(np.int32)


def nonlocal_laplacian_rows(image: np.ndarray, band: np.ndarray, weight: float,
                            neighbours: tuple[tuple[int, float], ...] = NONLOCAL_NEIGHBOURS,
                            unknown: np.ndarray | None = None, searches: Searches | None = None) -> sparse.csr_matrix:
    """The ``band`` pixels' rows (B×N, N = H·W, in raster order of the band) of the graph Laplacian that links
    each band pixel to its nearest neighbours in (r, g, b, w·x, w·y) space, one search of ``k`` neighbours per
    ``(k, w)`` pair in ``neighbours``; x, y are in units of the crop's longer side. Each link weighs
    ``weight`` / (total k) and is symmetric, so the whole matrix is positive semi-definite (KNN matting's
    binary kernel). Only links from band pixels exist: the solve never needs the other rows. With the trimap's
    ``unknown`` region (H×W bool) the candidates are thinned far from it (:data:`NONLOCAL_NEAR_PX`,
    :data:`NONLOCAL_FAR_PX`); without it every pixel is a candidate. ``searches``: the :func:`build_searches`
    of this image, unknown region and neighbours, when built beforehand."""
    h, w = band.shape
    n = h * w
    # int32 indices (a crop is at most 1280² px): half the memory of the link lists, no index conversions in scipy
    inside = np.flatnonzero(band.ravel()).astype(np.int32)
    position = np.full(n, -1, np.int32)
    position[inside] = np.arange(inside.size, dtype=np.int32)
    link = weight / sum(k for k, _ in neighbours)
    if searches is None:
        searches = build_searches(image, unknown, neighbours)
    src, dst = [], []
    for (k, xy_weight), (cand, tree) in zip(neighbours, searches):
        _, idx = tree.query(_features(image, inside, xy_weight), k=min(k, cand.size))
        src.append(np.repeat(np.arange(inside.size, dtype=np.int32), idx.shape[1]))
        dst.append(cand[idx.ravel()])
    src, dst = np.concatenate(src), np.concatenate(dst)
    keep = inside[src] != dst  # a pixel is its own nearest neighbour: a self-link adds nothing
    src, dst = src[keep], dst[keep]
    back = position[dst]  # the far end's row, where it is a band pixel too
    both = back >= 0
    # Each link (i, j) adds +link at (i, i) and (j, j), -link at (i, j) and (j, i); only band rows are kept. The
    # diagonal is summed here, so the sparse build only merges the off-diagonal duplicates (mutual neighbours).
    diagonal = link * (np.bincount(src, minlength=inside.size) + np.bincount(back[both], minlength=inside.size))
    rows = np.concatenate([np.arange(inside.size, dtype=np.int32), src, back[both]])
    cols = np.concatenate([inside, dst, inside[src[both]]])
    vals = np.concatenate([diagonal, np.full(src.size + int(both.sum()), -link)])
    return sparse.csr_matrix((vals, (rows, cols)), shape=(inside.size, n))


@dataclass
class Prepared:
    """The refinement's work that needs only the image and the trimap (:func:`prepare_refinement`), done while
    the network runs: the colour alpha, and the nonlocal term's searches when the image is solved in one piece."""

    colour: np.ndarray | None
    searches: Searches | None = None


def prepare_refinement(image: np.ndarray, trimap: np.ndarray, *, nonlocal_term: bool,
                       colour_tolerance: float | None = COLOUR_TOLERANCE, tile: int = TILE,
                       context: int = CONTEXT) -> Prepared:
    """:class:`Prepared` for :func:`refine_alpha` with the same image, trimap and settings (``nonlocal_term``:
    whether the nonlocal term may apply; its weight comes from the network's class shares, later)."""
    unknown = trimap == TRIMAP_UNKNOWN
    if not unknown.any():
        return Prepared(None)
    colour = colour_alpha(image, trimap) if colour_tolerance is not None else None
    searches = build_searches(image, unknown) if nonlocal_term and _in_one_piece(trimap.shape, tile, context) else None
    return Prepared(colour, searches)


def refine_alpha(image: np.ndarray, trimap: np.ndarray, alpha: np.ndarray, *, sure: float = SURE,
                 margin: int = MARGIN, colour_tolerance: float | None = COLOUR_TOLERANCE,
                 epsilon: float = EPSILON, prior: float = PRIOR, colour_prior: float = COLOUR_PRIOR,
                 nonlocal_weight: float = 0.0, max_iterations: int = MAX_ITERATIONS, tile: int = TILE,
                 context: int = CONTEXT, prepared: Prepared | None = None) -> np.ndarray:
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
        nonlocal_weight: weight of the nonlocal (KNN) term added to the Laplacian (:func:`nonlocal_weight_for`
            from the semantic trimap); 0: the closed-form Laplacian alone.
        max_iterations: CG iterations per tile before giving up on that tile.
        tile, context: tiling of the solve (see ``TILE``).
        prepared: :func:`prepare_refinement` of this image and trimap with these settings (else done here).

    Returns:
        H×W float32 alpha: the solution in the band; elsewhere the trimap's values, and 0 or 1 where the
        network was sure. A tile whose solve does not converge keeps the network's alpha in its band.
    """
    start, weights = alpha, np.full(alpha.shape, prior, np.float32)
    contradicted = None
    if prepared is None:
        prepared = prepare_refinement(image, trimap, nonlocal_term=False, colour_tolerance=colour_tolerance)
    colour = prepared.colour
    # prepared searches cover the whole image: only a solve in one piece can use them
    searches = prepared.searches if _in_one_piece(trimap.shape, tile, context) else None
    if colour is not None:
        contradicted = contradicted_by_colour(alpha, trimap, colour, sure=sure, tolerance=colour_tolerance)
        start = np.where(contradicted, colour, alpha).astype(np.float32)
        weights[contradicted] = colour_prior
    band = refinement_band(alpha, trimap, sure=sure, margin=margin, contradicted=contradicted)
    # Outside the band every pixel is a constraint: the trimap's known regions, and the network's sure
    # pixels (that the colour does not contradict) snapped to 0 or 1.
    unknown = trimap == TRIMAP_UNKNOWN
    out = np.where(unknown, alpha >= 0.5, trimap == TRIMAP_FG).astype(np.float32)
    out[band] = start[band]
    h, w = trimap.shape
    x_spans = _spans(w, tile, context)
    for y0, y1 in _spans(h, tile, context):
        for x0, x1 in x_spans:
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
                            weights[cy0:cy1, cx0:cx1], max_iterations, nonlocal_weight,
                            unknown[cy0:cy1, cx0:cx1], searches)
            if solved is None:
                solved, cy0, cx0 = alpha, 0, 0  # this tile keeps the network's alpha
            out[y0:y1, x0:x1][core] = solved[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0][core]
    return out


def _in_one_piece(shape: tuple[int, int], tile: int, context: int) -> bool:
    """Whether :func:`refine_alpha` solves an image of this shape in one piece (no tiles)."""
    return all(len(_spans(n, tile, context)) == 1 for n in shape)


def _spans(n: int, tile: int, context: int) -> list[tuple[int, int]]:
    if n <= tile + 2 * context:
        return [(0, n)]
    return [(s, min(s + tile, n)) for s in range(0, n, tile)]


def band_laplacian_rows(image: np.ndarray, band: np.ndarray, epsilon: float) -> sparse.csr_matrix:
    """The ``band`` pixels' rows (B×N, raster order) of the closed-form matting Laplacian of ``image`` (H×W×3):
    equal to slicing the whole image's, but built strip by strip (:data:`LAPLACIAN_STRIP` rows of band pixels
    each) on the strip's bounding box widened by 2 px, which holds every 3×3 window around its band pixels
    with the window's centre off the box's border (where cf_laplacian skips windows). cf_laplacian allocates 25
    entries for every pixel it is given and runs on one core: a band along an outline fills a fraction of
    its bounding box, and the strips are built on two threads (numba releases the GIL)."""
    from pymatting import cf_laplacian  # numba JIT: import only when refining

    h, w = band.shape
    ys = np.flatnonzero(band.any(axis=1))
    strips = [(y, min(y + LAPLACIAN_STRIP, ys[-1] + 1)) for y in range(ys[0], ys[-1] + 1, LAPLACIAN_STRIP)]

    def strip_rows(y0: int, y1: int, eps: float) -> sparse.csr_matrix | None:
        xs = np.flatnonzero(band[y0:y1].any(axis=0))
        if xs.size == 0:
            return None
        by, bx = slice(max(0, y0 - 2), min(h, y1 + 2)), slice(max(0, xs[0] - 2), min(w, xs[-1] + 3))
        # this strip's band pixels only: windows touching no other pixel are skipped
        box = np.zeros((by.stop - by.start, bx.stop - bx.start), bool)
        box[y0 - by.start:y1 - by.start] = band[y0:y1, bx]
        lap = cf_laplacian(np.ascontiguousarray(image[by, bx], dtype=np.float64), epsilon=eps, is_known=~box)
        rows = lap[box.ravel(), :]
        yy, xx = np.mgrid[by, bx]
        to_image = (yy * w + xx).ravel()  # box raster index -> image raster index
        return sparse.csr_matrix((rows.data, to_image[rows.indices], rows.indptr), shape=(rows.shape[0], h * w))

    def build(eps: float) -> sparse.csr_matrix:
        with ThreadPoolExecutor(2) as pool:
            parts = [p for p in pool.map(lambda s: strip_rows(*s, eps), strips) if p is not None]
        return sparse.vstack(parts, format="csr")

    try:
        return build(epsilon)
    except ZeroDivisionError:
        # A window whose colours are (numerically) collinear: its regularised covariance's determinant,
        # computed by cofactors, cancels to exactly 0 when epsilon is tiny. A larger regulariser fixes it.
        log.debug("closed-form Laplacian singular at epsilon %g, rebuilt at %g", epsilon, EPSILON_FALLBACK)
        return build(max(epsilon, EPSILON_FALLBACK))


def _solve(image: np.ndarray, current: np.ndarray, band: np.ndarray, epsilon: float, prior: np.ndarray,
           max_iterations: int, nonlocal_weight: float = 0.0, unknown: np.ndarray | None = None,
           searches: Searches | None = None) -> np.ndarray | None:
    """One crop: alpha in ``band`` (H×W bool) given ``current`` everywhere else, pulled towards ``current``
    in the band with per-pixel weights ``prior``, under the closed-form Laplacian plus ``nonlocal_weight`` ×
    the nonlocal term (:func:`nonlocal_laplacian_rows`, its candidates from the trimap's ``unknown`` region, its
    ``searches`` if built beforehand); None if CG does not converge."""
    from pymatting import cg  # numba JIT: import only when refining

    inside = band.ravel()
    if not inside.any():  # a tile whose band pixels all lie on its held edge (context 0)
        return current.astype(np.float32)
    values = current.ravel().astype(np.float64)
    image = np.ascontiguousarray(image, dtype=np.float64)
    with ThreadPoolExecutor(1) as pool:
        # The nonlocal rows (tree builds: serial numba without the GIL) are assembled beside the Laplacian's build
        # and the factorisation of the preconditioner.
        pending = (pool.submit(nonlocal_laplacian_rows, image, band, nonlocal_weight, unknown=unknown,
                               searches=searches) if nonlocal_weight > 0 else None)
        rows = band_laplacian_rows(image, band, epsilon)
        x0 = values[inside]
        weights = prior.ravel()[inside].astype(np.float64)
        lap_band = (rows[:, inside] + sparse.diags(weights, format="csr")).tocsr()
        # Factorise only the local part, plus the nonlocal term's typical diagonal (NONLOCAL_DIAGONAL): its links
        # reach across the crop, and an incomplete Cholesky of them fills in (5 s instead of 0.3 s on a 40 % band);
        # CG makes up the rest.
        factor = lap_band
        if pending is not None:
            factor = lap_band + sparse.diags(np.full(x0.size, NONLOCAL_DIAGONAL * nonlocal_weight))
        preconditioner = _preconditioner(factor)
        if pending is not None:
            nonlocal_rows = pending.result()
            rows = rows + nonlocal_rows
            lap_band = (lap_band + nonlocal_rows[:, inside]).tocsr()
    held = np.where(inside, 0.0, values)  # the held pixels' values (a product, not a column slice: cheaper)
    rhs = weights * x0 - rows.dot(held)
    try:
        solved = cg(lap_band, rhs, x0=x0, M=preconditioner, rtol=1e-5, maxiter=max_iterations)
    except ValueError as exc:  # pymatting's "did not converge"
        log.warning("refinement of a %d-px band skipped: %s", int(inside.sum()), exc)
        return None
    values[inside] = np.clip(solved, 0.0, 1.0)
    return values.reshape(current.shape).astype(np.float32)


def _preconditioner(matrix: sparse.csr_matrix) -> Callable[[np.ndarray], np.ndarray]:
    """Incomplete Cholesky (CG then converges in a few iterations: about 2x faster than Jacobi on the
    held-out photos' bands); Jacobi where the factorisation fails (near-singular flat-colour windows).
    The factor is thresholded more coarsely than pymatting's default (1e-3 instead of 1e-4, with a diagonal
    shift, which that threshold needs to stay positive definite): factorising dominated the refinement, and
    the coarser factor made it 27 % faster on 12 training / validation crops for the same SAD (10.290 vs
    10.292). Only the preconditioner changes; CG solves the same system to the same tolerance."""
    from pymatting import ichol, jacobi

    # pymatting reports each failed attempt with print(): keep that off stdout and in the debug log.
    # (A process-wide swap, but only print() consults sys.stdout; logging handlers hold their stream.)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            # 3e-3 between the two: where 1e-3 fails (smooth, upscaled content), 1e-2 made a weak factor (~60 CG
            # iterations per 1024-px tile of GT04 × 4); 3e-3 often holds and takes about half as many.
            return ichol(matrix.tocsc(), discard_threshold=1e-3, shifts=[1e-3, 3e-3, 1e-2])
    except ValueError:
        log.debug("incomplete Cholesky failed, Jacobi instead")
        return jacobi(matrix)
    finally:
        if captured.getvalue():
            log.debug("pymatting: %s", captured.getvalue().strip())
