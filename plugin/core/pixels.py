"""Host pixel buffers -> protocol image arrays, and alpha / foreground back to host buffers. Pure Python.

Interleaved channels are split and re-interleaved with extended slice assignment on ``bytearray`` /
``array.array`` (C speed). Only float data with a linear transfer curve needs a per-value step (the
model expects sRGB-encoded values), done with a 64 K-entry lookup table.
"""

from __future__ import annotations

import struct
import sys
from array import array

# Wire dtype strings (backend.protocol.DTYPE_ITEMSIZE keys).
U8, U16, F32 = "|u1", "<u2", "<f4"

_LITTLE = sys.byteorder == "little"


def _srgb_encode(v: float) -> float:
    if v <= 0.0031308:
        return max(v, 0.0) * 12.92
    return min(1.055 * v ** (1 / 2.4) - 0.055, 1.0)


_LIN_TABLE: list[float] | None = None


def _linear_table() -> list[float]:
    global _LIN_TABLE
    if _LIN_TABLE is None:  # 65536 steps over [0, 1]: finer than the 8/16-bit data the model sees
        _LIN_TABLE = [_srgb_encode(i / 65535.0) for i in range(65536)]
    return _LIN_TABLE


def _floats_to_srgb(values: array) -> array:
    tab = _linear_table()
    out = array("f", [tab[0 if v <= 0.0 else 65535 if v >= 1.0 else int(v * 65535.0 + 0.5)] for v in values])
    return out


def _le_bytes(a: array) -> bytes:
    if not _LITTLE:  # why: the wire format is little-endian whatever the host is
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def split_channels(data: bytes, channels: int, order: tuple[int, ...], itemsize: int) -> bytes:
    """Pick channels ``order`` (indices into each pixel) from interleaved data, keep the sample size."""
    n = len(data) // (channels * itemsize)
    out = bytearray(n * len(order) * itemsize)
    step_in, step_out = channels * itemsize, len(order) * itemsize
    for j, c in enumerate(order):
        for b in range(itemsize):  # byte-wise copy keeps multi-byte samples intact
            out[j * itemsize + b :: step_out] = data[c * itemsize + b :: step_in]
    return bytes(out)


def image_from_host(
    data: bytes, width: int, height: int, depth: str, order: str, *, linear: bool = False
) -> tuple[bytes, str, tuple[int, int, int]]:
    """Convert a host RGBA-like buffer to an RGB protocol image ``(bytes, dtype, (h, w, 3))``.

    depth: "U8" | "U16" | "F16" | "F32" (Krita names); order: "BGRA" or "RGBA" (channel order in memory,
    native byte order); linear: data on a linear transfer curve (converted to sRGB; U16 and floats).
    """
    itemsize = {"U8": 1, "U16": 2, "F16": 2, "F32": 4}[depth]
    if len(data) != width * height * 4 * itemsize:
        raise ValueError(
            f"{depth} {order} buffer has {len(data)} bytes, expected {width * height * 4 * itemsize}"
        )
    rgb_idx = (2, 1, 0) if order == "BGRA" else (0, 1, 2)
    shape = (height, width, 3)
    rgb = split_channels(data, 4, rgb_idx, itemsize)
    if depth == "U8":
        return rgb, U8, shape
    if depth == "U16":
        a = array("H", rgb)  # native order in, little-endian out
        if linear:  # linear-light 16-bit (e.g. Krita's g10 profiles): encode to sRGB like the float path
            tab = _linear_table()
            a = array("H", [int(tab[v] * 65535.0 + 0.5) for v in a])
        return _le_bytes(a), U16, shape
    if depth == "F16":
        vals = array("f", struct.unpack(f"={len(rgb) // 2}e", rgb))
    else:
        vals = array("f", rgb)
    vals = (
        _floats_to_srgb(vals) if linear else array("f", [0.0 if v < 0 else 1.0 if v > 1 else v for v in vals])
    )
    return _le_bytes(vals), F32, shape


def alpha_channel(data: bytes, channels: int = 4, index: int = 3) -> bytes:
    """The 8-bit alpha (or any channel) of an interleaved U8 buffer."""
    return bytes(data[index::channels])


def alpha_to_u8(alpha: bytes, dtype: str) -> bytes:
    """Protocol alpha (|u1, <u2 or <f4, H x W) -> one byte per pixel (rounded)."""
    if dtype == U8:
        return bytes(alpha)
    if dtype == U16:
        a = array("H", bytes(alpha))
        if not _LITTLE:
            a.byteswap()
        return bytes((v * 255 + 32767) // 65535 for v in a)
    if dtype == F32:
        a = array("f", bytes(alpha))
        if not _LITTLE:
            a.byteswap()
        return bytes(0 if v <= 0 else 255 if v >= 1 else int(v * 255 + 0.5) for v in a)
    raise ValueError(f"unsupported alpha dtype {dtype!r}")


def foreground_to_bgra_u8(fg: bytes, dtype: str, alpha: bytes, *, order: str = "BGRA") -> bytes:
    """Protocol foreground (H x W x 3) + 8-bit alpha -> interleaved 8-bit 4-channel pixels (cut-out layer)."""
    if dtype == U8:
        rgb = bytes(fg)
    elif dtype == F32:
        a = array("f", bytes(fg))
        if not _LITTLE:
            a.byteswap()
        rgb = bytes(0 if v <= 0 else 255 if v >= 1 else int(v * 255 + 0.5) for v in a)
    elif dtype == U16:
        a = array("H", bytes(fg))
        if not _LITTLE:
            a.byteswap()
        rgb = bytes((v * 255 + 32767) // 65535 for v in a)
    else:
        raise ValueError(f"unsupported foreground dtype {dtype!r}")
    n = len(alpha)
    if len(rgb) != 3 * n:
        raise ValueError("foreground and alpha sizes differ")
    out = bytearray(4 * n)
    idx = (2, 1, 0) if order == "BGRA" else (0, 1, 2)
    for dst, src in enumerate(idx):
        out[dst::4] = rgb[src::3]
    out[3::4] = alpha
    return bytes(out)


def u8_to_depth(mask: bytes, depth: str) -> bytes:
    """8-bit single-channel values -> one channel at a Krita depth (for writing into U16/F16/F32 layers)."""
    if depth == "U8":
        return bytes(mask)
    if depth == "U16":
        return array("H", [v * 257 for v in mask]).tobytes()
    if depth == "F16":
        return struct.pack(f"={len(mask)}e", *[v / 255.0 for v in mask])
    if depth == "F32":
        return array("f", [v / 255.0 for v in mask]).tobytes()
    raise ValueError(depth)
