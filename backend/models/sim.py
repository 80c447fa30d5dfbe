"""SIM matting network: deep-stem dilated ResNet encoder + semantic side conv + ASPP decoder (ref §1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backend.models.decoder import SIMDecoder
from backend.models.resnet import ResNet

# ImageNet-normalised RGB (3) + 6 Gaussian distance-transform trimap channels + 2-channel trimap.
ENCODER_INPUT_CHANNELS = 11


class SIMEncoder(ResNet):
    """ResNet trunk whose conv1 sees the 11 ordinary channels while ``conv1_side`` (7×7, stride 2)
    sees the C-channel semantic trimap; the two are summed before bn1 (ref §1.3)."""

    def __init__(self, num_classes: int, block: str, layers: Sequence[int], *, stem_width: int,
                 widths: Sequence[int], output_stride: int = 8) -> None:
        super().__init__(block, layers, in_chans=ENCODER_INPUT_CHANNELS, stem="deep", stem_width=stem_width,
                         widths=widths, output_stride=output_stride, mid_bn_momentum=0.01)
        self.conv1_side = nn.Conv2d(num_classes, stem_width, 7, stride=2, padding=3, bias=False)

    def forward(self, x11: torch.Tensor, smap: torch.Tensor) -> list[torch.Tensor]:
        return [x11] + self.forward_features(x11, self.conv1_side(smap))


class SIMNet(nn.Module):
    """Inputs (N×·×H×W, H and W multiples of 8):
        image: RGB in [0,1]; image_n: ImageNet-normalised RGB; trimap2: (bg, fg) one-hot;
        trimap_gauss: 6 Gaussian distance channels; smap: C-channel semantic trimap in [0,1].
    Returns ``{"alpha"}`` and, when ``aux`` (default: training mode), ``"fg"``, ``"bg"`` and
    ``"lambdas"`` (r1 weights ∇F, r2 ∇B, r3 ∇α).
    """

    def __init__(self, encoder: SIMEncoder, decoder: SIMDecoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.num_classes = num_classes

    def forward(self, image: torch.Tensor, image_n: torch.Tensor, trimap2: torch.Tensor,
                trimap_gauss: torch.Tensor, smap: torch.Tensor, *, aux: bool | None = None) -> dict[str, torch.Tensor]:
        if image.shape[-2] % 8 or image.shape[-1] % 8:
            raise ValueError(f"SIMNet needs H and W multiples of 8, got {tuple(image.shape[-2:])}; pad first")
        x11 = torch.cat([image_n, trimap_gauss, trimap2], dim=1)
        feats = self.encoder(x11, smap)
        return self.decoder(feats[1:], image, image_n, trimap2, self.training if aux is None else aux)
