"""Inference-only model transforms: fold BatchNorm into the preceding conv, freeze weight standardisation,
channels-last memory format, optional ``torch.compile``.

These never touch the caller's module: ``inference_copy`` deep-copies first, so a trainer can keep
training the original. Folding is exact algebra (BN in eval mode is an affine map per channel), so the
folded network equals the original up to FP32 rounding (~1e-6 relative); the official-path test pins that.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from backend.models.layers import WSConv2d, upsample2x
from backend.models.resnet import BasicBlock, Bottleneck, ResNet

log = logging.getLogger(__name__)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(x) = scale·x + shift in eval mode (float64 for the fold itself)."""
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _effective_weight(conv: nn.Conv2d) -> torch.Tensor:
    # WS convs standardise at every call; at inference the standardised weight is a constant.
    return conv.standardized_weight() if isinstance(conv, WSConv2d) else conv.weight


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A plain Conv2d computing bn(conv(x)) (eval mode), bias included."""
    scale, shift = _bn_affine(bn)
    w = _effective_weight(conv).detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(shift)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        fused.bias.copy_((b * scale + shift).to(conv.weight.dtype))
    return fused


def _scale_conv(conv: nn.Conv2d, scale: torch.Tensor) -> nn.Conv2d:
    """conv with its output channels multiplied by ``scale`` (no bias added)."""
    out = copy.deepcopy(conv)
    with torch.no_grad():
        out.weight.copy_((_effective_weight(conv).detach().double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        if out.bias is not None:
            out.bias.copy_((conv.bias.detach().double() * scale).to(conv.weight.dtype))
    return out


def _freeze_ws(conv: WSConv2d) -> nn.Conv2d:
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                      padding_mode=conv.padding_mode).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(conv.standardized_weight())
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    return plain


def _sequential_pairs(seq: nn.Sequential) -> Iterator[tuple[str, str]]:
    names = list(seq._modules)
    for a, b in itertools.pairwise(names):
        if isinstance(seq._modules[a], nn.Conv2d) and isinstance(seq._modules[b], nn.BatchNorm2d):
            yield a, b


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every conv→BN pair of our model families in place; returns the number folded.

    Covers nn.Sequential conv→BN runs (decoder, ASPP, downsample), ResNet blocks (convN/bnN) and the
    ResNet stem, including SIM's semantic side conv which is summed into conv1 before bn1: bn(a + b) =
    (scale·a + shift) + scale·b, so conv1 takes the shift and conv1_side gets the scale only.
    WS convs with no BN after them are frozen to plain convs (standardised once instead of per call).
    """
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            for a, b in list(_sequential_pairs(module)):
                module._modules[a] = fold_conv_bn(module._modules[a], module._modules[b])
                module._modules[b] = nn.Identity()
                folded += 1
        elif isinstance(module, (BasicBlock, Bottleneck)):
            for i in (1, 2, 3):
                conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    setattr(module, f"conv{i}", fold_conv_bn(conv, bn))
                    setattr(module, f"bn{i}", nn.Identity())
                    folded += 1
        if isinstance(module, ResNet):
            side = getattr(module, "conv1_side", None)
            if isinstance(side, nn.Conv2d) and isinstance(module.bn1, nn.BatchNorm2d):
                module.conv1_side = _scale_conv(side, _bn_affine(module.bn1)[0])
            stems = (1, 2, 3) if module.stem_type == "deep" else (1,)
            for i in stems:
                conv, bn = getattr(module, f"conv{i}"), getattr(module, f"bn{i}")
                if isinstance(bn, nn.BatchNorm2d):
                    setattr(module, f"conv{i}", fold_conv_bn(conv, bn))
                    setattr(module, f"bn{i}", nn.Identity())
                    folded += 1
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, WSConv2d):
                module._modules[name] = _freeze_ws(child)
    return folded


_CUDNN_FUSION = {"ok": True}  # cleared (with a warning) the first time cuDNN refuses a fused call


