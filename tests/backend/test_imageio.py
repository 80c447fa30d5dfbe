"""Tests for backend.imageio: every mode / bit depth, EXIF orientation, errors, writers."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from backend.imageio import (
    CorruptImageError,
    InputError,
    MatteError,
    MissingFileError,
    SizeMismatchError,
    TrimapError,
    WeightsError,
    check_same_size,
    read_alpha,
    read_image,
    read_image_with_alpha,
    read_trimap,
    write_alpha,
    write_rgb,
    write_rgba,
)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "../shared/data/alphamatting"

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
A8 = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
RGB16 = RNG.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
A16 = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)


def _save_pil(path, arr, mode=None, **kw):
    Image.fromarray(arr, mode=mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return path


def _save_cv2(path, arr):
    if arr.ndim == 3:
        arr = arr[:, :, [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[:, :, ::-1]
    assert cv2.imwrite(str(path), np.ascontiguousarray(arr))
    return path


# ---------------------------------------------------------------- errors


def test_exit_codes_distinct_and_hierarchy():
    classes = [InputError, MissingFileError, CorruptImageError, SizeMismatchError, TrimapError, WeightsError]
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes) and all(c > 1 for c in codes)
    assert (MissingFileError.exit_code, CorruptImageError.exit_code, SizeMismatchError.exit_code) == (3, 4, 5)
    assert (TrimapError.exit_code, WeightsError.exit_code) == (6, 7)
    for c in classes[1:5]:
        assert issubclass(c, InputError)
    assert issubclass(WeightsError, MatteError) and not issubclass(WeightsError, InputError)
    e = TrimapError("bad", path="x.png")
    assert str(e) == "bad" and e.path == Path("x.png")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(MissingFileError, match="directory"):
        read_trimap(tmp_path)


def test_corrupt_files(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(CorruptImageError):
        read_image(junk)
    good = _save_pil(tmp_path / "good.png", RGB8)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:60])
    with pytest.raises(CorruptImageError):
        read_image(trunc)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError):
        read_alpha(empty)


# ---------------------------------------------------------------- read_image


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp"])
def test_read_rgb8(tmp_path, ext):
    img = read_image(_save_pil(tmp_path / f"a{ext}", RGB8))
    assert img.dtype == np.float32 and img.shape == (5, 7, 3)
    np.testing.assert_array_equal(img, RGB8.astype(np.float32) / 255)


def test_read_jpeg_is_close(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], (16, 1, 3))
    img = read_image(_save_pil(tmp_path / "a.jpg", smooth, quality=95))
    assert np.abs(img - smooth / 255).max() < 0.05


def test_read_rgba8_returns_alpha(tmp_path):
    p = _save_pil(tmp_path / "a.png", np.dstack([RGB8, A8]), "RGBA")
    rgb, alpha = read_image_with_alpha(p)
    np.testing.assert_array_equal(rgb, RGB8 / np.float32(255))
    np.testing.assert_array_equal(alpha, A8 / np.float32(255))
    np.testing.assert_array_equal(read_image(p), rgb)
    assert read_image_with_alpha(_save_pil(tmp_path / "b.png", RGB8))[1] is None


def test_read_grey_and_grey_alpha(tmp_path):
    img = read_image(_save_pil(tmp_path / "g.png", A8, "L"))
    assert img.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[:, :, c], A8 / np.float32(255))
    rgb, alpha = read_image_with_alpha(_save_pil(tmp_path / "la.png", np.dstack([A8, 255 - A8]), "LA"))
    np.testing.assert_array_equal(rgb[:, :, 1], A8 / np.float32(255))
    np.testing.assert_array_equal(alpha, (255 - A8) / np.float32(255))


def test_read_palette_with_and_without_transparency(tmp_path):
    im = Image.fromarray(RGB8).quantize(8)
    im.save(tmp_path / "p.png")
    expected = np.asarray(im.convert("RGB")) / np.float32(255)
    rgb, alpha = read_image_with_alpha(tmp_path / "p.png")
    np.testing.assert_array_equal(rgb, expected)
    assert alpha is None
    im.save(tmp_path / "pt.png", transparency=0)
    rgb, alpha = read_image_with_alpha(tmp_path / "pt.png")
    assert alpha is not None and set(np.unique(alpha)) <= {0.0, 1.0}
    np.testing.assert_array_equal(alpha == 0, np.asarray(im) == 0)


def test_read_1bit(tmp_path):
    bits = A8 > 127
    Image.fromarray(bits).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png")[:, :, 0], bits.astype(np.float32))


def test_read_cmyk_jpeg(tmp_path):
    Image.fromarray(RGB8).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    img = read_image(tmp_path / "c.jpg")
    assert img.shape == (5, 7, 3) and img.dtype == np.float32


def test_read_float_tiff_in_unit_range_only(tmp_path):
    Image.fromarray(A8.astype(np.float32) / 255).save(tmp_path / "unit.tif")
    np.testing.assert_allclose(read_image(tmp_path / "unit.tif")[:, :, 0], A8 / np.float32(255), atol=1e-7)
    Image.fromarray(A8.astype(np.float32)).save(tmp_path / "bytes.tif")  # 0-255 floats: refused, not clipped white
    with pytest.raises(InputError, match=r"bytes.tif: float data must hold values in \[0, 1\].*divide by 255"):
        read_image(tmp_path / "bytes.tif")


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_read_rgb16_and_rgba16_full_precision(tmp_path, ext):
    img = read_image(_save_cv2(tmp_path / f"a{ext}", RGB16))
    np.testing.assert_allclose(img, RGB16 / 65535.0, atol=1e-7)
    rgb, alpha = read_image_with_alpha(_save_cv2(tmp_path / f"b{ext}", np.dstack([RGB16, A16])))
    np.testing.assert_allclose(rgb, RGB16 / 65535.0, atol=1e-7)
    np.testing.assert_allclose(alpha, A16 / 65535.0, atol=1e-7)


def test_read_grey16(tmp_path):
    img = read_image(_save_cv2(tmp_path / "g.png", A16))
    np.testing.assert_allclose(img[:, :, 2], A16 / 65535.0, atol=1e-7)
    np.testing.assert_allclose(read_alpha(tmp_path / "g.png"), A16 / 65535.0, atol=1e-7)


# ---------------------------------------------------------------- EXIF orientation

# Pillow's Transpose for each EXIF orientation (the definition ImageOps.exif_transpose uses)
_EXIF_OPS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg_like_8bit(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = Image.fromarray(RGB8)
    src.save(tmp_path / "o.png", exif=exif)
    img = read_image(tmp_path / "o.png")
    ref = src if orientation == 1 else src.transpose(_EXIF_OPS[orientation])
    np.testing.assert_array_equal(img, np.asarray(ref) / np.float32(255))


def _png_with_exif(png: bytes, orientation: int) -> bytes:
    """Insert an eXIf chunk (raw TIFF, no 'Exif\\0\\0' prefix) right after IHDR."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = exif.tobytes()[6:]
    chunk = struct.pack(">I", len(data)) + b"eXIf" + data
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + data) & 0xFFFFFFFF)
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]


