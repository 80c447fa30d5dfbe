"""Semantic trimap: patch-classifier CAMs from sliding windows, stitched into a C×H×W map (ref §2.3).

For images with both sides ≥ the window size this is exactly the official procedure. A side shorter
than a window would give the official code a negative offset (it then silently classifies a strip cut
from the far end); here the window shrinks to the full side instead, so every pixel is covered once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backend.processing import triton_available
from backend.protocol import TRIMAP_UNKNOWN

WINDOW_SIZES = (320, 800)  # the official procedure
# Checkpoint meta key: the window sizes a checkpoint's pipeline uses instead (see ``semantic_windows``).
WINDOWS_META_KEY = "semantic_windows"


def semantic_windows(meta: Mapping[str, Any]) -> tuple[int, ...]:
    """The sliding-window sizes for a checkpoint with this ``meta``: its ``semantic_windows`` entry, else the
    official (320, 800). Our trainer computes each training crop's map from one window over the whole crop
    (``trainer.tasks.training_semantic_trimap``), so its exports name their crop size: the matting network
    never saw the context of the 800-px windows, and on the shipped model they cost 7 % of the time per photo
    for no gain (``docs/bench/semantic_windows.md``)."""
    sizes = meta.get(WINDOWS_META_KEY, WINDOW_SIZES)
    if (not isinstance(sizes, (list, tuple)) or not sizes
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 32 for v in sizes)):
        raise ValueError(f"checkpoint meta {WINDOWS_META_KEY!r} must be a non-empty list of window sizes "
                         f"(integers >= 32 px), got {sizes!r}")
    return tuple(sizes)


def window_starts(length: int, size: int) -> tuple[int, list[int]]:
    """(effective window size, start offsets): 0, s/2, 2·s/2, … while < L−s, then L−s."""
    if length <= size:
        return length, [0]
    step = size // 2
    return size, list(range(0, length - size, step)) + [length - size]


def window_has_unknown(unknown: torch.Tensor, windows: Sequence[tuple[int, int, int, int, int]]) -> list[bool]:
    """For each window (b, y, x, h, w): does it contain an unknown pixel? One summed-area table and a
    single device→host transfer instead of one synchronising ``.any()`` per window."""
    if not windows:
        return []
    n, h, w = unknown.shape
    sat = torch.zeros((n, h + 1, w + 1), device=unknown.device, dtype=torch.int32)
    sat[:, 1:, 1:] = unknown.to(torch.int32).cumsum(1).cumsum(2)
    idx = torch.tensor(windows, device=unknown.device, dtype=torch.long)
    b, y0, x0 = idx[:, 0], idx[:, 1], idx[:, 2]
    y1, x1 = y0 + idx[:, 3], x0 + idx[:, 4]
    inside = sat[b, y1, x1] - sat[b, y0, x1] - sat[b, y1, x0] + sat[b, y0, x0]
    return (inside > 0).tolist()


def default_batch_pixels(device: torch.device) -> int:
    """Pixels per classifier batch: a few windows on CPU (cache-friendly), many on a GPU (fills the chip)."""
    return 8 * 320 * 320 if device.type == "cpu" else 64 * 320 * 320


@torch.no_grad()
def semantic_trimap(classifier: nn.Module, image_n: torch.Tensor, trimap: torch.Tensor, *,
                    window_sizes: Sequence[int] = WINDOW_SIZES, batch_size: int | None = 8,
                    batch_pixels: int | None = None, out_dtype: torch.dtype = torch.float32,
                    channels_last: bool = False, stitch: str = "auto") -> torch.Tensor:
    """Args:
        classifier: PatchClassifier returning (logits, cam, features).
        image_n: N×3×H×W ImageNet-normalised RGB (already padded).
        trimap: N×1×H×W raw trimap values {0, 128, 255} as float.
        window_sizes: sliding-window sizes; both accumulate into one map.
        batch_size: windows of equal shape run together (same result, fewer launches); None = from
            ``batch_pixels`` (default: per device, see ``default_batch_pixels``).
        out_dtype: dtype of the returned map (accumulation is always float32). Under bf16/fp16 autocast the
            matting net casts the map to that dtype at its first conv anyway, so returning it in that dtype
            gives the same alpha with half the memory.
        channels_last: feed the window batches in channels-last layout (faster convolutions).
        stitch: how the windows' CAMs are upsampled and summed: "rows" (separable, one grid row of windows
            at a time, any device), "triton" (one kernel per window size that gathers, for each pixel, the
            bilinear samples of the windows covering it; CUDA, or Triton's CPU interpreter in tests) or
            "auto" (Triton on CUDA where it is installed, else rows). Same map up to float rounding.
    Returns:
        N×C×H×W in [0,1], scaled per image; zero outside trimap == 128.
    """
    n, _, h, w = image_n.shape
    unknown = trimap == TRIMAP_UNKNOWN
    x = torch.cat([image_n, trimap / 255.0], dim=1)
    grids = [(*window_starts(h, size), *window_starts(w, size)) for size in window_sizes]  # (wh, ys, ww, xs)
    candidates = [(si, b, iy, ix) for si, (_, ys, _, xs) in enumerate(grids)
                  for b in range(n) for iy in range(len(ys)) for ix in range(len(xs))]
    boxes = [(b, grids[si][1][iy], grids[si][3][ix], grids[si][0], grids[si][2]) for si, b, iy, ix in candidates]
    # Group windows (indices into candidates / boxes) by shape, skipping those without unknown pixels, so
    # each group is batched.
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for k, ((_, _, _, wh, ww), keep) in enumerate(zip(boxes, window_has_unknown(unknown[:, 0], boxes))):
        if keep:
            groups[(wh, ww)].append(k)
    num_classes = classifier.fc.out_features
    if not groups:  # no unknown pixels anywhere
        return torch.zeros((n, num_classes, h, w), device=image_n.device, dtype=out_dtype)
    dev = image_n.device
    if stitch == "auto":
        stitch = "triton" if triton_available(dev) and not _STITCH_BROKEN else "rows"
    total = torch.zeros((n, num_classes, h, w), device=dev, dtype=torch.float32)
    count = torch.zeros((n, 1, h, w), device=dev, dtype=torch.float32)
    pixels = batch_pixels or default_batch_pixels(dev)
    for (wh, ww), ks in groups.items():
        step = batch_size or max(1, pixels // (wh * ww))
        cams = []
        for i in range(0, len(ks), step):
            chunk = [boxes[k] for k in ks[i:i + step]]
            patches = torch.stack([x[b, :, y:y + wh, x0:x0 + ww] for b, y, x0, _, _ in chunk])
            if channels_last:
                patches = patches.contiguous(memory_format=torch.channels_last)
            _, cam, _ = classifier(patches)
            del patches
            # The small stride-32 CAMs, copied to float32 in the accumulator's layout (a CUDA-graph replay
            # overwrites its output buffer; a channels-last upsample added into the map runs a strided kernel
            # ~5× slower than the bandwidth allows, H200 profile).
            cams.append(cam.to(torch.float32, memory_format=torch.contiguous_format, copy=True))
        _stitch(torch.cat(cams), [candidates[k] for k in ks], grids, total, count, stitch)
    # In place from here: at 8192² one C×H×W float32 map is 5 GiB, a second copy would not fit a budget.
    smap = total.div_(count.clamp_(min=1))
    del count
    # Global min–max over each image's whole map (all classes, all pixels, uncovered zeros included), so a
    # batch of images gives each the map it would get alone; no host sync.
    lo, hi = smap.amin(dim=(1, 2, 3), keepdim=True), smap.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    smap.sub_(lo).div_(torch.where(span > 0, span, torch.ones_like(span)))
    smap.mul_(unknown & (span > 0))
    return smap if out_dtype == torch.float32 else smap.to(out_dtype)


def _stitch(cams: torch.Tensor, wins: list[tuple[int, int, int, int]],
            grids: list[tuple[int, list[int], int, list[int]]], total: torch.Tensor, count: torch.Tensor,
            method: str) -> None:
    """Add the bilinear upsampling of each window's CAM (``cams[j]`` for ``wins[j]`` = (size index, image,
    row, column of the window grid)) into ``total`` and 1 into ``count`` over the window's pixels."""
    global _STITCH_BROKEN
    done: set[int] = set()  # size indices already added by the kernel
    if method == "triton":
        try:
            for si in sorted({w[0] for w in wins}):
                _stitch_triton(cams, wins, si, grids[si], total, count)
                done.add(si)
            return
        except Exception as exc:  # a Triton/driver mismatch must not take inference down
            if cams.device.type != "cuda":
                raise
            _STITCH_BROKEN = True
            logging.getLogger(__name__).warning("Triton window stitching failed (%s); using torch", exc)
    _stitch_rows(cams, [(j, w) for j, w in enumerate(wins) if w[0] not in done], grids, total, count)


