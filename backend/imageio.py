"""Reading and validating images, trimaps and alpha mattes; writing 8/16-bit PNGs.

Every reader returns plain numpy arrays with one documented dtype and layout, applies the EXIF
orientation (so pixels line up with what an image viewer shows), and raises a subclass of
:class:`InputError` with a one-line message and a distinct ``exit_code`` on bad input, so the CLI
can map any failure to ``semantic-matte: <message>`` and a process exit status.

Decoding: Pillow for everything except 16-bit-per-channel PNG / TIFF, which go through OpenCV
(``IMREAD_UNCHANGED``) because Pillow reduces 16-bit RGB(A) to 8 bits. OpenCV ignores EXIF in that
mode, so the orientation read by Pillow is applied to those arrays by hand.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "CorruptImageError",
    "InputError",
    "MatteError",
    "MissingFileError",
    "SizeMismatchError",
    "TrimapError",
    "WeightsError",
    "check_output_format",
    "check_same_size",
    "check_unit_range",
    "read_alpha",
    "read_image",
    "read_image_with_alpha",
    "read_trimap",
    "write_alpha",
    "write_rgb",
    "write_rgba",
]

PathLike = str | os.PathLike


# errors live in backend.errors (shared with checkpoint loading); re-exported here
from backend.errors import (
    CorruptImageError,
    InputError,
    MatteError,
    MissingFileError,
    SizeMismatchError,
    TrimapError,
    WeightsError,
)

# --------------------------------------------------------------------------------------------------
# decoding

_16BIT_PIL_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def _check_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"file not found: {p}", path=p)
    if p.is_dir():
        raise MissingFileError(f"expected a file, got a directory: {p}", path=p)
    return p


def _is_16bit(p: Path, im: Image.Image) -> bool:
    """True for 16-bit-per-channel PNG / TIFF (which Pillow would truncate for RGB)."""
    if im.format == "PNG":
        with open(p, "rb") as f:
            head = f.read(26)
        # PNG signature (8) + IHDR length/type (8) + width/height (8) + bit depth (1) + colour type (1)
        return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))  # BitsPerSample
        bits = bits if isinstance(bits, tuple) else (bits,)
        return any(int(b) == 16 for b in bits)
    return False


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an H x W (x C) array, as ImageOps.exif_transpose."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(int(orientation))
    return arr if op is None else np.ascontiguousarray(op(arr))


def _decode_cv2_16(p: Path, im: Image.Image) -> np.ndarray:
    import cv2

    orientation = im.getexif().get(0x0112, 1)
    # imdecode on the bytes: cv2.imread cannot open non-ASCII paths on every platform.
    buf = np.fromfile(str(p), dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise CorruptImageError(f"cannot decode 16-bit image: {p}", path=p)
    if arr.ndim == 3:
        if arr.shape[2] == 3:
            arr = arr[:, :, ::-1]  # BGR -> RGB
        elif arr.shape[2] == 4:
            arr = arr[:, :, [2, 1, 0, 3]]  # BGRA -> RGBA
    return _orient(arr, orientation)


def _open(path: PathLike) -> tuple[np.ndarray, str]:
    """Decode a file into (array, kind) with EXIF orientation applied.

    kind is one of: "L" (H x W), "LA", "RGB", "RGBA" (uint8 or uint16 arrays), "P" (a palette
    image expanded to H x W x 4 uint8 RGBA) or "F" (H x W float32 grey, from 32-bit float TIFFs).
    """
    p = _check_file(path)
    try:
        im = Image.open(p)
        im.load()
    except Image.DecompressionBombError as e:
        raise InputError(f"image too large: {p} ({e})", path=p) from None
    except UnidentifiedImageError:
        raise CorruptImageError(f"not a recognised image file: {p}", path=p) from None
    except PermissionError:
        raise MissingFileError(f"cannot open (permission denied): {p}", path=p) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise CorruptImageError(
            f"corrupt or truncated image {p}: {str(e).splitlines()[0][:160]}", path=p
        ) from None

    try:
        if _is_16bit(p, im):
            arr = _decode_cv2_16(p, im)
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[:, :, 0]
            kind = "L" if arr.ndim == 2 else {2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
            return arr, kind
        im = ImageOps.exif_transpose(im)
        mode = im.mode
        if mode in _16BIT_PIL_MODES:
            return np.asarray(im).astype(np.uint16), "L"
        if mode == "I":
            a = np.asarray(im)
            if a.min() < 0 or a.max() > 65535:
                raise CorruptImageError(
                    f"unsupported 32-bit integer image (values out of 16-bit range): {p}", path=p
                )
            return a.astype(np.uint16), "L"
        if mode == "F":
            return np.asarray(im, dtype=np.float32), "F"
        if mode == "P":
            return _palette(im), "P"
        if mode == "1":
            return np.asarray(im.convert("L")), "L"
        if mode in ("L", "LA", "RGB", "RGBA"):
            return np.asarray(im), mode
        if mode in ("PA", "RGBa", "La", "RGBX"):
            return np.asarray(im.convert("RGBA")), "RGBA"
        return np.asarray(im.convert("RGB")), "RGB"  # CMYK, YCbCr, LAB, HSV, ...
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise CorruptImageError(f"cannot decode {p}: {str(e).splitlines()[0][:160]}", path=p) from None


def _palette(im: Image.Image) -> np.ndarray:
    """Palette image -> H x W x 4 uint8 RGBA by looking the indices up (transparency honoured)."""
    return np.asarray(im.convert("RGBA"))


# How far past [0, 1] float data may reach and be clipped, not refused: bicubic / Lanczos resampling rings by
# several percent at hard edges (-0.046 on the bundled example at 3x); 0-255 data reaches far beyond.
FLOAT_SLACK = 0.25


def check_unit_range(arr: np.ndarray, what: str) -> None:
    """ValueError unless float data ``arr`` is finite and within [0, 1] give or take ``FLOAT_SLACK``: 0–255
    floats or NaNs would otherwise be clipped into a plausible-looking wrong matte."""
    if not arr.size:
        return
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{what} contains NaN or infinite values")
    if lo < -FLOAT_SLACK or hi > 1.0 + FLOAT_SLACK:
        raise ValueError(f"{what} must hold values in [0, 1], got [{lo:g}, {hi:g}]"
                         + (" (8-bit data? divide by 255)" if lo >= 0 and hi <= 255.0 else ""))


def _to_float(arr: np.ndarray, p: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / np.float32(65535.0)
    try:
        check_unit_range(arr, "float data")
    except ValueError as exc:
        raise InputError(f"{p}: {exc}", path=p) from None
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# readers


def read_image_with_alpha(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a photo as RGB float plus its own alpha channel, if it has one.

    Args:
        path: any format Pillow reads; 8- or 16-bit; RGB, RGBA, grey, grey+alpha, palette, CMYK.

    Returns:
        ``(rgb, alpha)``: rgb is H x W x 3 float32 in [0, 1] (grey is replicated to 3 channels);
        alpha is the file's H x W float32 alpha channel in [0, 1], or None when it has none
        (palette transparency counts as an alpha channel).

    Raises:
        MissingFileError, CorruptImageError, InputError (image too large).
    """
    p = Path(path)
    arr, kind = _open(p)
    alpha = None
    if kind in ("L", "F"):
        rgb = np.repeat(arr[:, :, None], 3, axis=2)
    elif kind == "LA":
        rgb, alpha = np.repeat(arr[:, :, :1], 3, axis=2), arr[:, :, 1]
    elif kind == "RGB":
        rgb = arr
    else:  # RGBA, P (always expanded to RGBA)
        rgb, alpha = arr[:, :, :3], arr[:, :, 3]
        if kind == "P" and np.all(alpha == 255):
            alpha = None  # no transparency entry: plain palette photo
    return np.ascontiguousarray(_to_float(rgb, p)), None if alpha is None else _to_float(alpha, p)