@pytest.mark.parametrize("orientation", [2, 5, 6, 7, 8])
def test_exif_orientation_16bit_png(tmp_path, orientation):
    plain = _save_cv2(tmp_path / "plain.png", RGB16)
    p = tmp_path / "o16.png"
    p.write_bytes(_png_with_exif(plain.read_bytes(), orientation))
    # reference: the same orientation applied by Pillow to an 8-bit stand-in of the same layout
    idx = np.arange(RGB16.shape[0] * RGB16.shape[1], dtype=np.int32).reshape(RGB16.shape[:2])
    ref_idx = np.asarray(Image.fromarray(idx, mode="I").transpose(_EXIF_OPS[orientation]))
    expected = RGB16.reshape(-1, 3)[ref_idx] / 65535.0
    np.testing.assert_allclose(read_image(p), expected, atol=1e-7)


def test_exif_applied_to_trimap_and_alpha(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(A8).save(tmp_path / "t.png", exif=exif)
    tri = read_trimap(tmp_path / "t.png")
    np.testing.assert_array_equal(tri, np.asarray(Image.fromarray(A8).transpose(Image.Transpose.ROTATE_270)))
    assert read_alpha(tmp_path / "t.png").shape == (7, 5)


# ---------------------------------------------------------------- trimap / alpha


def _tri():
    t = np.zeros((5, 7), np.uint8)
    t[:, 2:5] = 128
    t[:, 5:] = 255
    return t


def test_read_trimap_grey_palette_rgb(tmp_path):
    t = _tri()
    np.testing.assert_array_equal(read_trimap(_save_pil(tmp_path / "l.png", t)), t)
    # palette with a grey ramp (how the alphamatting.com trimaps are stored)
    pim = Image.fromarray(t, mode="L").convert("P")
    pim.putpalette([v for i in range(256) for v in (i, i, i)])
    pim.save(tmp_path / "p.png")
    out = read_trimap(tmp_path / "p.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, t)
    np.testing.assert_array_equal(read_trimap(_save_pil(tmp_path / "rgb.png", np.dstack([t] * 3))), t)
    np.testing.assert_array_equal(
        read_trimap(_save_pil(tmp_path / "a.png", np.dstack([t] * 3 + [A8]), "RGBA")), t
    )
    np.testing.assert_array_equal(read_trimap(_save_cv2(tmp_path / "t16.png", t.astype(np.uint16) * 257)), t)


def test_read_trimap_keeps_raw_values(tmp_path):
    t = _tri()
    t[0, 0] = 127  # not snapped: processing decides
    np.testing.assert_array_equal(read_trimap(_save_pil(tmp_path / "l.png", t)), t)


def test_trimap_errors(tmp_path):
    colour = np.dstack([_tri(), _tri(), 255 - _tri()])
    with pytest.raises(TrimapError, match="colour"):
        read_trimap(_save_pil(tmp_path / "c.png", colour))
    with pytest.raises(TrimapError, match="16-bit"):
        read_trimap(_save_cv2(tmp_path / "t16.png", A16))
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(TrimapError, match="8-bit"):
        read_trimap(tmp_path / "f.tif")


def test_read_alpha_variants(tmp_path):
    expected = A8 / np.float32(255)
    np.testing.assert_array_equal(read_alpha(_save_pil(tmp_path / "l.png", A8)), expected)
    np.testing.assert_array_equal(read_alpha(_save_pil(tmp_path / "rgb.png", np.dstack([A8] * 3))), expected)
    cut = _save_pil(tmp_path / "cut.png", np.dstack([RGB8, A8]), "RGBA")
    np.testing.assert_array_equal(read_alpha(cut), expected)  # cut-out: its alpha channel
    with pytest.raises(InputError, match="colour channels differ"):
        read_alpha(_save_pil(tmp_path / "c.png", RGB8))


@pytest.mark.skipif(not DATA.is_dir(), reason="shared alphamatting data not present")
def test_real_alphamatting_files():
    img = read_image(DATA / "image/GT01.png")
    tri = read_trimap(DATA / "trimap1/GT01.png")
    gt = read_alpha(DATA / "alpha/GT01.png")
    assert img.shape == (497, 800, 3) and tri.shape == gt.shape == (497, 800)
    assert set(np.unique(tri)) == {0, 128, 255}
    assert check_same_size({"image": img, "trimap": tri, "alpha": gt}) == (497, 800)


def test_check_same_size():
    assert check_same_size({"a": np.zeros((2, 3, 3)), "b": np.zeros((2, 3))}) == (2, 3)
    with pytest.raises(SizeMismatchError, match="image 3x2 vs trimap 4x2"):
        check_same_size({"image": np.zeros((2, 3, 3)), "trimap": np.zeros((2, 4))})


# ---------------------------------------------------------------- writers


def test_write_alpha_8_and_16_roundtrip(tmp_path):
    a = np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7)
    p8 = write_alpha(tmp_path / "sub" / "a8.png", a)  # parent folder created
    raw8 = np.asarray(Image.open(p8))
    np.testing.assert_array_equal(raw8, np.round(a.astype(np.float64) * 255).astype(np.uint8))  # rounded
    p16 = write_alpha(tmp_path / "a16.png", a, bits=16)
    raw16 = cv2.imread(str(p16), cv2.IMREAD_UNCHANGED)
    assert raw16.dtype == np.uint16
    np.testing.assert_allclose(read_alpha(p16), a, atol=1 / 65535)
    write_alpha(tmp_path / "u8.png", A8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "u8.png")), A8)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp files
    # the mode a plain open() gives (mkstemp's 0600 would hide outputs from other users and services)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(p8.stat().st_mode) == 0o666 & ~umask


