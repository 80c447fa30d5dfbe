"""Semantic trimap: patch-classifier CAMs from sliding windows, stitched into a C×H×W map (ref §2.3).

For images with both sides ≥ the window size this is exactly the official procedure. A side shorter
than a window would give the official code a negative offset (it then silently classifies a strip cut
from the far end); here the window shrinks to the full side instead, so every pixel is covered once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backend.protocol import TRIMAP_UNKNOWN

WINDOW_SIZES = (320, 800)


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
                    channels_last: bool = False) -> torch.Tensor:
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
    Returns:
        N×C×H×W in [0,1], scaled per image; zero outside trimap == 128.
    """
    n, _, h, w = image_n.shape
    unknown = trimap == TRIMAP_UNKNOWN
    x = torch.cat([image_n, trimap / 255.0], dim=1)
    candidates: list[tuple[int, int, int, int, int]] = []
    for size in window_sizes:
        wh, ys = window_starts(h, size)
        ww, xs = window_starts(w, size)
        candidates += [(b, y, x0, wh, ww) for b in range(n) for y in ys for x0 in xs]
    # Group windows by shape (skipping those without unknown pixels) so each group is batched.
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
    for (b, y, x0, wh, ww), keep in zip(candidates, window_has_unknown(unknown[:, 0], candidates)):
        if keep:
            groups[(wh, ww)].append((b, y, x0))
    num_classes = classifier.fc.out_features
    if not groups:  # no unknown pixels anywhere
        return torch.zeros((n, num_classes, h, w), device=image_n.device, dtype=out_dtype)
    dev = image_n.device
    total = torch.zeros((n, num_classes, h, w), device=dev, dtype=torch.float32)
    count = torch.zeros((n, 1, h, w), device=dev, dtype=torch.float32)
    pixels = batch_pixels or default_batch_pixels(dev)
    for (wh, ww), wins in groups.items():
        step = batch_size or max(1, pixels // (wh * ww))
        for i in range(0, len(wins), step):
            chunk = wins[i:i + step]
            patches = torch.stack([x[b, :, y:y + wh, x0:x0 + ww] for b, y, x0 in chunk])
            if channels_last:
                patches = patches.contiguous(memory_format=torch.channels_last)
            _, cam, _ = classifier(patches)
            del patches
            # The small stride-32 CAMs go to float32 in the accumulator's layout in one copy: a channels-last
            # upsample added into it runs a strided kernel ~5× slower than the bandwidth allows (H200 profile).
            cam = cam.float().contiguous()
            # Upsampled one window at a time: a whole batch of full-size float32 CAMs would be the
            # stage's largest tensor (0.5 GiB for ten 800-px windows). Slice-adds beat one sort-based
            # index_put_ per batch on an H200 (13.6 vs 16.1 ms of classifier stage at 1024², 53.7 vs 62.6 at 2048²).
            for j, (b, y, x0) in enumerate(chunk):
                up = F.interpolate(cam[j:j + 1], size=(wh, ww), mode="bilinear", align_corners=False)
                total[b, :, y:y + wh, x0:x0 + ww] += up[0]
                count[b, :, y:y + wh, x0:x0 + ww] += 1
            del cam
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
    active = smap.amax(dim=1) > 0
    if not active.any():
        return {name: 0.0 for name in class_names}
    winners = smap.argmax(dim=1)[active]
    counts = torch.bincount(winners, minlength=len(class_names)).float()
    shares = (counts / counts.sum()).tolist()
    return {name: round(s, 4) for name, s in zip(class_names, shares)}