def read_image(path: PathLike) -> np.ndarray:
    """Read a photo as H x W x 3 float32 RGB in [0, 1] (see :func:`read_image_with_alpha`).

    Any alpha channel is dropped (not composited): the matting network sees the colour values.
    """
    return read_image_with_alpha(path)[0]


def _single_channel(arr: np.ndarray, kind: str, p: Path, what: str, err: type[InputError]) -> np.ndarray:
    """Reduce a decoded array to H x W: grey as is, colour only if all colour channels are equal."""
    if kind in ("L", "F"):
        return arr
    if kind == "LA":
        return arr[:, :, 0]
    rgb = arr[:, :, :3]
    if not (np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2])):
        raise err(f"{what} must be greyscale, but its colour channels differ: {p}", path=p)
    return rgb[:, :, 0]


def read_trimap(path: PathLike) -> np.ndarray:
    """Read a trimap as H x W uint8 raw values (0 background, 128 unknown, 255 foreground).

    No remapping: the values are returned as stored, and checking / snapping them (strict or
    tolerant trimap modes) is the job of ``backend.processing``. Grey 8-bit is returned as is; a
    palette or RGB(A) trimap is accepted when its colour channels are equal (first channel
    taken; an alpha channel is ignored); 16-bit grey is accepted when every value is a multiple of
    257 (an 8-bit trimap saved as 16-bit), and divided by 257.

    Raises:
        MissingFileError, CorruptImageError, TrimapError (colour trimap, float or non-8-bit data).
    """
    p = Path(path)
    arr, kind = _open(p)
    tri = _single_channel(arr, kind, p, "trimap", TrimapError)
    if tri.dtype == np.uint16:
        if np.any(tri % 257):
            raise TrimapError(f"16-bit trimap does not hold 8-bit values (x257): {p}", path=p)
        tri = (tri // 257).astype(np.uint8)
    elif tri.dtype != np.uint8:
        raise TrimapError(f"trimap must be an 8-bit image, got {tri.dtype} data: {p}", path=p)
    return np.ascontiguousarray(tri)


def read_alpha(path: PathLike) -> np.ndarray:
    """Read an alpha matte as H x W float32 in [0, 1].

    Grey 8/16-bit is divided by 255 / 65535. An RGBA file whose alpha channel is not fully opaque
    (a cut-out) gives its alpha channel; otherwise an RGB(A) / palette file must have equal colour
    channels (the alphamatting.com GT is RGB with three identical channels) and the first is used.

    Raises:
        MissingFileError, CorruptImageError, InputError (colour channels differ).
    """
    p = Path(path)
    arr, kind = _open(p)
    if kind in ("RGBA", "LA", "P") and not np.all(arr[:, :, -1] == np.iinfo(arr.dtype).max):
        return np.ascontiguousarray(_to_float(arr[:, :, -1], p))
    return np.ascontiguousarray(_to_float(_single_channel(arr, kind, p, "alpha matte", InputError), p))


def check_same_size(arrays: dict[str, np.ndarray]) -> tuple[int, int]:
    """Check that all arrays share one height and width.

    Args:
        arrays: name -> H x W or H x W x C array, e.g. ``{"image": img, "trimap": tri}``.

    Returns:
        The common ``(H, W)``.

    Raises:
        SizeMismatchError: naming every size, e.g. ``image 600x800 vs trimap 300x400``
            (width x height, as image viewers print sizes).
    """
    sizes = {name: tuple(int(s) for s in np.shape(a)[:2]) for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        text = " vs ".join(f"{n} {w}x{h}" for n, (h, w) in sizes.items())
        raise SizeMismatchError(f"sizes differ (width x height): {text}")
    if not sizes:
        raise ValueError("check_same_size needs at least one array")
    return next(iter(sizes.values()))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# writers

_ALPHA_FORMATS = {".png", ".tif", ".tiff", ".webp"}
_16BIT_FORMATS = {".png", ".tif", ".tiff"}


def _quantise(a: Any, bits: int, name: str) -> np.ndarray:
    """float [0, 1] (clipped), uint8 or uint16 -> uint8 / uint16 with rounding (not truncation)."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    arr = np.asarray(a)
    top = 255 if bits == 8 else 65535
    if arr.dtype == np.uint8:
        return arr if bits == 8 else arr.astype(np.uint16) * 257
    if arr.dtype == np.uint16:
        return arr if bits == 16 else np.round(arr / 257.0).astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be float in [0, 1], uint8 or uint16, got {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    out = np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * top)
    return out.astype(np.uint8 if bits == 8 else np.uint16)


def check_output_format(path: PathLike, *, bits: int = 8, alpha_channel: bool = False) -> str:
    """The lower-case extension of ``path`` if an image can be written there with ``bits`` per channel (and an
    alpha channel); ValueError otherwise. Callers check before the work whose result would be lost."""
    suffix = Path(path).suffix.lower()
    if Image.registered_extensions().get(suffix) is None:
        raise ValueError(f"{path}: unknown output image extension {suffix or '(none)'!r}; use .png")
    if alpha_channel and suffix not in _ALPHA_FORMATS:
        raise ValueError(f"{path}: {suffix} has no alpha channel; use .png, .tif or .webp")
    if bits == 16 and suffix not in _16BIT_FORMATS:
        raise ValueError(f"{path}: 16-bit output needs .png or .tif, got {suffix!r}")
    return suffix


def _encode(arr: np.ndarray, suffix: str) -> bytes:
    """Encode H x W, H x W x 3 (RGB) or H x W x 4 (RGBA) uint8/uint16 into file bytes (``suffix`` checked by
    :func:`check_output_format`)."""
    if arr.dtype == np.uint16:
        import cv2

        bgr = arr
        if arr.ndim == 3:
            bgr = arr[:, :, [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[:, :, ::-1]
        ok, buf = cv2.imencode(suffix, np.ascontiguousarray(bgr))
        if not ok:
            raise OSError(f"OpenCV could not encode a 16-bit {suffix} image")
        return buf.tobytes()
    mode = {2: "L"}.get(arr.ndim) or {3: "RGB", 4: "RGBA"}[arr.shape[2]]
    im = Image.fromarray(np.ascontiguousarray(arr), mode=mode)
    out = io.BytesIO()
    im.save(out, format=Image.registered_extensions()[suffix])
    return out.getvalue()


# The process umask, read once at import (reading it means setting it, which is not thread-safe later).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _write_atomic(path: PathLike, data: bytes) -> Path:
    # Write to a temporary file in the same folder, then rename: a crash or a concurrent reader
    # never sees a half-written PNG (batch jobs and the daemon write next to watched folders).
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        # mkstemp creates 0600; give the result the mode a plain open() would (0666 minus the umask).
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _check_2d(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty H x W array, got shape {arr.shape}")
    return arr


def _check_rgb(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty H x W x 3 array, got shape {arr.shape}")
    return arr


def write_alpha(path: PathLike, alpha: Any, bits: int = 8) -> Path:
    """Write an alpha matte as a greyscale image (PNG recommended).

    Args:
        path: output file; the extension picks the format; parent folders are created.
        alpha: H x W (or H x W x 1) float in [0, 1] (clipped, then rounded), uint8 or uint16.
        bits: 8 or 16 (16 needs .png / .tif).

    Returns:
        The path written.
    """
    suffix = check_output_format(path, bits=bits)
    return _write_atomic(path, _encode(_quantise(_check_2d(alpha, "alpha"), bits, "alpha"), suffix))


def write_rgb(path: PathLike, rgb: Any, bits: int = 8) -> Path:
    """Write an H x W x 3 RGB image (float in [0, 1], uint8 or uint16) as 8- or 16-bit."""
    suffix = check_output_format(path, bits=bits)
    return _write_atomic(path, _encode(_quantise(_check_rgb(rgb, "rgb"), bits, "rgb"), suffix))


def write_rgba(path: PathLike, rgb: Any, alpha: Any, bits: int = 8) -> Path:
    """Write a cut-out: RGB (H x W x 3) plus alpha (H x W) as one RGBA image.

    The colours are stored as given (straight, not premultiplied alpha, as PNG specifies).
    The format must carry alpha (.png, .tif, .webp; 16-bit: .png / .tif).
    """
    suffix = check_output_format(path, bits=bits, alpha_channel=True)
    c = _quantise(_check_rgb(rgb, "rgb"), bits, "rgb")
    a = _quantise(_check_2d(alpha, "alpha"), bits, "alpha")
    if c.shape[:2] != a.shape:
        raise ValueError(f"rgb {c.shape[:2]} and alpha {a.shape} sizes differ")
    return _write_atomic(path, _encode(np.dstack([c, a]), suffix))
