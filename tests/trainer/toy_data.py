"""A tiny in-test matting dataset following the trainer's sample contract (independent of trainer.data).

Sample ``i``: class ``i % num_classes`` with a class-specific alpha pattern (0: soft disc, 1: stripes,
2: blobby noise, others: rings), random colours, a random flip drawn from the *global* numpy RNG — so
tests also exercise the engine's per-sample seeding — and a trimap from erosion/dilation.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset


def toy_alpha(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy, cx = rng.uniform(0.4, 0.6, 2)
    r = np.hypot(yy - cy, xx - cx)
    if cls == 0:
        a = np.clip((0.3 - r) / 0.06 + 0.5, 0, 1)
    elif cls == 1:
        a = (np.sin(xx * rng.uniform(20, 40)) > 0).astype(np.float32) * (r < 0.35)
        a = cv2.GaussianBlur(a, (3, 3), 0)
    elif cls == 2:
        noise = cv2.resize(rng.random((8, 8)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        a = np.clip((noise - 0.45) * 4, 0, 1) * (r < 0.4)
    else:
        a = np.clip(1 - np.abs(r - 0.25) / 0.05, 0, 1)
    return a.astype(np.float32)


def toy_trimap(alpha: np.ndarray, k: int = 5) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    fg = cv2.erode((alpha >= 1.0).astype(np.uint8), kernel)
    maybe = cv2.dilate((alpha > 0).astype(np.uint8), kernel)
    tri = np.where(maybe > 0, 128, 0).astype(np.float32)
    tri[fg > 0] = 255
    return tri


class ToyMattingDataset(Dataset):
    def __init__(self, n: int = 16, size: int = 64, num_classes: int = 3, seed: int = 0) -> None:
        self.n, self.size, self.num_classes, self.seed = n, size, num_classes, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        cls = i % self.num_classes
        alpha = toy_alpha(cls, self.size, rng)
        fg = np.ones((self.size, self.size, 3), np.float32) * rng.random(3).astype(np.float32)
        bg = rng.random((self.size // 8, self.size // 8, 3)).astype(np.float32)
        bg = cv2.resize(bg, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        if np.random.random() < 0.5:  # global RNG on purpose: the engine must make this reproducible
            alpha, fg, bg = alpha[:, ::-1], fg[:, ::-1], bg[:, ::-1]
        trimap = toy_trimap(alpha)
        image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg

        def chw(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float()

        return {
            "image": chw(image),
            "fg": chw(fg),
            "bg": chw(bg),
            "alpha": torch.from_numpy(alpha.copy())[None],
            "trimap": torch.from_numpy(trimap)[None],
            "class_id": torch.tensor(cls, dtype=torch.int64),
        }
