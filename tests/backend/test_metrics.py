"""Tests for backend.metrics: hand-computable cases, DIM-specific semantics, real-data sanity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from backend.metrics import (
    METRIC_KEYS,
    MetricAccumulator,
    aggregate_metrics,
    compute_metrics,
    connectivity_error,
    gauss_gradient,
    gauss_gradient_kernel,
    gradient_error,
    mse_error,
    sad_error,
    to_unit_alpha,
)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "../shared/data/alphamatting"
BASELINE = REPO / "../shared/docs/baseline"


def _u(shape):
    return np.full(shape, 128, np.uint8)


# ---------------------------------------------------------------- SAD / MSE


def test_sad_mse_hand_values():
    pred = np.array([[0.0, 0.5], [1.0, 0.25]])
    gt = np.array([[1.0, 0.5], [0.0, 0.75]])
    tri = np.array([[128, 128], [255, 128]], np.uint8)  # (1, 0) is known: not counted
    # |diff| on unknown = 1, 0, 0.5
    assert sad_error(pred, gt, tri) == pytest.approx(1.5)
    assert mse_error(pred, gt, tri) == pytest.approx((1 + 0 + 0.25) / 3)  # divided by #unknown
    m = compute_metrics(pred, gt, tri)
    assert m["sad"] == pytest.approx(1.5e-3)
    assert m["mse"] == pytest.approx(1.25 / 3 * 1e3)
    assert list(m) == list(METRIC_KEYS)


def test_only_exact_128_counts():
    pred = np.zeros((1, 4))
    gt = np.ones((1, 4))
    tri = np.array([[127, 128, 129, 0]], np.uint8)
    assert sad_error(pred, gt, tri) == 1.0


def test_dtype_scaling_uint8_uint16_float_agree():
    rng = np.random.default_rng(0)
    g8 = rng.integers(0, 256, (6, 7)).astype(np.uint8)
    p8 = rng.integers(0, 256, (6, 7)).astype(np.uint8)
    tri = _u((6, 7))
    ref = compute_metrics(p8, g8, tri)
    as16 = compute_metrics(p8.astype(np.uint16) * 257, g8.astype(np.uint16) * 257, tri)
    asf = compute_metrics(p8 / 255.0, g8.astype(np.float32) / 255, tri)
    for k in METRIC_KEYS:
        assert as16[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-12)
        assert asf[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-12)


def test_no_unknown_pixels_gives_zeros():
    m = compute_metrics(np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3), np.uint8))
    assert m == {"sad": 0.0, "mse": 0.0, "grad": 0.0, "conn": 0.0}


@pytest.mark.parametrize(
    "pred, gt, tri, msg",
    [
        (np.zeros((2, 2)), np.zeros((2, 3)), _u((2, 2)), "shape mismatch"),
        (np.zeros((2, 2, 3)), np.zeros((2, 2)), _u((2, 2)), "2-D"),
        (np.zeros((2, 2), np.int32), np.zeros((2, 2)), _u((2, 2)), "dtype"),
        (np.full((2, 2), 1.5), np.zeros((2, 2)), _u((2, 2)), r"\[0, 1\]"),
        (np.full((2, 2), np.nan), np.zeros((2, 2)), _u((2, 2)), "NaN"),
        (np.zeros((2, 2)), np.zeros((2, 2)), np.full((2, 2), 0.5), "raw 8-bit"),
        (np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2), np.uint8), "empty"),
    ],
)
def test_validation_errors(pred, gt, tri, msg):
    with pytest.raises(ValueError, match=msg):
        compute_metrics(pred, gt, tri)


def test_accepts_hw1_and_clips_tiny_overshoot():
    a = to_unit_alpha(np.full((2, 2, 1), 1.0 + 1e-7))
    assert a.shape == (2, 2) and a.max() == 1.0


# ---------------------------------------------------------------- Grad


def test_kernel_matches_dim_definition():
    k = gauss_gradient_kernel(1.4)
    assert k.shape == (9, 9)  # half size ceil(1.4*sqrt(-2 ln(sqrt(2 pi)*1.4*0.01))) = 4
    assert np.sum(k * k) == pytest.approx(1.0)
    # hx(i, j) = G(i) G'(j): antisymmetric along columns, symmetric along rows
    assert np.allclose(k, -k[:, ::-1])
    assert np.allclose(k, k[::-1, :])
    # G'(u) = -u G(u) / sigma^2 -> positive weights left of the centre column
    assert k[4, 0] > 0 and k[4, 8] < 0 and k[4, 4] == 0


def _convolve_replicate_loops(img, k):
    """Independent brute-force reference: MATLAB imfilter(img, k, 'replicate', 'conv')."""
    h, w = img.shape
    r = k.shape[0] // 2
    out = np.zeros_like(img, dtype=np.float64)
    for y in range(h):
        for x in range(w):
            s = 0.0
            for i in range(-r, r + 1):
                for j in range(-r, r + 1):
                    yy = min(max(y - i, 0), h - 1)
                    xx = min(max(x - j, 0), w - 1)
                    s += k[i + r, j + r] * img[yy, xx]
            out[y, x] = s
    return out


def test_gauss_gradient_matches_bruteforce_convolution():
    rng = np.random.default_rng(1)
    img = rng.random((6, 11))
    gx, gy = gauss_gradient(img, 1.4)
    k = gauss_gradient_kernel(1.4)
    assert np.allclose(gx, _convolve_replicate_loops(img, k))
    assert np.allclose(gy, _convolve_replicate_loops(img, k.T))


def test_gradient_sign_and_constant():
    ramp = np.tile(np.linspace(0, 1, 12), (5, 1))  # increases to the right
    gx, gy = gauss_gradient(ramp)
    assert gx[2, 6] > 0 and abs(gy[2, 6]) < 1e-12
    const = np.full((5, 5), 0.3)
    assert gradient_error(const, const * 0 + 0.7, _u((5, 5))) == 0.0  # both constant: zero gradients


def test_gradient_uses_mat2gray_not_div255():
    rng = np.random.default_rng(2)
    gt = rng.random((16, 16))
    gt[0, 0], gt[0, 1] = 0.0, 1.0
    # A dimmed prediction (never reaches 1): identical after min-max rescaling -> zero error.
    assert gradient_error(0.5 * gt, gt, _u((16, 16))) == pytest.approx(0.0, abs=1e-9)
    assert gradient_error(np.zeros((16, 16)), gt, _u((16, 16))) > 0


def test_gradient_error_hand_formula():
    rng = np.random.default_rng(3)
    gt = rng.random((8, 9))
    gt[0, 0], gt[-1, -1] = 0.0, 1.0
    pred = np.zeros((8, 9))
    pred[:, 5:] = 1.0
    tri = _u((8, 9))
    tri[:2] = 0
    k = gauss_gradient_kernel()
    amp = lambda a: np.hypot(_convolve_replicate_loops(a, k), _convolve_replicate_loops(a, k.T))
    expected = np.sum(((amp(pred) - amp(gt)) ** 2)[tri == 128])
    assert gradient_error(pred, gt, tri) == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- Conn


def test_conn_identical_is_zero():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (10, 10)).astype(np.uint8)
    assert connectivity_error(a, a, _u((10, 10))) == 0.0


def test_conn_hand_value_two_components():
    # pred [1 0 1], gt all 1. For every t>0 the mask is {0, 2}: tie, first (column 0) wins -> Omega = {0}.
    # t=0.1: pixels 1, 2 get l=0; pixel 0 never leaves Omega -> l=1.
    # pred: d = [0, 0, 1] -> phi = [1, 1, 0];  gt: d = [0, 1, 1] -> phi = [1, 0, 0];  sum |.| = 1
    pred = np.array([[255, 0, 255]], np.uint8)
    gt = np.full((1, 3), 255, np.uint8)
    assert connectivity_error(pred, gt, _u((1, 3))) == pytest.approx(1.0)
    assert compute_metrics(pred, gt, _u((1, 3)))["conn"] == pytest.approx(1e-3)


def test_conn_background_label_is_never_omega():
    # 1x5: pred = gt = [1 1 0 0 0] except pred[1] = 0.5. The below-threshold region (3 px) is larger
    # than the foreground component (<= 2 px); a port that counts label 0 would pick it.
    gt = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]])
    pred = np.array([[1.0, 0.5, 0.0, 0.0, 0.0]])
    # Correct: t<=0.5 Omega={0,1}; t=0.6 Omega={0}: pixel 1 -> l=0.5; pixels 2-4 -> l=0 at t=0.1;
    # pixel 0 -> l=1. Pixel 1: pred d=0 -> phi 1; gt d=0.5 -> phi 0.5 -> error 0.5; rest 0.
    assert connectivity_error(pred, gt, _u((1, 5))) == pytest.approx(0.5)


def test_conn_tie_breaks_column_major_like_matlab():
    # Components {(0,1)} and {(1,0)} tie at t=0.1..0.3. MATLAB numbers (1,0) first (column-major).
    # Omega={(1,0)}: it leaves at t=0.4 -> l=0.3. Scored pixel (1,0): pred d=0.05 -> phi 1,
    # gt d=0.7 -> phi 0.3 -> 0.7. (Row-major tie-break would give l=0 -> |0.65 - 0| = 0.65.)
    pred = np.array([[0.0, 0.55], [0.35, 0.0]])
    gt = np.ones((2, 2))
    tri = np.array([[0, 0], [128, 0]], np.uint8)
    assert connectivity_error(pred, gt, tri) == pytest.approx(0.7, abs=1e-6)


def test_conn_empty_component_uses_previous_threshold():
    # pred 51 (=0.2 exactly in single precision, counts as >= 0.2), gt 128. At t=0.3 Omega is empty:
    # the pixel gets l=0.2 (guarded DIM code). pred d=0 -> phi 1; gt d=128/255-0.2 -> phi=1-d.
    err = connectivity_error(np.array([[51]], np.uint8), np.array([[128]], np.uint8), _u((1, 1)))
    assert err == pytest.approx(128 / 255 - 0.2, abs=1e-6)


def test_conn_float32_threshold_ties_like_single():
    # 153/255 == 0.6 in single precision and counts as >= the 0.6 threshold (MATLAB single).
    # pred=gt=153 everywhere -> zero error; the real check is the level: pred 153 vs gt 255.
    pred = np.array([[153]], np.uint8)
    gt = np.array([[255]], np.uint8)
    # Omega={px} for t<=0.6, empty at 0.7 -> l=0.6. pred d=0 -> 1; gt d=0.4 -> 0.6 -> 0.4.
    assert connectivity_error(pred, gt, _u((1, 1))) == pytest.approx(0.4, abs=1e-6)


# ---------------------------------------------------------------- aggregation


def test_aggregate_overall_and_groups():
    recs = [{"sad": 1.0, "mse": 2.0}, {"sad": 3.0, "mse": 4.0}, {"sad": 5.0, "mse": 6.0, "time": 1.0}]
    s = aggregate_metrics(recs, ["a", "b", "a"])
    assert s["overall"]["sad"] == pytest.approx(3.0)
    assert s["overall"]["count"] == 3
    assert s["overall"]["time"] == pytest.approx(1.0)  # averaged over the records that have it
    assert s["groups"]["a"]["sad"] == pytest.approx(3.0)
    assert s["groups"]["b"]["mse"] == pytest.approx(4.0)
    assert list(s["groups"]) == ["a", "b"]
    acc = MetricAccumulator()
    acc.add({"sad": 2.0})
    assert len(acc) == 1 and acc.summary()["groups"] == {}
    with pytest.raises(ValueError):
        aggregate_metrics(recs, ["a"])


# ---------------------------------------------------------------- real data


def _load(rel):
    from PIL import Image

    return np.asarray(Image.open(DATA / rel).convert("L"))


@pytest.mark.skipif(not DATA.is_dir(), reason="shared alphamatting data not present")
def test_real_image_sanity():
    import cv2

    gt = _load("alpha/GT01.png")
    tri = _load("trimap1/GT01.png")
    n = int((tri == 128).sum())
    assert compute_metrics(gt, gt, tri) == {k: 0.0 for k in METRIC_KEYS}

    # trimap as alpha: the unknown band predicted as 128/255
    m = compute_metrics(tri, gt, tri)
    g = gt[tri == 128] / 255.0
    assert m["sad"] == pytest.approx(np.abs(128 / 255 - g).sum() / 1000)
    assert m["mse"] == pytest.approx(np.mean((128 / 255 - g) ** 2) * 1e3)
    assert 0 < m["sad"] < n / 1000 and 0 < m["mse"] < 1000

    blurred = compute_metrics(cv2.GaussianBlur(gt, (9, 9), 3), gt, tri)
    for k in METRIC_KEYS:
        assert 0 < blurred[k] < m[k], k  # a blurred GT is closer than the flat trimap guess


@pytest.mark.slow
@pytest.mark.skipif(not (DATA.is_dir() and BASELINE.is_dir()), reason="shared data/baseline not present")
def test_reproduces_closed_form_baseline_sad_mse():
    """pymatting closed-form alpha on GT19/Trimap1 (~1 s) matches baseline_trimap1.json."""
    pymatting = pytest.importorskip("pymatting")
    from PIL import Image

    name = "GT19.png"
    rows = json.loads((BASELINE / "baseline_trimap1.json").read_text())["rows"]
    ref = next(r for r in rows if r["method"] == "cf" and r["image"] == name)
    image = np.asarray(Image.open(DATA / "image" / name).convert("RGB"), dtype=np.float64) / 255.0
    tri = _load(f"trimap1/{name}")
    gt = _load(f"alpha/{name}")
    # The baseline scored the unquantised float alpha, clipped to [0, 1].
    alpha = np.clip(pymatting.estimate_alpha_cf(image, tri / 255.0), 0.0, 1.0)
    m = compute_metrics(alpha, gt, tri)
    assert int((tri == 128).sum()) == ref["n_unknown"]
    assert round(m["sad"], 2) == round(ref["sad"], 2)
    assert m["sad"] == pytest.approx(ref["sad"], abs=5e-3)
    assert m["mse"] / 1e3 == pytest.approx(ref["mse"], abs=5e-5)  # baseline MSE is unscaled
    assert math.isfinite(m["grad"]) and math.isfinite(m["conn"])
