"""ResNet family with the switches SIM needs: stem type, input channels, width, output stride.

One class covers the patch classifier (torchvision layout: 7×7 stem, key names identical to
``torchvision.models.resnet50``) and the matting encoder (deep 3×3 stem 64-64-128, dilated to
output stride 8). Variants are parameters, not copies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, mid_bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes, momentum=mid_bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """v1.5 bottleneck: the stride sits on the 3×3 conv (torchvision and SIM alike)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, mid_bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        # SIM's resnet_bn builds the middle BN with momentum 0.01 (ref §1.2); only matters in training.
        self.bn2 = nn.BatchNorm2d(planes, momentum=mid_bn_momentum)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS: dict[str, type[BasicBlock | Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet trunk returning the feature pyramid.

    Args:
        block: "basic" or "bottleneck".
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        in_chans: input channels of the first conv.
        stem: "7x7" (torchvision: conv1/bn1) or "deep" (three 3×3 convs conv1..conv3, widths
            stem_width, stem_width, 2·stem_width — SIM's "resnet50_BN" / timm's "s" stem).
        stem_width: width of the first stem conv.
        widths: planes per stage (channels out = planes × expansion).
        output_stride: 32 (plain), 16 or 8 (layer4 / layer3+4 dilated, first block keeps the
            previous dilation — exactly SIM's "no-stride-dilate" schedule).
        num_classes: adds avgpool + fc when given (classifier use).
        mid_bn_momentum: momentum of each block's middle BN.
    """

    def __init__(self, block: str, layers: Sequence[int], *, in_chans: int = 3, stem: str = "7x7",
                 stem_width: int = 64, widths: Sequence[int] = (64, 128, 256, 512), output_stride: int = 32,
                 num_classes: int | None = None, mid_bn_momentum: float = 0.1) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose from {sorted(BLOCKS)}")
        if stem not in ("7x7", "deep"):
            raise ValueError(f"unknown stem {stem!r}; choose '7x7' or 'deep'")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("layers and widths need 4 entries (layer1..layer4)")
        block_cls = BLOCKS[block]
        self.stem_type = stem
        self.relu = nn.ReLU(inplace=True)
        if stem == "7x7":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_width)
            stem_out = stem_width
        else:
            self.conv1 = _conv3x3(in_chans, stem_width, stride=2)
            self.bn1 = nn.BatchNorm2d(stem_width)
            self.conv2 = _conv3x3(stem_width, stem_width)
            self.bn2 = nn.BatchNorm2d(stem_width)
            self.conv3 = _conv3x3(stem_width, stem_width * 2)
            self.bn3 = nn.BatchNorm2d(stem_width * 2)
            stem_out = stem_width * 2
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[output_stride]
        self._inplanes = stem_out
        self._dilation = 1
        self._mid_bn_momentum = mid_bn_momentum
        self.layer1 = self._make_layer(block_cls, widths[0], layers[0], stride=1, dilate=False)
        self.layer2 = self._make_layer(block_cls, widths[1], layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block_cls, widths[2], layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block_cls, widths[3], layers[3], stride=2, dilate=dilate[2])
        # Channels of [stem, layer1..layer4] so decoders and heads are built from the record.
        self.feature_channels: tuple[int, ...] = (stem_out,) + tuple(w * block_cls.expansion for w in widths)
        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.feature_channels[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block_cls: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int, dilate: bool) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._inplanes != planes * block_cls.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block_cls.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block_cls.expansion),
            )
        layers = [block_cls(self._inplanes, planes, stride, previous_dilation, downsample, self._mid_bn_momentum)]
        self._inplanes = planes * block_cls.expansion
        layers += [block_cls(self._inplanes, planes, 1, self._dilation, None, self._mid_bn_momentum)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: torch.Tensor, first_conv_extra: torch.Tensor | None = None) -> torch.Tensor:
        """Stem up to (not including) max-pool. ``first_conv_extra`` is added to conv1's output
        before bn1 — how SIM injects the semantic trimap (ref §1.3)."""
        x = self.conv1(x)
        if first_conv_extra is not None:
            x = x + first_conv_extra
        x = self.relu(self.bn1(x))
        if self.stem_type == "deep":
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        return x

    def forward_features(self, x: torch.Tensor, first_conv_extra: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Returns [stem (H/2), layer1 (H/4), layer2, layer3, layer4]."""
        s = self.stem(x, first_conv_extra)
        f1 = self.layer1(self.maxpool(s))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [s, f1, f2, f3, f4]
