"""Small building blocks shared by the SIM model parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WSConv2d(nn.Conv2d):
    """Conv2d with weight standardisation applied at every forward pass (SIM ref §1.6).

    Each output filter is centred by its mean over (in, kh, kw) and divided by
    ``sqrt(unbiased_var + 1e-12) + 1e-5``. Checkpoints store the raw weights, so this must run
    at use time; the two epsilons are FBA's NaN-avoiding variant inherited by SIM.
    """

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        flat = w.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = torch.sqrt(flat.var(dim=1, unbiased=True) + 1e-12).view(-1, 1, 1, 1) + 1e-5
        return (w - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2, align_corners=False, as every decoder stage of SIM/FBA."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
