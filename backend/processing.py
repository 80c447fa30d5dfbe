"""Pure pre/post-processing shared by the predictor, the trainer and the benchmarks.

Everything follows the official SIM inference path (ref §5.1–5.2) unless a docstring says otherwise.
Arrays are numpy (H×W[×C]); the torch helpers at the end build the network inputs on any device.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from backend.protocol import TRIMAP_BG, TRIMAP_FG, TRIMAP_STRICT, TRIMAP_TOLERANT, TRIMAP_UNKNOWN

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# FBA/SIM Gaussian trimap encoding: sigmas 0.02·L, 0.08·L, 0.16·L with L = 320 (ref §1.1).
GAUSS_TRIMAP_SIGMAS = (0.02 * 320, 0.08 * 320, 0.16 * 320)
STRIDE = 8


# --------------------------------------------------------------------------- trimaps


def validate_trimap(trimap: np.ndarray, mode: str = TRIMAP_STRICT) -> np.ndarray:
    """Return a trimap with exactly {0, 128, 255}.

    Modes:
        strict: values must already be exactly 0/128/255 (the official contract); anything else
            raises ``ValueError`` naming the stray values.
        tolerant: for trimaps from other tools — v ≤ 25 → 0, v ≥ 230 → 255, everything between
            (127, anti-aliased edges, soft/feathered trimaps) → 128 (unknown).
    Raises ``ValueError`` if no pixel is unknown (nothing to matte).
    """
    if trimap.ndim != 2:
        hint = " (a colour file? backend.imageio.read_trimap reads grey-valued RGB(A))" if trimap.ndim == 3 else ""
        raise ValueError(f"trimap must be H×W, got shape {trimap.shape}{hint}")
    if trimap.dtype != np.uint8:
        if np.issubdtype(trimap.dtype, np.floating) and trimap.max(initial=0) <= 1.0:
            trimap = np.round(trimap * 255.0)
        trimap = np.clip(trimap, 0, 255).astype(np.uint8)
    if mode == TRIMAP_STRICT:
        # Three SIMD byte compares (0.7 ms at 2048²) instead of np.unique's sort (12 ms); the slow path
        # only runs to name the stray values in the error.
        ok = (trimap == TRIMAP_BG) | (trimap == TRIMAP_UNKNOWN) | (trimap == TRIMAP_FG)
        if not ok.all():
            stray = np.unique(trimap[~ok])
            raise ValueError(f"trimap has values other than 0/128/255 (e.g. {stray[:5].tolist()}); "
                             "use tolerant mode (--trimap-mode tolerant) for 127-valued or soft trimaps")
        out = trimap
    elif mode == TRIMAP_TOLERANT:
        out = np.full_like(trimap, TRIMAP_UNKNOWN)
        out[trimap <= 25] = TRIMAP_BG
        out[trimap >= 230] = TRIMAP_FG
    else:
        raise ValueError(f"unknown trimap mode {mode!r}; use 'strict' or 'tolerant'")
    if not (out == TRIMAP_UNKNOWN).any():
        raise ValueError("trimap has no unknown (128) pixels: nothing to matte")
    return out


def trimap_from_mask(mask: np.ndarray, band: int) -> np.ndarray:
    """Trimap from a binary mask: pixels within ``band`` px of the mask edge (either side) → 128.

    mask: H×W bool / uint8 (non-zero = foreground); band ≥ 1 px (elliptical structuring element).
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {mask.shape}")
    if band < 1:
        raise ValueError(f"band width must be ≥ 1 px, got {band}")
    fg = (np.asarray(mask) > (127 if mask.dtype == np.uint8 and mask.max(initial=0) > 1 else 0)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    sure_fg = cv2.erode(fg, kernel, borderType=cv2.BORDER_REPLICATE)
    maybe_fg = cv2.dilate(fg, kernel, borderType=cv2.BORDER_REPLICATE)
    trimap = np.full(fg.shape, TRIMAP_UNKNOWN, np.uint8)
    trimap[maybe_fg == 0] = TRIMAP_BG
    trimap[sure_fg == 1] = TRIMAP_FG
    return trimap


def trimap_two_channel(trimap: np.ndarray) -> np.ndarray:
    """H×W×2 float32: ch0 = definite background, ch1 = definite foreground (exact equality)."""
    return np.stack([trimap == TRIMAP_BG, trimap == TRIMAP_FG], axis=-1).astype(np.float32)


def trimap_gaussian(trimap2: np.ndarray, distance: str = "opencv") -> np.ndarray:
    """H×W×6 float32 FBA encoding: exp(−d²/2σ²) of the exact L2 distance to each mask, bg first.

    distance: "opencv" (the official code's DIST_MASK_PRECISE) or "scipy" (exact EDT too, agreeing to
    ~4e−6 px, but run-to-run deterministic — OpenCV's is not, which breaks bit-identical training resume).
    """
    if distance not in ("opencv", "scipy"):
        raise ValueError(f"distance must be 'opencv' or 'scipy', got {distance!r}")
    h, w = trimap2.shape[:2]
    out = np.zeros((h, w, 6), np.float32)
    for k in range(2):
        mask = trimap2[..., k] > 0
        if not mask.any():
            continue  # empty mask: its three channels stay 0 (official)
        if distance == "scipy":
            from scipy import ndimage  # only the trainer asks for this path

            d2 = (ndimage.distance_transform_edt(~mask) ** 2).astype(np.float32)
        else:
            # distanceTransform measures the distance to the nearest zero pixel, so zero the mask itself.
            dist = cv2.distanceTransform((~mask).astype(np.uint8) * 255, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            d2 = dist.astype(np.float32) ** 2
        for j, sigma in enumerate(GAUSS_TRIMAP_SIGMAS):
            out[..., 3 * k + j] = np.exp(-d2 / (2.0 * sigma * sigma))
    return out


# --------------------------------------------------------------------------- trimap encodings on any device

# A Gaussian channel exp(−d²/2σ²) is exactly 0.0 in float32 once d²/2σ² > ~103.98 (below the smallest
# subnormal); for the widest σ (51.2 px) that is d > 738.3 px. Distances are therefore only needed exactly
# up to this radius: beyond it the encoding is 0 whatever the exact value is.
GAUSS_EXACT_RADIUS = 740
_EDT_BIG = 1 << 30  # "no mask pixel in this column"; + any d² ≤ 2·8192² stays inside int32


def _column_distance_sq(mask: torch.Tensor) -> torch.Tensor:
    """B×H×W bool → int32 squared vertical distance to the nearest True pixel in the same column."""
    b, h, w = mask.shape
    rows = torch.arange(h, device=mask.device, dtype=torch.int32).view(1, h, 1).expand(b, h, w)
    neg = torch.full_like(rows, -_EDT_BIG)
    prev = torch.where(mask, rows, neg).cummax(dim=1).values               # last True at or above
    nxt = -torch.where(mask, -rows, neg).flip(1).cummax(dim=1).values.flip(1)  # first True at or below
    g = torch.minimum(rows - prev, nxt - rows).clamp(max=1 << 15)
    g2 = g * g
    return torch.where(g2 >= 1 << 30, torch.full_like(g2, _EDT_BIG), g2)


def _row_envelope_torch(g2: torch.Tensor, radius: int) -> torch.Tensor:
    """min_k g2[..., k] + (j − k)² over |j − k| ≤ radius, by shifts; stops once every pixel is settled
    (after shift s every unvisited k costs ≥ (s+1)², so d² ≤ (s+1)² everywhere means done)."""
    d2 = g2.clone()
    w = g2.shape[-1]
    for s in range(1, min(radius, w - 1) + 1):
        s2 = s * s
        torch.minimum(d2[..., s:], g2[..., :-s] + s2, out=d2[..., s:])
        torch.minimum(d2[..., :-s], g2[..., s:] + s2, out=d2[..., :-s])
        if s % 8 == 0 and int(d2.max()) <= (s + 1) ** 2:
            break
    return d2


_TRITON_KERNEL = None
_TRITON_BROKEN = False


def _triton_row_envelope(g2: torch.Tensor, radius: int, exact_float: bool = False) -> torch.Tensor:
    """Triton version of ``_row_envelope_torch``: one program per (row, block of columns); a
    BLOCK_J×BLOCK_K accumulator of candidate minima updated element-wise (no cross-lane reduction inside
    the loop), reduced once at the end. ``exact_float``: all values < 2^24, so FP32 arithmetic (FADD+FFMA
    at twice the int32 rate on Hopper) is exact."""
    global _TRITON_KERNEL
    import triton
    import triton.language as tl

    if _TRITON_KERNEL is None:
        @triton.jit
        def _kernel(g_ptr, out_ptr, W, R, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, USE_FLOAT: tl.constexpr):
            row = tl.program_id(0)
            jb = tl.program_id(1)
            j = jb * BLOCK_J + tl.arange(0, BLOCK_J)
            jmask = j < W
            base = row.to(tl.int64) * W
            own = tl.load(g_ptr + base + j, mask=jmask, other=1 << 30)
            k_lo = tl.maximum(jb * BLOCK_J - R, 0)
            k_hi = tl.minimum(jb * BLOCK_J + BLOCK_J + R, W)
            if USE_FLOAT:
                jf = j.to(tl.float32)
                acc = tl.full((BLOCK_J, BLOCK_K), 1073741824.0, tl.float32)
                for k0 in range(k_lo, k_hi, BLOCK_K):
                    k = k0 + tl.arange(0, BLOCK_K)
                    gk = tl.load(g_ptr + base + k, mask=k < k_hi, other=1 << 30).to(tl.float32)
                    d = jf[:, None] - k.to(tl.float32)[None, :]
                    acc = tl.minimum(acc, d * d + gk[None, :])
                best = tl.minimum(own, tl.min(acc, axis=1).to(tl.int32))
            else:
                acc = tl.full((BLOCK_J, BLOCK_K), 1 << 30, tl.int32)
                for k0 in range(k_lo, k_hi, BLOCK_K):
                    k = k0 + tl.arange(0, BLOCK_K)
                    gk = tl.load(g_ptr + base + k, mask=k < k_hi, other=1 << 30)
                    d = j[:, None] - k[None, :]
                    acc = tl.minimum(acc, d * d + gk[None, :])
                best = tl.minimum(own, tl.min(acc, axis=1))
            tl.store(out_ptr + base + j, best, mask=jmask)

        _TRITON_KERNEL = _kernel
    g2 = g2.contiguous()
    out = torch.empty_like(g2)
    w = g2.shape[-1]
    rows = g2.numel() // w
    block_j = 64
    _TRITON_KERNEL[(rows, triton.cdiv(w, block_j))](g2, out, w, min(radius, w), BLOCK_J=block_j, BLOCK_K=64,
                                                   USE_FLOAT=exact_float)
    return out


def triton_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 — optional accelerator
        return False
    return True


def edt_sq(mask: torch.Tensor, *, radius: int | None = None, method: str = "auto") -> torch.Tensor:
    """Exact squared Euclidean distance of every pixel to the nearest True pixel of ``mask``.

    Separable: an exact vertical 1-D distance per column (prefix max of indices), then per row the lower
    envelope min_k g²(k) + (j − k)² (the Felzenszwalb–Huttenlocher decomposition, evaluated by brute force
    over a window, which is exact for L2). Integer result: ``cv2.distanceTransform(…, DIST_L2,
    DIST_MASK_PRECISE)`` squared and rounded gives the same numbers (OpenCV's float output is within 1 ulp).

    Args:
        mask: H×W or B×H×W bool tensor (any device).
        radius: distances ≤ radius are exact, larger ones saturate at (radius+1)² (the column distances
            are clamped there first: min_k min(g², C) + (j−k)² = min(d², C)), which bounds the row search
            to ±radius. None = exact everywhere.
        method: "triton" (CUDA), "torch" (any device) or "auto".
    Returns int32 tensor of mask's shape; _EDT_BIG where the mask is empty.
    """
    squeeze = mask.dim() == 2
    m = mask[None] if squeeze else mask
    g2 = _column_distance_sq(m.bool())
    r = m.shape[-1] if radius is None else radius
    if radius is not None:
        g2 = g2.clamp_(max=(radius + 1) ** 2)
    # Candidates are ≤ (radius+1)² + (radius+64)² after the clamp: exact in FP32 below 2^24.
    fp32_exact = radius is not None and (radius + 1) ** 2 + (radius + 64) ** 2 < 2**24
    global _TRITON_BROKEN
    if method == "auto":
        method = "triton" if triton_available(m.device) and not _TRITON_BROKEN else "torch"
        if method == "triton":
            try:
                d2 = _triton_row_envelope(g2, r, exact_float=fp32_exact)
                return d2[0] if squeeze else d2
            except Exception as exc:  # noqa: BLE001 — a Triton/driver mismatch must not take inference down
                _TRITON_BROKEN = True
                logging.getLogger(__name__).warning("Triton distance transform failed (%s); using torch", exc)
                method = "torch"
    d2 = _triton_row_envelope(g2, r, exact_float=fp32_exact) if method == "triton" else _row_envelope_torch(g2, r)
    return d2[0] if squeeze else d2


def trimap_gaussian_torch(trimap2: torch.Tensor, *, method: str = "auto") -> torch.Tensor:
    """N×6×H×W float32 FBA encoding from N×2×H×W (bg, fg) masks on the masks' device (GPU pre-processing).

    d² here is the exact integer; OpenCV's float distance carries ≤ 1 ulp of rounding, so the channels agree
    with ``trimap_gaussian`` to ~1e-6 relative (exactly 0 beyond ``GAUSS_EXACT_RADIUS`` in both)."""
    n, _, h, w = trimap2.shape
    d2f = edt_sq((trimap2 > 0).reshape(n * 2, h, w), radius=GAUSS_EXACT_RADIUS, method=method).float()
    out = torch.empty((n * 2, 3, h, w), device=trimap2.device, dtype=torch.float32)
    for j, sigma in enumerate(GAUSS_TRIMAP_SIGMAS):
        torch.exp(-d2f / (2.0 * sigma * sigma), out=out[:, j])
    present = (trimap2 > 0).reshape(n * 2, -1).any(dim=1)
    out.mul_(present.view(-1, 1, 1, 1))  # empty mask: its three channels stay 0 (official); no host sync
    return out.view(n, 6, h, w)


# --------------------------------------------------------------------------- padding


def official_padding(h: int, w: int) -> tuple[int, int]:
    """Rows/cols SIM appends bottom/right: (⌊h/8⌋+1)·8 − h, i.e. always 1…8, even for multiples of 8."""
    return (h // STRIDE + 1) * STRIDE - h, (w // STRIDE + 1) * STRIDE - w


def pad_reflect(arr: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    """Bottom/right padding with OpenCV BORDER_REFLECT semantics (edge pixel repeated = numpy 'symmetric')."""
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, widths, mode="symmetric")


# --------------------------------------------------------------------------- network inputs


@dataclass
class NetworkInputs:
    """Batched N×C×H×W tensors for ``SIMNet`` (H, W padded to multiples of 8)."""

    image: torch.Tensor
    image_n: torch.Tensor
    trimap2: torch.Tensor
    trimap_gauss: torch.Tensor
    trimap: torch.Tensor  # N×1×H×W raw 0/128/255 values as float

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.image, self.image_n, self.trimap2, self.trimap_gauss, self.trimap)

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> NetworkInputs:
        return NetworkInputs(*(t[..., y0:y1, x0:x1] for t in self.tensors()))

    def for_network(self, dtype: torch.dtype = torch.float32,
                    memory_format: torch.memory_format = torch.contiguous_format) -> NetworkInputs:
        """The four network inputs stored in ``dtype`` (bf16/fp16 for low-precision inference: the autocast
        convolutions would cast them anyway, so the alpha is unchanged, and the decoder's full-resolution
        concatenation with them no longer promotes its bf16 features to float32) and ``memory_format``."""
        as_input = {"dtype": dtype, "memory_format": memory_format}
        return NetworkInputs(image=self.image.to(**as_input), image_n=self.image_n.to(**as_input),
                             trimap2=self.trimap2.to(**as_input), trimap_gauss=self.trimap_gauss.to(**as_input),
                             trimap=self.trimap)

    @staticmethod
    def cat(parts: Sequence[NetworkInputs]) -> NetworkInputs:
        """Stack equally sized inputs along the batch dimension (one forward pass for several images)."""
        if len(parts) == 1:
            return parts[0]
        return NetworkInputs(*(torch.cat(ts, dim=0) for ts in zip(*(p.tensors() for p in parts))))


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    return (image - mean) / std


def build_inputs(image: np.ndarray, trimap: np.ndarray, device: torch.device | str = "cpu") -> NetworkInputs:
    """Official pre-processing of one image on an already padded H×W×3 float image in [0,1] and
    H×W uint8 trimap. The distance transform runs on the CPU (OpenCV, exact)."""
    t2 = trimap_two_channel(trimap)
    gauss = trimap_gaussian(t2)

    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].to(device)

    img = to_t(image.astype(np.float32))
    return NetworkInputs(image=img, image_n=normalize_image(img), trimap2=to_t(t2), trimap_gauss=to_t(gauss),
                         trimap=torch.from_numpy(trimap.astype(np.float32))[None, None].to(device))


def build_inputs_torch(image: torch.Tensor, trimap: torch.Tensor, *, gauss_method: str = "auto",
                       dtype: torch.dtype = torch.float32,
                       memory_format: torch.memory_format = torch.contiguous_format) -> NetworkInputs:
    """``build_inputs`` on the device: image N×3×H×W float32 in [0,1] and trimap N×1×H×W uint8, both padded
    and already on the device. The distance transform runs there too (``trimap_gaussian_torch``).

    ``dtype``, ``memory_format``: see :meth:`NetworkInputs.for_network`.
    """
    t2 = torch.cat([trimap == TRIMAP_BG, trimap == TRIMAP_FG], dim=1).float()
    gauss = trimap_gaussian_torch(t2, method=gauss_method)
    return NetworkInputs(image=image, image_n=normalize_image(image), trimap2=t2, trimap_gauss=gauss,
                         trimap=trimap.float()).for_network(dtype, memory_format)


def finalize_alpha_torch(alpha: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """``finalize_alpha`` on the device (same values): clamp, then force the known regions."""
    a = alpha.float().clamp(0.0, 1.0)
    a = torch.where(trimap == TRIMAP_BG, torch.zeros_like(a), a)
    return torch.where(trimap == TRIMAP_FG, torch.ones_like(a), a)


def finalize_alpha(alpha: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """Official post-processing: clamp, force the known regions (ref §5.2)."""
    alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    alpha[trimap == TRIMAP_BG] = 0.0
    alpha[trimap == TRIMAP_FG] = 1.0
    return alpha


# --------------------------------------------------------------------------- tiling


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int


def tile_grid(h: int, w: int, tile: int, overlap: int) -> list[Tile]:
    """Cover H×W with tiles of side ≤ ``tile`` (multiples of 8) overlapping by ≥ ``overlap``.

    Tiles are evenly spread (the last one flush with the border) so every seam has full overlap.
    """
    if tile % STRIDE or overlap % STRIDE:
        raise ValueError("tile and overlap must be multiples of 8")
    if overlap * 2 >= tile:
        raise ValueError("overlap must be less than half the tile size")

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        count = int(np.ceil((n - overlap) / (tile - overlap)))
        last = n - tile
        return sorted({round(i * last / (count - 1) / STRIDE) * STRIDE for i in range(count)})

    return [Tile(y, min(y + tile, h), x, min(x + tile, w)) for y in starts(h) for x in starts(w)]


def tile_cores(tiles: list[Tile], h: int, w: int) -> list[Tile]:
    """A partition of H×W into one core per tile (overlaps split at their middle, on the 8-px grid), so
    that per-tile sums over the cores add up to a whole-image sum."""
    def cuts(spans: list[tuple[int, int]], n: int) -> dict[tuple[int, int], tuple[int, int]]:
        spans = sorted(set(spans))
        out = {}
        for i, (a, b) in enumerate(spans):
            lo = 0 if i == 0 else (spans[i - 1][1] + a) // 2 // STRIDE * STRIDE
            hi = n if i == len(spans) - 1 else (b + spans[i + 1][0]) // 2 // STRIDE * STRIDE
            out[(a, b)] = (lo, hi)
        return out

    ys = cuts([(t.y0, t.y1) for t in tiles], h)
    xs = cuts([(t.x0, t.x1) for t in tiles], w)
    return [Tile(*ys[(t.y0, t.y1)], *xs[(t.x0, t.x1)]) for t in tiles]


def blend_window(th: int, tw: int, tile: Tile, h: int, w: int, overlap: int) -> np.ndarray:
    """th×tw float32 weights: linear ramps over ``overlap`` px on sides that border another tile."""
    def ramp(n: int, at_start: bool, at_end: bool) -> np.ndarray:
        r = np.ones(n, np.float32)
        k = min(overlap, n)
        up = (np.arange(k, dtype=np.float32) + 0.5) / k
        if not at_start:
            r[:k] = np.minimum(r[:k], up)
        if not at_end:
            r[n - k:] = np.minimum(r[n - k:], up[::-1])
        return r

    wy = ramp(th, tile.y0 == 0, tile.y1 == h)
    wx = ramp(tw, tile.x0 == 0, tile.x1 == w)
    return wy[:, None] * wx[None, :]


def iter_batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