def _conv_relu(conv: nn.Conv2d, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """relu(conv(x) [+ z]): on CUDA one cuDNN call with bias, sum and activation fused (no separate
    bias-add and ReLU passes over the output; autocast does not cover these ops, so inputs take the
    weights' dtype); elsewhere, or if cuDNN has no fused kernel for a case, the plain ops."""
    if x.is_cuda and _CUDNN_FUSION["ok"]:
        w = conv.weight
        args = (conv.stride, conv.padding, conv.dilation, conv.groups)
        try:
            if z is None:
                return torch.cudnn_convolution_relu(x.to(w.dtype), w, conv.bias, *args)
            return torch.cudnn_convolution_add_relu(x.to(w.dtype), w, z.to(w.dtype), 1.0, conv.bias, *args)
        except RuntimeError as exc:  # an accelerator, never a failure: fall back for good
            log.warning("cuDNN fused conv+ReLU unavailable (%s); running the plain ops", exc)
            _CUDNN_FUSION["ok"] = False
    out = conv(x)
    return torch.relu(out if z is None else out + z)


class FusedBottleneck(Bottleneck):
    """Inference forward of a BN-folded bottleneck with its ReLUs fused into the convs (and the residual
    sum into the last one): the H200 profile showed the separate bias-add and ReLU passes costing about
    as much as the classifier's convolutions themselves. With it the whole SIM-R50 pipeline went from
    28.8 to 23.9 ms at 1024² and from 107.4 to 91.4 ms at 2048² (H200, fp16 + CUDA graphs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = _conv_relu(self.conv2, _conv_relu(self.conv1, x))
        return _conv_relu(self.conv3, out, identity)


class FusedBasicBlock(BasicBlock):
    """``FusedBottleneck`` for the two-conv block (the lite models')."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return _conv_relu(self.conv2, _conv_relu(self.conv1, x), identity)


_FUSED = {Bottleneck: FusedBottleneck, BasicBlock: FusedBasicBlock}


def fuse_conv_relu(model: nn.Module) -> int:
    """Switch every BN-folded ResNet block of ``model`` to its fused forward (in place); returns how many."""
    fused = 0
    for module in model.modules():
        kind = _FUSED.get(type(module))
        if kind is None:
            continue
        convs = [getattr(module, f"conv{i}", None) for i in (1, 2, 3)]
        bns = [getattr(module, f"bn{i}", None) for i in (1, 2, 3)]
        if (all(type(c) is nn.Conv2d for c in convs if c is not None)
                and all(isinstance(b, nn.Identity) for b in bns if b is not None)):
            module.__class__ = kind
            fused += 1
    return fused


def inference_copy(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = False,
                   inplace: bool = False, dtype: torch.dtype | None = None, fuse_relu: bool = False) -> nn.Module:
    """An eval-mode deep copy of ``model`` with BN folded and/or channels-last weights; ``inplace`` transforms
    ``model`` itself instead (for modules nobody else holds: saves a second copy of the weights).

    ``dtype``: store the weights in the autocast dtype (CUDA fp16/bf16): autocast would cast each weight
    to exactly these values at every call, one copy kernel per parameter (≈ 1 ms per 1024² predict).
    ``fuse_relu``: ResNet blocks run conv+bias+ReLU fused (``fuse_conv_relu``; needs ``fold_bn``)."""
    out = (model if inplace else copy.deepcopy(model)).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    if fold_bn:
        n = fold_batchnorm(out)
        log.debug("folded %d conv-BN pairs in %s", n, type(model).__name__)
    for m in out.modules():
        # Every activation here follows a conv whose output nothing else reads: in place saves one full
        # tensor per stage (the full-resolution heads' LeakyReLUs are the widest).
        if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
            m.inplace = True
    if fuse_relu:
        fuse_conv_relu(out)
    if dtype is not None:
        out = out.to(dtype)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    return out


def _stem_and_layer1(enc: nn.Module, image_n: torch.Tensor, trimap2: torch.Tensor, trimap_gauss: torch.Tensor,
                     smap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SIM encoder's stem output (with the semantic side conv) and layer1 features; the concatenated input is
    released as soon as the stem has read it."""
    x = torch.cat([image_n, trimap_gauss, trimap2], dim=1)
    stem = enc.stem(x, enc.conv1_side(smap))
    del x
    return stem, enc.layer1(enc.maxpool(stem))


def sim_layer4(net: nn.Module, image_n: torch.Tensor, trimap2: torch.Tensor, trimap_gauss: torch.Tensor,
               smap: torch.Tensor) -> torch.Tensor:
    """The encoder's deepest features (stride 8) alone, releasing everything else on the way."""
    enc = net.encoder
    l1 = _stem_and_layer1(enc, image_n, trimap2, trimap_gauss, smap)[1]  # the stem is freed here
    return enc.layer4(enc.layer3(enc.layer2(l1)))


def sim_inference_forward(net: nn.Module, image: torch.Tensor, image_n: torch.Tensor, trimap2: torch.Tensor,
                          trimap_gauss: torch.Tensor, smap: torch.Tensor, *, aux: bool = False,
                          pooled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``SIMNet.forward`` (eval) with every intermediate released as soon as its last reader ran.

    The module forward keeps the whole feature pyramid (incl. layer2/layer3, which the decoder never reads,
    and layer4 after the ASPP) alive until the full-resolution heads: ~0.2 GiB/MP in bf16. Same operations
    in the same order, so the result is bitwise identical (``tests/backend/test_accel.py`` pins this
    against the model's own forward, which stays the one definition). ``pooled``: see ``ASPPPooling.forward``.
    """
    if image.shape[-2] % 8 or image.shape[-1] % 8:
        raise ValueError(f"SIMNet needs H and W multiples of 8, got {tuple(image.shape[-2:])}; pad first")
    enc, dec = net.encoder, net.decoder
    stem, l1 = _stem_and_layer1(enc, image_n, trimap2, trimap_gauss, smap)
    l4 = enc.layer4(enc.layer3(enc.layer2(l1)))
    x = torch.cat([l4, dec.global_module(l4, pooled)], dim=1)
    del l4
    x = upsample2x(dec.conv_up1(x))
    x = upsample2x(dec.conv_up2(torch.cat([x, l1], dim=1)))
    del l1
    x = upsample2x(dec.conv_up3(torch.cat([x, stem], dim=1)))
    del stem
    y = torch.cat([x, image_n, image, trimap2], dim=1)
    x_aux = x if aux else None  # without aux the features are freed before the heads run
    del x
    return dec.heads(y, x_aux)


class _CompiledOrEager(nn.Module):
    """A compiled module that falls back to its eager original for good if compilation fails at the first
    call (``torch.compile`` is lazy: a missing C++ toolchain on a CPU host only shows up there)."""

    def __init__(self, eager: nn.Module, compiled: nn.Module) -> None:
        super().__init__()
        self.eager = eager
        self.compiled = compiled
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        # Everything else (e.g. the classifier's ``fc``: class count, CAM weights) is read from the eager module.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "eager":  # not registered (yet), e.g. mid-unpickling: fail instead of recursing
                raise
            return getattr(self.eager, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 — compile is an optional accelerator
                log.warning("torch.compile failed (%s); running eager from now on", exc)
                self.failed = True
        return self.eager(*args, **kwargs)


def maybe_compile(model: nn.Module, enabled: bool, *, mode: str | None = None) -> nn.Module:
    """``torch.compile`` when asked and available; any failure, at setup or at the first call, falls back
    to eager."""
    if not enabled:
        return model
    try:
        compiled = torch.compile(model, mode=mode, dynamic=False)
    except Exception as exc:  # noqa: BLE001 — compile is an optional accelerator, never a hard dependency
        log.warning("torch.compile unavailable (%s); running eager", exc)
        return model
    return _CompiledOrEager(model, compiled)  # type: ignore[arg-type]


class CudaGraphRunner:
    """Replays a CUDA graph of ``fn`` captured once per input signature (shapes, dtypes, strides), for
    fixed-shape inference where launching ~10² kernels one by one from Python costs more than running them.

    Outputs are the graph's static buffers and are overwritten by the next replay of the same graph:
    consume (or clone) them before calling again. At most ``max_graphs`` graphs are kept (least recently
    used dropped), because each holds a private memory pool the size of its activations.
    """

    def __init__(self, fn: Callable[..., Any], max_graphs: int = 4) -> None:
        self.fn = fn
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]] = OrderedDict()

    def __call__(self, *args: torch.Tensor) -> Any:
        key = tuple((tuple(a.shape), a.dtype, a.stride(), str(a.device)) for a in args)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(args)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, args):
            dst.copy_(src)
        graph.replay()
        return static_out

    def _capture(self, args: Sequence[torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]:
        static_in = [torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device).copy_(a)
                     if a.is_contiguous() or a.is_contiguous(memory_format=torch.channels_last)
                     else a.contiguous() for a in args]
        # Warm up on a side stream (cuDNN autotuning, lazy initialisation) as graph capture requires.
        side = torch.cuda.Stream(device=static_in[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(*static_in)
        return graph, static_in, static_out
