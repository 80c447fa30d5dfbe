"""Shared fixtures: tiny models, seeded RNG, locations of the shared real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
ALPHAMATTING = SHARED_DATA / "alphamatting"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def alphamatting() -> Path:
    if not (ALPHAMATTING / "image").is_dir():
        pytest.skip("shared alphamatting data not available")
    return ALPHAMATTING


def make_example(h: int = 96, w: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small synthetic (image uint8 H×W×3, trimap uint8, alpha float) triple with a soft disc."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    d = np.sqrt((yy - h / 2) ** 2 + (xx - w / 2) ** 2)
    alpha = np.clip((min(h, w) / 3 - d) / 6 + 0.5, 0, 1).astype(np.float32)
    fg = np.array([220, 120, 40], np.float32)
    bg = r.uniform(0, 255, (h, w, 3)).astype(np.float32)
    image = (alpha[..., None] * fg + (1 - alpha[..., None]) * bg).astype(np.uint8)
    trimap = np.full((h, w), 128, np.uint8)
    trimap[alpha == 0] = 0
    trimap[alpha == 1] = 255
    return image, trimap, alpha


def randomise_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so folding / loading tests see real BN."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
