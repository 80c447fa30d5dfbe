"""Band refinement: the closed-form re-solve recovers detail a blurry network loses, touches nothing else."""

from __future__ import annotations

import logging
import warnings

import cv2
import numpy as np
import pytest
import torch

from backend import protocol as P
from backend.metrics import sad_error
from backend.models.registry import build_model
from backend.predictor import MattingPredictor
from backend.refinement import (
    EPSILON_FALLBACK,
    NONLOCAL_FAR_PX,
    NONLOCAL_NEAR_PX,
    NONLOCAL_NEIGHBOURS,
    NONLOCAL_WEIGHT,
    TRANSLUCENT_CLASSES,
    band_laplacian_rows,
    colour_alpha,
    contradicted_by_colour,
    nonlocal_laplacian_rows,
    nonlocal_weight_for,
    prepare_refinement,
    refine_alpha,
    refinement_band,
)
from tests.conftest import make_example


def strands_scene(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red object with 1-px hair strands and a soft edge over a smooth blue-green background:
    (image H×W×3 float, trimap, ground-truth alpha)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    alpha = np.clip((70 - yy) / 3.0, 0, 1)  # soft horizontal edge at y ≈ 70
    for x in range(20, w - 20, 9):  # strands hanging below the edge
        alpha[70:95, x] = 1.0
    fg = np.dstack([0.9 + 0.05 * np.sin(xx / 7), 0.2 + 0 * xx, 0.15 + 0 * xx])
    bg = np.dstack([0.1 + 0 * xx, 0.3 + 0.3 * yy / h, 0.6 + 0.2 * xx / w])
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    trimap = np.full((h, w), 128, np.uint8)
    trimap[:55] = 255
    trimap[105:] = 0
    return image.astype(np.float32), trimap, alpha


def blurry_network(alpha: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """What an under-trained decoder gives: the right shape, strands smeared (known regions forced)."""
    a = cv2.GaussianBlur(alpha, (0, 0), 3.0)
    a[trimap == 0], a[trimap == 255] = 0.0, 1.0
    return a.astype(np.float32)


def test_refinement_recovers_strands_a_blurry_alpha_lost() -> None:
    image, trimap, gt = strands_scene()
    net = blurry_network(gt, trimap)
    refined = refine_alpha(image, trimap, net)
    before, after = sad_error(net, gt, trimap), sad_error(refined, gt, trimap)
    assert after < 0.3 * before, (before, after)
    # known regions are the trimap's; outside the band the network's sure pixels snap to 0 / 1
    assert (refined[trimap == 0] == 0).all() and (refined[trimap == 255] == 1).all()
    band = refinement_band(net, trimap, contradicted=contradicted_by_colour(net, trimap, colour_alpha(image, trimap)))
    outside = (trimap == 128) & ~band
    assert outside.any()
    np.testing.assert_array_equal(refined[outside], (net[outside] >= 0.5).astype(np.float32))
    assert refined.dtype == np.float32 and 0 <= refined.min() and refined.max() <= 1


def test_band_is_the_unsure_pixels_widened_by_the_margin() -> None:
    trimap = np.full((20, 20), 128, np.uint8)
    trimap[:, :2] = 255
    alpha = np.zeros((20, 20), np.float32)
    alpha[10, 10] = 0.5
    assert refinement_band(alpha, trimap, margin=0).sum() == 1
    assert refinement_band(alpha, trimap, margin=2).sum() == 25
    alpha[:, :2] = 0.5  # unsure but trimap-known pixels are never solved
    assert not refinement_band(alpha, trimap, margin=0)[:, :2].any()


def holes_scene(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red object whose unknown band has round holes showing the blue background."""
    alpha = np.zeros((h, w), np.float32)
    alpha[:80] = 1.0
    for x in range(25, w - 20, 30):
        cv2.circle(alpha, (x, 60), 6, 0.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.7)
    fg, bg = np.array([0.85, 0.2, 0.15], np.float32), np.array([0.1, 0.35, 0.7], np.float32)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    trimap = np.full((h, w), 128, np.uint8)
    trimap[:45] = 255
    trimap[95:] = 0
    return image.astype(np.float32), trimap, alpha


def holes_scene_filled() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The holes scene and a network that is sure of everything and filled the holes: (image, trimap, alpha)."""
    image, trimap, gt = holes_scene()
    net = np.where(np.arange(gt.shape[0])[:, None] < 80, 0.999, 0.001) * np.ones_like(gt)
    net[trimap == 0], net[trimap == 255] = 0.0, 1.0
    return image, trimap, net.astype(np.float32)


def test_colour_check_re_solves_holes_the_network_confidently_filled() -> None:
    image, trimap, net = holes_scene_filled()
    gt = holes_scene()[2]
    ca = colour_alpha(image, trimap)
    unknown = trimap == 128
    assert np.abs(ca - gt)[unknown].mean() < 0.05  # colour samples separate these two colours well
    holes = unknown & (gt < 0.1) & (net > 0.5)
    assert contradicted_by_colour(net, trimap, ca)[holes].all()
    assert not refinement_band(net, trimap)[holes].any()
    checked = refine_alpha(image, trimap, net)
    trusted = refine_alpha(image, trimap, net, colour_tolerance=None)
    assert (trusted[holes] == 1).all()  # a hole ringed by sure pixels stays filled without the check
    assert checked[holes].mean() < 0.1 and (checked[holes] < 0.25).all()
    assert sad_error(checked, gt, trimap) < 0.25 * sad_error(trusted, gt, trimap)


def test_no_band_snaps_and_an_unsolved_band_keeps_the_network_alpha(caplog: pytest.LogCaptureFixture) -> None:
    image, trimap, gt = strands_scene()
    sure = np.where(gt > 0.5, 0.995, 0.01).astype(np.float32)
    snapped = refine_alpha(image, trimap, sure, colour_tolerance=None)
    np.testing.assert_array_equal(snapped, np.where(trimap == 128, sure >= 0.5, trimap == 255))
    image, trimap, net = holes_scene_filled()
    with caplog.at_level(logging.WARNING, logger="backend.refinement"):
        unsolved = refine_alpha(image, trimap, net, max_iterations=1)
    assert "did not converge" in caplog.text
    # the band includes the pixels the colour check contradicted; those too get the network's alpha back
    contradicted = contradicted_by_colour(net, trimap, colour_alpha(image, trimap))
    band = refinement_band(net, trimap, contradicted=contradicted)
    assert contradicted.any()
    np.testing.assert_array_equal(unsolved[band], net[band])


def test_a_singular_laplacian_window_is_rebuilt_with_a_larger_regulariser() -> None:
    """Flat-colour windows have a zero colour covariance; with epsilon 0 its determinant is exactly 0 and
    pymatting's Laplacian divides by it. The solve rebuilds at EPSILON_FALLBACK instead of raising."""
    image, trimap, gt = strands_scene()
    image[:, :30] = 0.5  # a flat grey strip through the unknown band
    net = blurry_network(gt, trimap)
    fallback = refine_alpha(image, trimap, net, epsilon=0.0, colour_tolerance=None)
    regular = refine_alpha(image, trimap, net, epsilon=EPSILON_FALLBACK, colour_tolerance=None)
    np.testing.assert_allclose(fallback, regular, atol=1e-6)
    assert sad_error(fallback, gt, trimap) < 0.5 * sad_error(net, gt, trimap)  # the strip itself holds no detail


def test_tiled_solve_stays_close_to_one_piece() -> None:
    """Large images are solved in tiles (bounded memory). A held crop edge pins the solution near it, so
    tiles need generous context: the closed-form solution propagates far along this synthetic scene's straight
    edge at epsilon 1e-7 (context 96 px needed here; 64 px gave 1.9x the one-piece error). On real photos
    upscaled 2x (GT04, GT13) the shipped 1024 + 128 tiling matched the one-piece SAD within 0.1 %."""
    image, trimap, gt = strands_scene(200, 260)
    net = blurry_network(gt, trimap)
    whole = sad_error(refine_alpha(image, trimap, net), gt, trimap)
    tiled = sad_error(refine_alpha(image, trimap, net, tile=96, context=96), gt, trimap)
    assert whole <= tiled < 1.1 * whole < 0.05 * sad_error(net, gt, trimap)


def test_predictor_refine_modes() -> None:
    torch.manual_seed(0)
    predictor = MattingPredictor(build_model("sim_tiny"), build_model("classifier_tiny"), device="cpu")
    image, trimap, _ = make_example()
    off = predictor.predict(image, trimap, refine="off")
    band = predictor.predict(image, trimap, refine=P.REFINE_BAND)
    assert predictor.refine == P.REFINE_DEFAULT == P.REFINE_NONLOCAL
    assert "refine" in band.timings and "refine" not in off.timings
    image_f = image.astype(np.float32) / 255
    np.testing.assert_array_equal(band.alpha, refine_alpha(image_f, trimap, off.alpha))
    knn = predictor.predict(image, trimap, want_semantic=True)
    expected = refine_alpha(image_f, trimap, off.alpha, nonlocal_weight=nonlocal_weight_for(knn.class_shares))
    np.testing.assert_array_equal(knn.alpha, expected)
    [batched] = predictor.predict_batch([image], [trimap])
    np.testing.assert_array_equal(batched.alpha, knn.alpha)
    with pytest.raises(ValueError, match="refine"):
        predictor.predict(image, trimap, refine="smooth")
    with pytest.raises(ValueError, match="refine"):
        MattingPredictor(build_model("sim_tiny"), device="cpu", refine="yes")


def test_failed_incomplete_cholesky_falls_back_to_jacobi_quietly(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import pymatting

    def failing_ichol(matrix, **kwargs):  # what pymatting does on a matrix it cannot factorise
        print("PERFORMANCE WARNING:")
        raise ValueError("Thresholded incomplete Cholesky decomposition failed")

    image, trimap, gt = strands_scene()
    net = blurry_network(gt, trimap)
    expected = refine_alpha(image, trimap, net)
    monkeypatch.setattr(pymatting, "ichol", failing_ichol)
    fallback = refine_alpha(image, trimap, net)
    assert capsys.readouterr().out == ""
    np.testing.assert_allclose(fallback, expected, atol=2e-3)


@pytest.mark.parametrize("missing", [0, 255])
def test_colour_check_is_skipped_without_known_foreground_or_background(missing: int) -> None:
    """Nothing to sample colours from: no check, no warnings, the threshold band alone (as colour_tolerance=None)."""
    image, trimap, gt = strands_scene()
    trimap = np.where(trimap == missing, 128, trimap).astype(np.uint8)
    net = blurry_network(gt, trimap)
    assert colour_alpha(image, trimap) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(refine_alpha(image, trimap, net),
                                      refine_alpha(image, trimap, net, colour_tolerance=None))


def test_nonlocal_rows_are_a_symmetric_laplacian_of_links_that_touch_the_band() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((24, 30, 3)).astype(np.float32)
    band = np.zeros((24, 30), bool)
    band[8:16, 5:25] = True
    rows = nonlocal_laplacian_rows(image, band, 0.2)
    inside = np.flatnonzero(band.ravel())
    assert rows.shape == (inside.size, image.shape[0] * image.shape[1])
    np.testing.assert_allclose(np.asarray(rows.sum(axis=1)).ravel(), 0.0, atol=1e-12)  # rows of a Laplacian
    block = rows[:, inside].toarray()
    np.testing.assert_allclose(block, block.T, atol=1e-12)
    assert np.linalg.eigvalsh(block).min() > -1e-10  # with the outside held, positive semi-definite
    # k links of weight 0.2 / (total k) leave each band pixel per search (at most one self-link per search is
    # dropped); more arrive from other band pixels
    total = sum(k for k, _ in NONLOCAL_NEIGHBOURS)
    assert (block.diagonal() >= 0.2 * (total - len(NONLOCAL_NEIGHBOURS)) / total - 1e-9).all()
    assert (np.abs(rows[:, ~band.ravel()]).sum(axis=1) > 0).any()  # links reach the held pixels too


def test_band_laplacian_rows_equal_the_whole_images_laplacian_rows() -> None:
    """Built on the band's bounding box, the rows are those of the whole image's Laplacian: for a band inside
    the image, one at its top-left corner and one along its right edge."""
    from pymatting import cf_laplacian

    rng = np.random.default_rng(1)
    image = rng.random((40, 50, 3))
    for rows_, cols in ((slice(12, 20), slice(15, 30)), (slice(0, 6), slice(0, 9)), (slice(5, 35), slice(46, 50))):
        band = np.zeros((40, 50), bool)
        band[rows_, cols] = True
        band[rows_.start + 1, cols.start + 1] = False  # a held pixel inside the band
        inside = band.ravel()
        whole = cf_laplacian(image, epsilon=1e-7, is_known=~band)[inside, :]
        got = band_laplacian_rows(image, band, 1e-7)
        assert got.shape == whole.shape
        assert abs(got - whole).max() == 0


def test_nonlocal_candidates_thin_out_far_from_the_unknown_region() -> None:
    """With the trimap's unknown region, the nearby search links only within NONLOCAL_NEAR_PX of it and the
    colour-anywhere search reaches every 2nd row / column beyond NONLOCAL_FAR_PX; the rows stay a Laplacian."""
    rng = np.random.default_rng(2)
    h, w = 40, 400
    image = rng.random((h, w, 3)).astype(np.float32)
    unknown = np.zeros((h, w), bool)
    unknown[:, 10:20] = True
    band = unknown.copy()
    rows = nonlocal_laplacian_rows(image, band, 0.2, unknown=unknown)
    np.testing.assert_allclose(np.asarray(rows.sum(axis=1)).ravel(), 0.0, atol=1e-12)
    ys, xs = np.divmod(rows.indices[rows.data < 0], w)
    far = xs >= 20 + NONLOCAL_FAR_PX
    assert far.any() and (ys[far] % 2 == 0).all() and (xs[far] % 2 == 0).all()
    near_only = nonlocal_laplacian_rows(image, band, 0.2, ((10, 1.0),), unknown=unknown)
    assert (near_only.indices % w).max() < 20 + NONLOCAL_NEAR_PX
    assert (nonlocal_laplacian_rows(image, band, 0.2, ((10, 1.0),)).indices % w).max() >= 20 + NONLOCAL_NEAR_PX


def test_nonlocal_term_is_off_for_mostly_translucent_unknown_regions() -> None:
    assert nonlocal_weight_for({"hair_easy": 0.7, "smoke_cloud": 0.3}, 0.2) == 0.2
    assert nonlocal_weight_for({"hair_easy": 0.4, "smoke_cloud": 0.35, "glass_ice": 0.25}, 0.2) == 0.0
    assert nonlocal_weight_for({"my_custom_class": 1.0}, 0.2) == 0.2  # custom classes: opaque unless named
    assert {"glass_ice", "plastic_bag", "smoke_cloud", "water_drop"} == TRANSLUCENT_CLASSES


def test_nonlocal_term_recovers_strands_from_colours_elsewhere() -> None:
    """Strands far below the edge, with no sure pixel near them: the local Laplacian has only the blurry
    prior to go by, the nonlocal term links them to the object's known colour."""
    image, trimap, gt = strands_scene()
    net = blurry_network(gt, trimap)
    local = sad_error(refine_alpha(image, trimap, net, nonlocal_weight=0.0), gt, trimap)
    both = sad_error(refine_alpha(image, trimap, net, nonlocal_weight=NONLOCAL_WEIGHT), gt, trimap)
    assert both < local, (both, local)


def test_refinement_prepared_beside_the_network_gives_the_same_alpha() -> None:
    """prepare_refinement (colour alpha and the nonlocal searches, from the image and trimap only) changes
    nothing but when the work is done; prepared searches of the whole image are not used by a tiled solve."""
    image, trimap, gt = strands_scene()
    net = blurry_network(gt, trimap)
    prepared = prepare_refinement(image, trimap, nonlocal_term=True)
    assert prepared.colour is not None and prepared.searches is not None
    for weight in (0.0, NONLOCAL_WEIGHT):
        np.testing.assert_array_equal(refine_alpha(image, trimap, net, nonlocal_weight=weight, prepared=prepared),
                                      refine_alpha(image, trimap, net, nonlocal_weight=weight))
    tiled = {"tile": 48, "context": 16}
    np.testing.assert_array_equal(
        refine_alpha(image, trimap, net, nonlocal_weight=NONLOCAL_WEIGHT, prepared=prepared, **tiled),
        refine_alpha(image, trimap, net, nonlocal_weight=NONLOCAL_WEIGHT, **tiled))
