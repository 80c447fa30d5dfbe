"""Semantic-map preview: the C×H×W semantic trimap from the daemon -> a colour layer (dominant class per pixel).

Pure Python. The argmax is done on a grid of at most ``max_cells`` cells (nearest-neighbour upsampled),
so it stays well under a second on any canvas; the preview is a visual hint, not data.
"""

from __future__ import annotations

import sys
from array import array

# 20 well-separated colours (RGB), index = class index; repeats for longer custom class lists.
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)
PREVIEW_ALPHA = 170
MAX_SEMANTIC_BYTES = 256 * 1024 * 1024  # don't ask for a semantic array larger than this


def semantic_fits(width: int, height: int, classes: int) -> bool:
    return width * height * classes * 4 <= MAX_SEMANTIC_BYTES


def dominant_classes(
    semantic: bytes, shape: tuple[int, ...], *, max_cells: int = 250_000, threshold: float = 1e-3
) -> tuple[bytes, int, int, int]:
    """Per-cell dominant class + 1 (0 = no class above ``threshold``) on a subsampled grid.

    Returns (labels, grid_w, grid_h, step)."""
    c, h, w = shape
    vals = array("f", semantic)
    if sys.byteorder != "little":
        vals.byteswap()
    step = 1
    while (w // step) * (h // step) > max_cells:
        step += 1
    gw, gh = (w + step - 1) // step, (h + step - 1) // step
    planes = []
    for k in range(c):
        base = k * h * w
        grid = array("f")
        for gy in range(gh):
            start = base + gy * step * w
            grid.extend(vals[start : start + w : step])
        planes.append(grid)
    # per cell: tuple of class scores (built by zip in C), its max, and the max's index
    label = bytes((t.index(m) + 1) if m > threshold else 0 for t, m in zip(zip(*planes), map(max, *planes)))
    return label, gw, gh, step


def preview_pixels(semantic: bytes, shape: tuple[int, ...], *, order: str = "BGRA") -> bytes:
    """Interleaved 8-bit 4-channel pixels (``order``) of the preview layer, full size."""
    _c, h, w = shape
    labels, gw, gh, step = dominant_classes(semantic, shape)
    # full-size label bytes: expand each grid row once, then repeat it for its `step` image rows
    cols = [x // step for x in range(w)]
    rows = []
    for gy in range(gh):
        grow = labels[gy * gw : (gy + 1) * gw]
        full = bytes(grow[x] for x in cols)
        rows.extend([full] * min(step, h - gy * step))
    lab = b"".join(rows)
    tables = []
    for ch in range(3):
        t = bytearray(256)
        for k in range(1, 256):
            t[k] = PALETTE[(k - 1) % len(PALETTE)][ch]
        tables.append(bytes(t))
    alpha_t = bytes([0] + [PREVIEW_ALPHA] * 255)
    out = bytearray(4 * w * h)
    rgb_pos = (2, 1, 0) if order == "BGRA" else (0, 1, 2)
    for ch in range(3):
        out[rgb_pos[ch] :: 4] = lab.translate(tables[ch])
    out[3::4] = lab.translate(alpha_t)
    return bytes(out)


def legend(classes: tuple[str, ...], shares: dict) -> str:
    """'fur (red), hair_easy (green)' for the classes present, largest share first."""
    names = (
        "red",
        "green",
        "yellow",
        "blue",
        "orange",
        "purple",
        "cyan",
        "magenta",
        "lime",
        "pink",
        "teal",
        "lavender",
        "brown",
        "beige",
        "maroon",
        "mint",
        "olive",
        "apricot",
        "navy",
        "grey",
    )
    present = sorted((s, n) for n, s in shares.items() if s > 0)[::-1]
    idx = {n: i for i, n in enumerate(classes)}
    return ", ".join(f"{n} ({names[idx[n] % len(names)]})" for _, n in present if n in idx)