def _upsample_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """n_out × n_in: 1-D linear upsampling with align_corners=False as a matrix (the weights F.interpolate
    uses per axis for bilinear)."""
    eye = torch.eye(n_in, device=device).reshape(n_in, 1, n_in)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


ROW_CHUNK = 2048  # columns per vertical pass: bounds the temporary (C × window height × chunk) at 8192² too


def _stitch_rows(cams: torch.Tensor, wins: list[tuple[int, tuple[int, int, int, int]]],
                 grids: list[tuple[int, list[int], int, list[int]]], total: torch.Tensor, count: torch.Tensor) -> None:
    """Bilinear upsampling is separable (Ry · cam · Rxᵀ), so the windows of one grid row are upsampled along x
    at CAM height and summed into a strip, which is then upsampled along y once: each full-resolution pixel
    is written once per grid row instead of once per window (2–3× faster than an upsample and two slice-adds
    per window on the 2-core CPU, alphamatting photos). ``wins``: (index into ``cams``, window)."""
    ch, cw = cams.shape[-2:]
    rows: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
    for j, (si, b, iy, ix) in wins:
        rows[(si, b, iy)].append((ix, j))
    mats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for (si, b, iy), row in rows.items():
        wh, ys, ww, xs = grids[si]
        if si not in mats:
            mats[si] = (_upsample_matrix(ch, wh, cams.device), _upsample_matrix(cw, ww, cams.device).T.contiguous())
        ry, rxt = mats[si]
        lo, hi = min(xs[ix] for ix, _ in row), max(xs[ix] for ix, _ in row) + ww
        strip = cams.new_zeros((cams.shape[1], ch, hi - lo))
        covered = cams.new_zeros(hi - lo)
        for ix, j in row:
            x0 = xs[ix] - lo
            strip[:, :, x0:x0 + ww] += cams[j] @ rxt
            covered[x0:x0 + ww] += 1
        y = ys[iy]
        for c0 in range(0, hi - lo, ROW_CHUNK):
            c1 = min(c0 + ROW_CHUNK, hi - lo)
            total[b, :, y:y + wh, lo + c0:lo + c1] += ry @ strip[:, :, c0:c1]
        count[b, 0, y:y + wh, lo:hi] += covered


