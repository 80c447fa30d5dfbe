import cv2
import numpy as np
import pytest

from backend import processing as P


def test_official_padding_always_adds_1_to_8() -> None:
    assert P.official_padding(497, 800) == (7, 8)
    assert P.official_padding(496, 801) == (8, 7)
    for n in range(1, 50):
        ph, _ = P.official_padding(n, n)
        assert 1 <= ph <= 8 and (n + ph) % 8 == 0


def test_pad_reflect_matches_opencv_border_reflect(rng: np.random.Generator) -> None:
    a = rng.random((13, 11, 3)).astype(np.float32)
    ref = cv2.copyMakeBorder(a, 0, 3, 0, 5, cv2.BORDER_REFLECT)
    np.testing.assert_array_equal(P.pad_reflect(a, 3, 5), ref)


def test_trimap_encodings() -> None:
    tri = np.full((40, 50), 128, np.uint8)
    tri[:, :10] = 0
    tri[:, 40:] = 255
    t2 = P.trimap_two_channel(tri)
    assert t2[..., 0].sum() == 400 and t2[..., 1].sum() == 400
    g = P.trimap_gaussian(t2)
    assert g.shape == (40, 50, 6)
    np.testing.assert_allclose(g[:, :10, :3], 1.0)  # value 1 on the mask itself
    d = 20 - 9  # column 20 is 11 px from the last background column
    np.testing.assert_allclose(g[5, 20, 0], np.exp(-d * d / (2 * 6.4**2)), rtol=1e-5)
    np.testing.assert_allclose(g[5, 20, 2], np.exp(-d * d / (2 * 51.2**2)), rtol=1e-5)
    only_unknown = P.trimap_gaussian(P.trimap_two_channel(np.full((8, 8), 128, np.uint8)))
    assert not only_unknown.any()  # empty masks leave their channels at 0


def test_validate_trimap_modes() -> None:
    tri = np.array([[0, 127, 255, 3, 240, 90]], np.uint8)
    with pytest.raises(ValueError, match="tolerant"):
        P.validate_trimap(tri, "strict")
    assert P.validate_trimap(tri, "tolerant").tolist() == [[0, 128, 255, 0, 255, 128]]
    with pytest.raises(ValueError, match="no unknown"):
        P.validate_trimap(np.array([[0, 255]], np.uint8))
    soft = np.linspace(0, 1, 11, dtype=np.float32)[None]
    assert set(np.unique(P.validate_trimap(soft, "tolerant"))) == {0, 128, 255}


def test_trimap_from_mask_band() -> None:
    mask = np.zeros((60, 60), bool)
    mask[20:40, 20:40] = True
    tri = P.trimap_from_mask(mask, 5)
    assert tri[30, 30] == 255 and tri[2, 2] == 0
    assert tri[20, 30] == 128 and tri[16, 30] == 128 and tri[14, 30] == 0 and tri[24, 30] == 128 and tri[25, 30] == 255
    with pytest.raises(ValueError):
        P.trimap_from_mask(mask, 0)


def test_tile_grid_covers_with_overlap() -> None:
    tiles = P.tile_grid(1000, 2048, 512, 128)
    cover = np.zeros((1000, 2048), int)
    for t in tiles:
        assert t.y0 % 8 == 0 and t.x0 % 8 == 0 and t.y1 - t.y0 <= 512
        cover[t.y0:t.y1, t.x0:t.x1] += 1
    assert cover.min() >= 1
    w = sum(P.blend_window(t.y1 - t.y0, t.x1 - t.x0, t, 1000, 2048, 128) for t in tiles[:1])
    assert w.max() == 1.0