def test_write_rgb_and_rgba(tmp_path):
    write_rgb(tmp_path / "c.png", RGB8)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), RGB8 / np.float32(255))
    write_rgb(tmp_path / "c16.png", RGB16, bits=16)
    np.testing.assert_allclose(read_image(tmp_path / "c16.png"), RGB16 / 65535.0, atol=1e-7)
    write_rgba(tmp_path / "cut.png", RGB8 / 255.0, A8 / 255.0)
    rgb, alpha = read_image_with_alpha(tmp_path / "cut.png")
    np.testing.assert_array_equal(alpha, A8 / np.float32(255))
    np.testing.assert_array_equal(rgb, RGB8 / np.float32(255))
    write_rgba(tmp_path / "cut16.png", RGB16, A16, bits=16)
    rgb, alpha = read_image_with_alpha(tmp_path / "cut16.png")
    np.testing.assert_allclose(alpha, A16 / 65535.0, atol=1e-7)


def test_writer_validation(tmp_path):
    with pytest.raises(ValueError, match="bits"):
        write_alpha(tmp_path / "a.png", A8, bits=12)
    with pytest.raises(ValueError, match="H x W"):
        write_alpha(tmp_path / "a.png", RGB8)
    with pytest.raises(ValueError, match="no alpha"):
        write_rgba(tmp_path / "a.jpg", RGB8, A8)
    with pytest.raises(ValueError, match="16-bit"):
        write_alpha(tmp_path / "a.jpg", A8, bits=16)
    with pytest.raises(ValueError, match="NaN"):
        write_alpha(tmp_path / "a.png", np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="sizes differ"):
        write_rgba(tmp_path / "a.png", RGB8, A8[:4])