_STITCH_KERNEL = None
_STITCH_BROKEN = False


def _stitch_triton(cams: torch.Tensor, wins: list[tuple[int, int, int, int]], si: int,
                   grid: tuple[int, list[int], int, list[int]], total: torch.Tensor, count: torch.Tensor) -> None:
    """The windows of size index ``si`` in one launch: one program per (image row, block of columns) loops
    over the grid rows and columns whose windows cover it (scalar tests, so only those ≤ 3 × 3 are sampled),
    takes each window's bilinear sample of its CAM (PyTorch's align_corners=False arithmetic) for all
    classes at once, and adds the sum into ``total`` / the number of windows into ``count``. Each pixel
    belongs to one program: no atomics, a deterministic order."""
    global _STITCH_KERNEL
    import triton
    import triton.language as tl

    if _STITCH_KERNEL is None:
        @triton.jit
        def _kernel(cam_ptr, slot_ptr, ys_ptr, xs_ptr, total_ptr, count_ptr, C, H, W, NY, NX, WH, WW, CH, CW,
                    scale_y, scale_x, C_PAD: tl.constexpr, BLOCK: tl.constexpr):
            row = tl.program_id(0)
            b = row // H
            y = row % H
            x_lo = tl.program_id(1) * BLOCK
            x = x_lo + tl.arange(0, BLOCK)
            c = tl.arange(0, C_PAD)
            inside = (c[:, None] < C) & (x[None, :] < W)
            plane = CH * CW
            acc = tl.zeros((C_PAD, BLOCK), tl.float32)
            cnt = tl.zeros((BLOCK,), tl.float32)
            for iy in range(NY):
                ly = y - tl.load(ys_ptr + iy)
                if (ly >= 0) & (ly < WH):
                    sy = tl.maximum((ly.to(tl.float32) + 0.5) * scale_y - 0.5, 0.0)
                    ty0 = sy.to(tl.int32)  # sy ≥ 0: truncation is floor
                    ty1 = tl.minimum(ty0 + 1, CH - 1)
                    fy = sy - ty0.to(tl.float32)
                    for ix in range(NX):
                        x0 = tl.load(xs_ptr + ix)
                        slot = tl.load(slot_ptr + (b * NY + iy) * NX + ix)
                        if (slot >= 0) & (x0 < x_lo + BLOCK) & (x0 + WW > x_lo):
                            lx = x - x0
                            covered = (lx >= 0) & (lx < WW) & (x < W)
                            sx = tl.maximum((lx.to(tl.float32) + 0.5) * scale_x - 0.5, 0.0)
                            tx0 = tl.minimum(sx.to(tl.int32), CW - 1)
                            tx1 = tl.minimum(tx0 + 1, CW - 1)
                            fx = sx - tx0.to(tl.float32)
                            base = cam_ptr + slot.to(tl.int64) * C * plane + c[:, None] * plane
                            m = (c[:, None] < C) & covered[None, :]
                            v00 = tl.load(base + ty0 * CW + tx0[None, :], mask=m, other=0.0)
                            v01 = tl.load(base + ty0 * CW + tx1[None, :], mask=m, other=0.0)
                            v10 = tl.load(base + ty1 * CW + tx0[None, :], mask=m, other=0.0)
                            v11 = tl.load(base + ty1 * CW + tx1[None, :], mask=m, other=0.0)
                            wx = fx[None, :]
                            top = (1.0 - wx) * v00 + wx * v01
                            bottom = (1.0 - wx) * v10 + wx * v11
                            acc += tl.where(m, (1.0 - fy) * top + fy * bottom, 0.0)
                            cnt += tl.where(covered, 1.0, 0.0)
            offs = ((b * C + c[:, None]).to(tl.int64) * H + y) * W + x[None, :]
            tl.store(total_ptr + offs, tl.load(total_ptr + offs, mask=inside, other=0.0) + acc, mask=inside)
            coffs = (b.to(tl.int64) * H + y) * W + x
            tl.store(count_ptr + coffs, tl.load(count_ptr + coffs, mask=x < W, other=0.0) + cnt, mask=x < W)

        _STITCH_KERNEL = _kernel
    wh, ys, ww, xs = grid
    n, c, h, w = total.shape
    slots = torch.full((n, len(ys), len(xs)), -1, dtype=torch.int32)
    for j, (s, b, iy, ix) in enumerate(wins):
        if s == si:
            slots[b, iy, ix] = j
    dev = total.device
    ch, cw = cams.shape[-2:]
    block = 64
    _STITCH_KERNEL[(n * h, triton.cdiv(w, block))](
        cams, slots.to(dev), torch.tensor(ys, dtype=torch.int32).to(dev), torch.tensor(xs, dtype=torch.int32).to(dev),
        total, count, c, h, w, len(ys), len(xs), wh, ww, ch, cw, ch / wh, cw / ww,
        C_PAD=triton.next_power_of_2(c), BLOCK=block)


def override_semantic_trimap(class_ids: Sequence[int], trimap: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A user's class override: the named classes share weight 1 on the unknown region, others 0."""
    if not class_ids:
        raise ValueError("class override needs at least one class")
    n, _, h, w = trimap.shape
    smap = torch.zeros((n, num_classes, h, w), device=trimap.device)
    for c in class_ids:
        if not 0 <= c < num_classes:
            raise ValueError(f"class index {c} out of range for a {num_classes}-class model")
        smap[:, c] = 1.0
    return smap * (trimap == TRIMAP_UNKNOWN)


def class_shares(smap: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """Share of each class in the unknown region: per-pixel argmax over classes, counted where any class fires."""
    # one pass for both (amax then argmax was 3x slower: ~60 ms for a 0.5 MP photo on 2 cores)
    best, winner = smap.max(dim=1)
    active = best > 0
    if not active.any():
        return {name: 0.0 for name in class_names}
    winners = winner[active]
    counts = torch.bincount(winners, minlength=len(class_names)).float()
    shares = (counts / counts.sum()).tolist()
    return {name: round(s, 4) for name, s in zip(class_names, shares)}
