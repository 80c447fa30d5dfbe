"""Model registry: every model is built by a registered, keyword-only builder.

CLI, configs, checkpoints and tests refer to models by these names only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from backend.classes import SIMD_CLASSES
from backend.models.classifier import PatchClassifier
from backend.models.decoder import SIMDecoder
from backend.models.sim import SIMEncoder, SIMNet


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # "matting" or "classifier" (the discriminator is a classifier architecture)
    builder: Callable[..., nn.Module]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(kind: str, description: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} registered twice")
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, kind, fn, description)
        return fn
    return wrap


def list_models(kind: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name]


def build_model(name: str, *, num_classes: int = len(SIMD_CLASSES), **overrides: object) -> nn.Module:
    """Build a registered model with random weights; records ``arch`` and ``num_classes`` on it."""
    model = get_entry(name).builder(num_classes=num_classes, **overrides)
    model.arch = name  # type: ignore[assignment]
    return model


def _sim(num_classes: int, block: str, layers: tuple[int, ...], stem_width: int, widths: tuple[int, ...],
         aspp_channels: int, up_channels: tuple[int, int, int], atrous_rates: tuple[int, ...] = (12, 24, 36)) -> SIMNet:
    encoder = SIMEncoder(num_classes, block, layers, stem_width=stem_width, widths=widths, output_stride=8)
    decoder = SIMDecoder(encoder.feature_channels, aspp_channels=aspp_channels, atrous_rates=atrous_rates,
                         up_channels=up_channels)
    return SIMNet(encoder, decoder, num_classes)


@register_model("matting", "official SIM: deep-stem ResNet-50 (BN), OS 8, ASPP 256 — 46,609,840 parameters")
def sim_r50(*, num_classes: int = 20) -> SIMNet:
    return _sim(num_classes, "bottleneck", (3, 4, 6, 3), 64, (64, 128, 256, 512), 256, (256, 256, 64))


@register_model("matting", "deep-stem ResNet-34 encoder, ASPP 128")
def sim_r34(*, num_classes: int = 20) -> SIMNet:
    return _sim(num_classes, "basic", (3, 4, 6, 3), 32, (64, 128, 256, 512), 128, (128, 128, 64))


@register_model("matting", "CPU-friendly: deep-stem ResNet-18 at half width, ASPP 96 (default model)")
def sim_lite(*, num_classes: int = 20) -> SIMNet:
    return _sim(num_classes, "basic", (2, 2, 2, 2), 24, (32, 64, 128, 256), 96, (128, 64, 32))


@register_model("matting", "tiny test configuration (one block per stage)")
def sim_tiny(*, num_classes: int = 20) -> SIMNet:
    return _sim(num_classes, "basic", (1, 1, 1, 1), 8, (8, 16, 16, 32), 16, (16, 16, 16), atrous_rates=(2, 4, 6))


@register_model("classifier", "official patch classifier: torchvision ResNet-50, 4 input channels")
def classifier_r50(*, num_classes: int = 20) -> PatchClassifier:
    return PatchClassifier(num_classes, "bottleneck", (3, 4, 6, 3))


@register_model("classifier", "ResNet-18 patch classifier")
def classifier_r18(*, num_classes: int = 20) -> PatchClassifier:
    return PatchClassifier(num_classes, "basic", (2, 2, 2, 2))


@register_model("classifier", "CPU-friendly patch classifier: ResNet-10 at half width (default model)")
def classifier_lite(*, num_classes: int = 20) -> PatchClassifier:
    return PatchClassifier(num_classes, "basic", (1, 1, 1, 1), widths=(32, 64, 128, 256), stem_width=32)


@register_model("classifier", "tiny test classifier")
def classifier_tiny(*, num_classes: int = 20) -> PatchClassifier:
    return PatchClassifier(num_classes, "basic", (1, 1, 1, 1), widths=(8, 8, 16, 16), stem_width=8)
