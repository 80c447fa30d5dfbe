"""Selection / painted layer -> 8-bit trimap, on raw ``bytes`` (no numpy: host Pythons may lack it).

Trick used throughout: a binary mask is held as ONE Python integer with one byte per pixel (0x00 or
0x01), built with ``int.from_bytes``. Shifting that integer by 8 bits moves every pixel one column,
by ``8 * stride`` bits one row; OR / AND / XOR combine whole masks. Each operation runs in C over
the whole image, so a 12-megapixel mask dilates in a fraction of a second without a pixel loop.

Rows are padded on the right with ``pad >= radius`` zero bytes so horizontal shifts never leak a
pixel into the neighbouring row (a bit that leaves the row lands in padding and is cleared).
"""

from __future__ import annotations

from backend.protocol import TRIMAP_BG, TRIMAP_FG, TRIMAP_UNKNOWN

__all__ = [
    "dilate",
    "trimap_from_grey",
    "trimap_from_selection",
    "trimap_stats",
]


def _table(pred) -> bytes:
    """A ``bytes.translate`` table mapping each byte value v to 1 if pred(v) else 0."""
    return bytes(1 if pred(v) else 0 for v in range(256))


class _Grid:
    """Padded one-byte-per-pixel layout of a w x h image as a big integer."""

    def __init__(self, width: int, height: int, pad: int) -> None:
        self.w, self.h, self.pad = width, height, pad
        self.stride = width + pad
        self.n = self.stride * height
        self.full = self.to_int(b"\x01" * (width * height))  # ones on real pixels, zero in padding

    def to_int(self, mask01: bytes) -> int:
        w, pad = self.w, self.pad
        if pad:
            zeros = b"\x00" * pad
            mask01 = b"".join(mask01[y * w : (y + 1) * w] + zeros for y in range(self.h))
        return int.from_bytes(mask01, "big")

    def to_bytes(self, value: int) -> bytes:
        data = (value & ((1 << (8 * self.n)) - 1)).to_bytes(self.n, "big")
        if not self.pad:
            return data
        s, w = self.stride, self.w
        return b"".join(data[y * s : y * s + w] for y in range(self.h))

    def dilate(self, m: int, radius: int) -> int:
        """Square (Chebyshev) dilation by ``radius`` px: separable, log2(radius) shift steps per axis."""
        if radius <= 0 or not m:
            return m
        for unit in (8, 8 * self.stride):  # columns, then rows
            reach, step = 0, 1
            while reach < radius:
                s = min(step, radius - reach)  # s <= 2*reach+1 keeps the covered window contiguous
                m |= (m << (unit * s)) | (m >> (unit * s))
                reach += s
                step *= 2
            m &= self.full  # clear padding and rows pushed past the top
        return m


def dilate(mask01: bytes, width: int, height: int, radius: int) -> bytes:
    """Dilate a 0/1-per-byte mask by a square of half-size ``radius`` (exposed for tests)."""
    _check(mask01, width, height)
    g = _Grid(width, height, max(radius, 0))
    return g.to_bytes(g.dilate(g.to_int(mask01), radius))


def _check(data: bytes, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"bad size {width}x{height}")
    if len(data) != width * height:
        raise ValueError(f"expected {width * height} bytes for {width}x{height}, got {len(data)}")


def _compose(g: _Grid, fg: int, unknown: int) -> bytes:
    """fg / unknown 0-1 masks (disjoint) -> trimap bytes using the protocol's values."""
    # Per-byte multiplication never carries because each byte is 0 or 1 and the masks are disjoint.
    value = fg * TRIMAP_FG + unknown * TRIMAP_UNKNOWN
    if TRIMAP_BG:
        value += (g.full ^ (fg | unknown)) * TRIMAP_BG
    return g.to_bytes(value)


def trimap_from_selection(
    selection: bytes, width: int, height: int, band: int, *, tolerance: int = 2
) -> bytes:
    """Build a trimap from an 8-bit selection mask (one byte per pixel, 255 = selected).

    * fully selected (>= 255 - tolerance) -> foreground, unselected (<= tolerance) -> background;
    * partly selected (feathered / anti-aliased) pixels -> unknown;
    * a band of ``band`` px on both sides of every hard edge -> unknown (square distance).
    """
    _check(selection, width, height)
    if band < 0:
        raise ValueError("band must be >= 0")
    g = _Grid(width, height, band)
    fg = g.to_int(selection.translate(_table(lambda v: v >= 255 - tolerance)))
    bg = g.to_int(selection.translate(_table(lambda v: v <= tolerance)))
    soft = g.full ^ (fg | bg)
    not_fg, not_bg = g.full ^ fg, g.full ^ bg
    # A hard pixel is unknown when something of the other kind (or soft) lies within `band` px.
    unknown = soft | (fg & g.dilate(not_fg, band)) | (bg & g.dilate(not_bg, band))
    return _compose(g, fg & ~unknown, unknown)


def trimap_from_grey(
    grey: bytes, width: int, height: int, alpha: bytes | None = None, *, tolerance: int = 16
) -> bytes:
    """Trimap from a painted layer: black -> bg, white -> fg, anything in between -> unknown.

    ``alpha`` (optional, one byte per pixel): pixels less than half opaque count as background, so
    a trimap layer only needs paint where the user has an opinion.
    """
    _check(grey, width, height)
    g = _Grid(width, height, 0)
    fg = g.to_int(grey.translate(_table(lambda v: v >= 255 - tolerance)))
    bg = g.to_int(grey.translate(_table(lambda v: v <= tolerance)))
    unknown = g.full ^ (fg | bg)
    if alpha is not None:
        _check(alpha, width, height)
        painted = g.to_int(alpha.translate(_table(lambda v: v >= 128)))
        fg &= painted
        unknown &= painted
    return _compose(g, fg, unknown)


def trimap_stats(trimap: bytes) -> dict[str, float]:
    """Fractions of bg / unknown / fg pixels (for the UI and a sanity check before sending)."""
    n = max(len(trimap), 1)
    return {
        "bg": trimap.count(TRIMAP_BG) / n,
        "unknown": trimap.count(TRIMAP_UNKNOWN) / n,
        "fg": trimap.count(TRIMAP_FG) / n,
    }
