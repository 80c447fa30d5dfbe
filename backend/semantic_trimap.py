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


@torch.no_grad()
def semantic_trimap(classifier: nn.Module, image_n: torch.Tensor, trimap: torch.Tensor, *,
                    window_sizes: Sequence[int] = WINDOW_SIZES, batch_size: int = 8) -> torch.Tensor:
    """Args:
        classifier: PatchClassifier returning (logits, cam, features).
        image_n: N×3×H×W ImageNet-normalised RGB (already padded).
        trimap: N×1×H×W raw trimap values {0, 128, 255} as float.
        window_sizes: sliding-window sizes; both accumulate into one map.
        batch_size: windows of equal shape run together (same result, fewer launches).
    Returns:
        N×C×H×W float in [0,1]; zero outside trimap == 128.
    """
    n, _, h, w = image_n.shape
    unknown = trimap == TRIMAP_UNKNOWN
    x = torch.cat([image_n, trimap / 255.0], dim=1)
    total: torch.Tensor | None = None
    count = torch.zeros((n, 1, h, w), device=image_n.device, dtype=torch.float32)
    # Group windows by shape so each group is one batched forward pass.
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
    for size in window_sizes:
        wh, ys = window_starts(h, size)
        ww, xs = window_starts(w, size)
        for b in range(n):
            for y in ys:
                for x0 in xs:
                    if unknown[b, :, y:y + wh, x0:x0 + ww].any():  # skip windows without unknown pixels
                        groups[(wh, ww)].append((b, y, x0))
    for (wh, ww), wins in groups.items():
        for i in range(0, len(wins), batch_size):
            chunk = wins[i:i + batch_size]
            patches = torch.stack([x[b, :, y:y + wh, x0:x0 + ww] for b, y, x0 in chunk])
            _, cam, _ = classifier(patches)
            cam = F.interpolate(cam.float(), size=(wh, ww), mode="bilinear", align_corners=False)
            if total is None:
                total = torch.zeros((n, cam.shape[1], h, w), device=image_n.device, dtype=torch.float32)
            for (b, y, x0), c in zip(chunk, cam):
                total[b, :, y:y + wh, x0:x0 + ww] += c
                count[b, :, y:y + wh, x0:x0 + ww] += 1
    num_classes = classifier.fc.out_features
    if total is None:  # no unknown pixels anywhere
        return torch.zeros((n, num_classes, h, w), device=image_n.device)
    smap = total / count.clamp(min=1)
    # Global min–max over the whole tensor (all classes, all pixels, uncovered zeros included).
    lo, hi = smap.min(), smap.max()
    smap = (smap - lo) / (hi - lo) if hi > lo else torch.zeros_like(smap)
    return smap * unknown


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
