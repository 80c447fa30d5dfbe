"""Augmentation steps: trimap invariants, crops on unknown pixels, composition, photometric steps."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data import transforms as T
from trainer.data.backgrounds import BackgroundSource, generate_background
from trainer.data.synthetic import generate_indexed


def _sample(cls: str = "hair_hard", size: int = 160, index: int = 0) -> T.Sample:
    s = generate_indexed(cls, 0, index, size)
    return {
        "fg": s.fg.astype(np.float32) / 255,
        "alpha": s.alpha.astype(np.float32) / 255,
        "class_id": s.class_id,
    }


def _assert_trimap_ok(tri: np.ndarray, alpha: np.ndarray) -> None:
    assert tri.dtype == np.uint8 and tri.shape == alpha.shape
    assert set(np.unique(tri)) <= {0, 128, 255}
    assert (tri[T.unknown_mask(alpha)] == 128).all(), "unknown must cover every non-definite alpha pixel"
    assert (alpha[tri == 255] > 1 - 1 / 255).all() and (alpha[tri == 0] < 1 / 255).all()


@pytest.mark.parametrize("mode", ["sim", "gca", "mixed"])
def test_trimap_invariants(mode: str) -> None:
    rng = np.random.default_rng(0)
    step = T.GenerateTrimap(mode)
    for cls in ("hair_hard", "sharp", "smoke_cloud", "net"):
        for _ in range(3):
            s = step(_sample(cls), rng)
            _assert_trimap_ok(s["trimap"], s["alpha"])


def test_trimap_band_grows_with_kernel() -> None:
    a = _sample("sharp")["alpha"]
    small = (T.trimap_from_alpha(a, 3, 1) == 128).sum()
    big = (T.trimap_from_alpha(a, 5, 10) == 128).sum()
    asym = T.trimap_from_alpha(a, 1, 1, 29, 1)  # fg not eroded, bg eroded a lot
    assert big > small
    assert (asym == 255).sum() == (a > 1 - 0.5 / 255).sum()
    with pytest.raises(ValueError):
        T.GenerateTrimap("wide")


@pytest.mark.parametrize("k,iters", [(3, 10), (4, 10), (5, 15), (4, 1), (10, 1), (28, 1)])
def test_trimap_band_is_centred_on_the_edge(k: int, iters: int) -> None:
    """A disc's unknown band and definite foreground stay centred on the disc for every kernel size: even
    sizes (SIM's 4, GCA's 2…28) used to shift them by up to 5 px, teaching an edge offset."""
    import cv2

    a = np.zeros((201, 201), np.float32)
    cv2.circle(a, (100, 100), 50, 1.0, -1)
    tri = T.trimap_from_alpha(a, k, iters)
    for region in (tri == 128, tri == 255):
        ys, xs = np.nonzero(region)
        assert abs(ys.mean() - 100) < 0.05 and abs(xs.mean() - 100) < 0.05, (k, iters, ys.mean(), xs.mean())


@pytest.mark.parametrize("out", [320, 427, 213, 800])
def test_resized_trimap_stays_centred_on_the_resized_alpha(out: int) -> None:
    """Crops are resized to the network size; the trimap must not drift against the area-resized alpha
    (nearest-neighbour sampling drifted 0.23–0.55 px) and stays a valid trimap."""
    import cv2

    a = np.zeros((640, 640), np.float32)
    cv2.circle(a, (320, 320), 150, 1.0, -1)
    tri = T.trimap_from_alpha(cv2.GaussianBlur(a, (9, 9), 3), 3, 5)
    s = T.Resize(size=out)({"alpha": a, "trimap": tri}, np.random.default_rng(0))
    ya, xa = np.nonzero(s["alpha"] > 0.5)
    for region in (s["trimap"] == 255, s["trimap"] != 0):
        ys, xs = np.nonzero(region)
        assert abs(ys.mean() - ya.mean()) < 0.1 and abs(xs.mean() - xa.mean()) < 0.1
    assert set(np.unique(s["trimap"])) == {0, 128, 255}


def test_sim_ranges_are_inclusive() -> None:
    # The upper ends of ksize (3, 5) and iterations (5, 15) are reachable: a degenerate range hits them exactly.
    a = _sample("sharp")["alpha"]
    s = T.GenerateTrimap("sim", ksize=(5, 5), iterations=(15, 15))({"alpha": a}, np.random.default_rng(0))
    assert np.array_equal(s["trimap"], T.trimap_from_alpha(a, 5, 15))
    g = T.GenerateTrimap("gca", gca_kernel=(29, 29))({"alpha": a}, np.random.default_rng(0))
    assert np.array_equal(g["trimap"], T.trimap_from_alpha(a, 29, 1, 29, 1))


@pytest.mark.parametrize("sizes,out", [((64,), 64), ((96, 128), 48), ((320,), 80)])
def test_crop_contains_unknown(sizes: tuple[int, ...], out: int) -> None:
    rng = np.random.default_rng(2)
    pipe = T.Compose([T.GenerateTrimap(), T.CropAroundUnknown(sizes, out)])
    for i in range(6):
        s = pipe(_sample("sharp", 160, i), rng)  # 320 > 160: the image is upscaled first
        assert (
            s["alpha"].shape == (out, out)
            and s["fg"].shape == (out, out, 3)
            and s["trimap"].shape == (out, out)
        )
        assert (s["trimap"] == 128).any()
        _assert_trimap_ok(s["trimap"], s["alpha"])


def test_crop_without_trimap_uses_alpha() -> None:
    rng = np.random.default_rng(3)
    s = T.CropAroundUnknown((48,), None)(_sample("texture_smooth"), rng)
    assert s["alpha"].shape == (48, 48) and T.unknown_mask(s["alpha"]).any()


def test_affine_flip_and_shapes() -> None:
    rng = np.random.default_rng(4)
    s = _sample()
    ref = {k: v.copy() for k, v in s.items() if isinstance(v, np.ndarray)}
    flip = T.RandomAffine(flip=1.0, prob=0.0)(dict(s), rng)
    assert np.array_equal(flip["alpha"], ref["alpha"][:, ::-1])
    out = T.RandomAffine(scale=(0.5, 2.0), rotation=45, shear=10)(dict(ref), rng)
    assert out["alpha"].shape == ref["alpha"].shape and out["fg"].shape == ref["fg"].shape
    assert 0 <= out["alpha"].min() and out["alpha"].max() <= 1


def test_two_foreground_composite_matches_layering() -> None:
    rng = np.random.default_rng(5)
    s1, s2 = _sample("net", 96), _sample("water_drop", 96)
    bg = generate_background(rng, 96, 96)
    step = T.TwoForegroundComposite(lambda r: (s2["fg"], s2["alpha"]), prob=1.0)
    # Force no flip of the second fg: try seeds until the flip coin says no, then compare to exact layering.
    for seed in range(10):
        out = step(
            {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s1.items()},
            np.random.default_rng(seed),
        )
        a1, a2 = s1["alpha"], s2["alpha"]
        expect_alpha = 1 - (1 - a1) * (1 - a2)
        if not np.allclose(out["alpha"], expect_alpha, atol=1e-6):
            continue  # the second fg was flipped
        layered = s1["fg"] * a1[..., None] + (1 - a1[..., None]) * (
            s2["fg"] * a2[..., None] + (1 - a2[..., None]) * bg
        )
        a = out["alpha"][..., None]
        np.testing.assert_allclose(out["fg"] * a + (1 - a) * bg, layered, atol=2e-5)
        break
    else:
        pytest.fail("no unflipped draw in 10 seeds")


def test_composite_and_background() -> None:
    rng = np.random.default_rng(6)
    s = T.FitBackground(BackgroundSource(None))(_sample(), rng)
    s = T.Composite()(s, rng)
    a = s["alpha"][..., None]
    np.testing.assert_allclose(s["image"], s["fg"] * a + s["bg"] * (1 - a), atol=1e-6)
    assert s["bg"].shape == s["fg"].shape and s["image"].dtype == np.float32


@pytest.mark.parametrize(
    "step",
    [
        T.ColorJitter(prob=1.0, keys=("image",)),
        T.GammaJitter(prob=1.0, keys=("image",)),
        T.GaussianNoise(prob=1.0),
        T.JpegArtifacts(prob=1.0, quality=(20, 30)),
        T.ChannelShuffle(prob=1.0, keys=("image",)),
    ],
)
def test_photometric_steps_keep_range(step: T.Step) -> None:
    rng = np.random.default_rng(7)
    img = generate_background(rng, 64, 80)
    out = step({"image": img.copy()}, rng)["image"]
    assert out.shape == img.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    assert not np.array_equal(out, img)


def test_build_pipeline_and_determinism() -> None:
    spec = [
        "affine",
        {"name": "trimap", "mode": "gca"},
        {"name": "crop", "sizes": [64], "out_size": 32},
        "fit_bg",
        "color",
        "gamma",
        "composite",
        "noise",
        "jpeg",
    ]
    pipe = T.build_pipeline(spec)
    a = pipe(_sample(), np.random.default_rng(8))
    b = pipe(_sample(), np.random.default_rng(8))
    for k in ("image", "fg", "bg", "alpha", "trimap"):
        assert np.array_equal(a[k], b[k]), k
    assert a["image"].shape == (32, 32, 3)
    with pytest.raises(ValueError):
        T.build_pipeline(["nope"])


@pytest.mark.parametrize("real", [False, True])
def test_default_pipeline_outputs(real: bool) -> None:
    rng = np.random.default_rng(9)
    s = _sample("fur", 128)
    if real:
        s["bg"] = generate_background(rng, 128, 128)
        a = s["alpha"][..., None]
        s["image"] = s["fg"] * a + s["bg"] * (1 - a)
    pipe = T.matting_pipeline(
        out_size=64, crop_sizes=(96, 128), second_fg=lambda r: (s["fg"], s["alpha"]), real=real
    )
    out = pipe(s, rng)
    for k in ("image", "fg", "bg"):
        assert out[k].shape == (64, 64, 3)
    _assert_trimap_ok(out["trimap"], out["alpha"])
