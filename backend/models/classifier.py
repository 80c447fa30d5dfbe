"""Patch classifier (and multi-class discriminator): torchvision-layout ResNet returning logits, CAMs, features (ref §2.2, §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.models.resnet import ResNet


class PatchClassifier(ResNet):
    """Input: [ImageNet-normalised RGB, trimap/255] (4 channels) for the classifier; the
    discriminator uses [foreground, alpha]. Same class, separate weights."""

    def __init__(self, num_classes: int, block: str = "bottleneck", layers: tuple[int, ...] = (3, 4, 6, 3), *,
                 in_chans: int = 4, widths: tuple[int, ...] = (64, 128, 256, 512), stem_width: int = 64) -> None:
        super().__init__(block, layers, in_chans=in_chans, stem="7x7", stem_width=stem_width, widths=widths,
                         output_stride=32, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Returns (logits N×C, CAM N×C×h×w at stride 32, [layer1, layer2, layer3, layer4, pooled N×D])."""
        _, l1, l2, l3, l4 = self.forward_features(x)
        pooled = torch.flatten(self.avgpool(l4), 1)
        logits = self.fc(pooled)
        # CAM: the fc weight as a 1×1 projection of layer4 — no bias, no ReLU, no softmax (official).
        cam = F.conv2d(l4, self.fc.weight[:, :, None, None])
        return logits, cam, [l1, l2, l3, l4, pooled]
