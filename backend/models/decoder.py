"""SIM decoder: ASPP on the deepest features, three ×2 up-stages with skips, alpha / F-B / λ heads (ref §1.5–1.6)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backend.models.aspp import ASPP
from backend.models.layers import WSConv2d, upsample2x


def _ws_block(cin: int, cout: int) -> list[nn.Module]:
    return [WSConv2d(cin, cout, 3, padding=1, bias=True), nn.BatchNorm2d(cout), nn.LeakyReLU(0.01)]


def _head(cin: int, cout: int, widths: tuple[int, int] = (32, 16)) -> nn.Sequential:
    # Plain convs, no norm; the last 1×1 has no bias (official key layout .0/.2/.4).
    return nn.Sequential(nn.Conv2d(cin, widths[0], 3, padding=1), nn.LeakyReLU(0.01),
                         nn.Conv2d(widths[0], widths[1], 3, padding=1), nn.LeakyReLU(0.01),
                         nn.Conv2d(widths[1], cout, 1, bias=False))


class SIMDecoder(nn.Module):
    """Args:
        feature_channels: channels of [stem, layer1, layer2, layer3, layer4] from the encoder.
        aspp_channels: ASPP width (256 official).
        atrous_rates: ASPP dilations (12, 24, 36 official).
        up_channels: widths of conv_up1, conv_up2, conv_up3 (256, 256, 64 official).
    """

    # image_n (3) + image in [0,1] (3) + two-channel trimap (2) joined to the last features.
    SKIP_INPUT_CHANNELS = 8

    def __init__(self, feature_channels: Sequence[int], *, aspp_channels: int = 256,
                 atrous_rates: Sequence[int] = (12, 24, 36), up_channels: Sequence[int] = (256, 256, 64)) -> None:
        super().__init__()
        c_stem, c_l1, _, _, c_l4 = feature_channels
        u1, u2, u3 = up_channels
        self.global_module = ASPP(c_l4, aspp_channels, atrous_rates)
        self.conv_up1 = nn.Sequential(*_ws_block(c_l4 + aspp_channels, u1), *_ws_block(u1, u1))
        self.conv_up2 = nn.Sequential(*_ws_block(u1 + c_l1, u2))
        self.conv_up3 = nn.Sequential(*_ws_block(u2 + c_stem, u3))
        self.conv_up4_alpha = _head(u3 + self.SKIP_INPUT_CHANNELS, 1)
        self.conv_up4_fb = _head(u3 + self.SKIP_INPUT_CHANNELS, 6)
        self.conv_up4_attn = _head(u3, 3)

    def forward(self, features: list[torch.Tensor], image: torch.Tensor, image_n: torch.Tensor,
                trimap2: torch.Tensor, aux: bool) -> dict[str, torch.Tensor]:
        stem, l1, _, _, l4 = features
        x = torch.cat([l4, self.global_module(l4)], dim=1)
        x = upsample2x(self.conv_up1(x))
        x = upsample2x(self.conv_up2(torch.cat([x, l1], dim=1)))
        x = upsample2x(self.conv_up3(torch.cat([x, stem], dim=1)))
        y = torch.cat([x, image_n, image, trimap2], dim=1)
        return self.heads(y, x if aux else None)

    def heads(self, y: torch.Tensor, x: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Output heads on ``y`` = [decoder features, image_n, image, trimap2]: alpha (clamped); with the
        decoder features ``x`` also F/B (sigmoid) and the λ maps (training / cut-out colours)."""
        out = {"alpha": torch.clamp(self.conv_up4_alpha(y), 0.0, 1.0)}
        if x is not None:
            fb = torch.sigmoid(self.conv_up4_fb(y))
            out["fg"], out["bg"] = fb[:, :3], fb[:, 3:]
            out["lambdas"] = torch.sigmoid(self.conv_up4_attn(x))
        return out
