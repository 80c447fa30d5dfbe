"""DeepLab-v3 ASPP with weight-standardised convs and BatchNorm, as SIM's context module (ref §1.4).

Submodule indices mirror the official state-dict keys (``convs.{0..4}``, ``project``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backend.models.layers import WSConv2d


class ASPPConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__(WSConv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPPPooling(nn.Sequential):
    """Image-level branch. Its BN sees a 1×1 map, so training needs batch size > 1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), WSConv2d(cin, cout, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled``: an N×C×1×1 mean to use instead of this input's own (the average pool is skipped), e.g.
        the whole image's mean when ``x`` is one tile of it: tiles then share one context (no seams)."""
        pool, *rest = self
        v = pool(x) if pooled is None else pooled.to(x.dtype)
        for m in rest:
            v = m(v)
        return F.interpolate(v, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int = 256, rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(WSConv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                                   nn.ReLU(inplace=True))]
        branches += [ASPPConv(cin, cout, r) for r in rates]
        branches.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(WSConv2d(cout * len(branches), cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled``: optional given mean for the image-level branch, see ``ASPPPooling.forward``."""
        *convs, pooling = self.convs
        return self.project(torch.cat([*(branch(x) for branch in convs), pooling(x, pooled)], dim=1))
