"""MattingPredictor: the small API over the SIM pipeline (numpy in, numpy out).

Owns device, precision, padding, trimap encodings, the sliding-window semantic trimap, tiling and
post-processing, so callers (CLI, daemon worker, evaluation, plug-ins via the daemon) never touch tensors.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backend import processing
from backend.accel import CudaGraphRunner, inference_copy, maybe_compile, sim_inference_forward, sim_layer4
from backend.classes import SIMD_CLASSES
from backend.imageio import check_unit_range
from backend.models.weights import LoadedWeights, WeightsError, find_default, load_weights
from backend.protocol import (
    PRECISION_AUTO,
    PRECISION_MODES,
    REFINE_DEFAULT,
    REFINE_MODES,
    REFINE_NONLOCAL,
    REFINE_OFF,
    TRIMAP_STRICT,
    TRIMAP_UNKNOWN,
)
from backend.refinement import nonlocal_weight_for, prepare_refinement, refine_alpha
from backend.semantic_trimap import (
    WINDOW_SIZES,
    class_shares,
    default_batch_pixels,
    override_semantic_trimap,
    semantic_trimap,
    semantic_windows,
    window_has_unknown,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
STRIDE8 = 8  # output stride of the matting encoder (layer4 features at 1/8 resolution)
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# x86 flags of native bf16 arithmetic: there oneDNN runs bf16 convolutions faster than fp32 (2-core Zen 4, held-out
# photos: matting net 0.26 vs 0.42 s, whole network pipeline 0.50 vs 0.69 s, bench/PERFORMANCE.md); elsewhere bf16
# is emulated and slower.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache  # the flags do not change while the process runs: read /proc/cpuinfo once, not per predictor
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux /proc/cpuinfo; False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return any(f in flags for f in NATIVE_BF16_FLAGS) and torch.backends.mkldnn.is_available()


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto": bf16 autocast on CPUs with native bf16 (the trained default model scores the same: validation
    SAD 1.274 vs 1.271 in fp32), fp32 elsewhere, GPUs included (bf16 misses the 2/255 max-error goal there,
    bench/PERFORMANCE.md). Any other value is checked and returned."""
    if precision == PRECISION_AUTO:
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_MODES)}, got {precision!r}")
    return precision
# Measured peak activation memory of one matting forward ÷ ``_activation_floats_per_px`` count × bytes, for
# the lean forward of the optimised path (``accel.sim_inference_forward``) and for the module's own forward.
# CPU: VmHWM growth of a fresh process, 256–1024² (bench/PERFORMANCE.md): lean sim_lite 0.26–0.43, sim_r50
# 0.22–0.29; plain sim_lite 0.41–0.51, sim_r50 0.31–0.42. CUDA (H200, docs/bench/bench_gpu.md, "implied
# factor"): plain fp32 0.34 at 512–2048²; bf16 with cudnn.benchmark 0.50–0.65 for the module forward, so
# ~0.4 expected for the lean one (−37 % on CPU) until bench_gpu.py's fast-bf16 rows measure it.
ACTIVATION_CALIBRATION = {"cpu": 0.3, "cuda": 0.4}
ACTIVATION_CALIBRATION_PLAIN = {"cpu": 0.45, "cuda": 0.34}
# Size-independent device memory beyond weights (cuDNN workspaces, allocator rounding): the H200 run of
# bench_gpu.py (docs/bench/bench_gpu.md) fits measured ≈ 1.1 GiB + 1.56 GiB/MP for fp32-eager, of which
# weights are 0.26 GiB; 0.75 GiB reproduces 512²/1024²/2048² within 7 %.
DEVICE_OVERHEAD_GB = {"cpu": 0.0, "cuda": 0.75}
# Classifier activation elements per window pixel at its peak: analytic (ResNet-50: 64 ch at 1/4 res + 2–3
# layer1 tensors of 256 ch at 1/16 ≈ 40); checked only through the whole-pipeline rows of bench_gpu.py.
CLASSIFIER_FLOATS_PER_PX = 40.0


@dataclass
class MattingResult:
    """alpha: H×W float32 in [0,1]; foreground: H×W×3 float32 in [0,1] or None;
    semantic: C×H×W float32 semantic trimap or None; class_shares: {class: share of unknown region}."""

    alpha: np.ndarray
    foreground: np.ndarray | None = None
    semantic: np.ndarray | None = None
    class_shares: dict[str, float] | None = None
    timings: dict[str, float] = field(default_factory=dict)  # of the whole call (shared within a batch)
    tiles: int = 1
    batch: int = 1  # images that shared the forward pass


def _check_refine(mode: str) -> str:
    if mode not in REFINE_MODES:
        raise ValueError(f"refine must be one of {', '.join(REFINE_MODES)}, got {mode!r}")
    return mode


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available; use --device cpu")
    return dev


def as_rgb(image: np.ndarray) -> np.ndarray:
    """H×W×3 view/copy of grey, RGB or RGBA input, dtype unchanged (uint8, uint16 or float in [0, 1]).
    ValueError for other shapes or dtypes, and for float data outside [0, 1] or not finite."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be H×W×3 (or ×4 / grey), got shape {image.shape}")
    image = image[..., :3]
    if image.dtype not in (np.uint8, np.uint16) and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"unsupported image dtype {image.dtype}")
    if image.dtype.kind == "f":
        check_unit_range(image, "a float image")
    return image


def as_float_image(image: np.ndarray) -> np.ndarray:
    """H×W×3 float32 in [0,1] from uint8 / uint16 / float input (grey and RGBA accepted)."""
    image = as_rgb(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"unsupported image dtype {image.dtype}")


class MattingPredictor:
    """Args:
        model: a SIMNet (see ``backend.models.registry``).
        classifier: a PatchClassifier, or None (semantic trimap all zero unless classes are overridden).
        classes: class names of the model (default: the 20 SIMD classes).
        device: "auto", "cpu", "cuda", "cuda:1", ...
        precision: "auto" (bf16 on CPUs with native bf16, else fp32; see :func:`resolve_precision`),
            "fp32", or "fp16"/"bf16" autocast (GPU; bf16 also on CPU).
        tile: None = automatic from ``memory_budget_gb``; 0 = never tile; N = tile side in px.
        tile_overlap: overlap between tiles in px (multiple of 8).
        memory_budget_gb: activation memory allowed for one forward pass before tiling kicks in.
        trimap_mode: "strict" (exact 0/128/255) or "tolerant" (see processing.validate_trimap).
        foreground_head: whether the model's F head was trained (else foreground is estimated).
        optimize: run inference copies of the networks with BatchNorm folded into the convs, weight
            standardisation frozen and channels-last weights (same function in FP32, ~1e-6 relative;
            2–5× faster on CPU). ``model``/``classifier`` themselves are never modified.
        compile: ``torch.compile`` the inference copies (off by default: minutes of compilation per
            new input shape; worth it only for long-running servers with fixed sizes).
        gpu_preprocess: normalise, encode the trimap (exact distance transform) and finalise alpha on
            the device; None = on for CUDA devices (on CPU, OpenCV's distance transform is faster).
        classifier_batch: classifier windows per batch; None = by device (see semantic_trimap).
        tile_context: "image" (default) — tiles share the whole image's ASPP pooling context (one extra
            encoder pass per tile, no tile-wise offsets); "tile" — each tile pools its own (the cheaper,
            seam-prone way). Needs ``optimize`` (the lean forward).
        channels_last: with ``optimize``, run the copies and the classifier windows channels-last (NHWC).
        cuda_graphs: on CUDA, capture the matting net and the classifier batches as CUDA graphs per input
            shape and replay them (removes ~10² Python kernel launches per call). Off by default: each
            shape keeps a private activation pool (4 most recent kept per network); for fixed sizes.
        refine: "band" re-solves alpha under the closed-form Laplacian where the network is unsure
            (``backend.refinement``, on the CPU); "nonlocal" (the default, ``protocol.REFINE_DEFAULT``) adds a
            KNN-matting term to that solve (lower error on hair and fur, about 1.3x the CPU time; off for
            translucent classes); "off" returns the network's alpha.
        fuse_relu: with ``optimize``, run the ResNet blocks with conv+bias+ReLU fused in cuDNN
            (``accel.fuse_conv_relu``): None = on CUDA (the CPU has no such kernels).
        window_stitch: how the classifier windows' CAMs are summed into the map (``semantic_trimap``'s
            ``stitch``): "auto" (one Triton kernel per window size on CUDA, separable torch ops elsewhere),
            "rows" (the torch path everywhere), "triton".
    """

    def __init__(self, model: nn.Module, classifier: nn.Module | None = None, *,
                 classes: Sequence[str] | None = None, device: str | torch.device = "auto",
                 precision: str = "auto", tile: int | None = None, tile_overlap: int = 128,
                 memory_budget_gb: float = 4.0, trimap_mode: str = TRIMAP_STRICT, foreground_head: bool = False,
                 window_sizes: Sequence[int] = WINDOW_SIZES, meta: dict[str, Any] | None = None,
                 optimize: bool = True, compile: bool = False, gpu_preprocess: bool | None = None,
                 classifier_batch: int | None = None, cuda_graphs: bool = False,
                 channels_last: bool = True, tile_context: str = "image", refine: str = REFINE_DEFAULT,
                 fuse_relu: bool | None = None, window_stitch: str = "auto") -> None:
        self.device = resolve_device(device)
        precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.classifier = classifier.to(self.device).eval() if classifier is not None else None
        num_classes = getattr(model, "num_classes", len(SIMD_CLASSES))
        self.classes = tuple(classes) if classes is not None else (
            SIMD_CLASSES if num_classes == len(SIMD_CLASSES) else tuple(f"class_{i}" for i in range(num_classes)))
        if len(self.classes) != num_classes:
            raise ValueError(f"model has {num_classes} semantic classes but {len(self.classes)} names were given")
        if self.classifier is not None and self.classifier.fc.out_features != num_classes:
            raise ValueError(f"classifier predicts {self.classifier.fc.out_features} classes, model expects {num_classes}")
        self.precision = precision
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.memory_budget_gb = memory_budget_gb
        self.trimap_mode = trimap_mode
        self.foreground_head = foreground_head
        self.window_sizes = tuple(window_sizes)
        self.meta = dict(meta or {})
        self.optimize = optimize
        self.compile = compile
        # Explicit True also works on CPU (torch EDT): slower than OpenCV there, but it tests the device path.
        self.gpu_preprocess = (self.device.type == "cuda") if gpu_preprocess is None else bool(gpu_preprocess)
        self.classifier_batch = classifier_batch
        self.fuse_relu = (self.device.type == "cuda") if fuse_relu is None else bool(fuse_relu)
        if window_stitch not in ("auto", "rows", "triton"):
            raise ValueError(f"window_stitch must be 'auto', 'rows' or 'triton', got {window_stitch!r}")
        self.window_stitch = window_stitch
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.channels_last = channels_last and optimize
        if tile_context not in ("image", "tile"):
            raise ValueError(f"tile_context must be 'image' or 'tile', got {tile_context!r}")
        self.tile_context = tile_context
        self.refine = _check_refine(refine)
        self._nets: tuple[nn.Module, nn.Module | None] | None = None
        self._graphs: dict[str, CudaGraphRunner] = {}
        self._inplace = False  # True when this predictor alone holds the modules (from_pretrained)

    def refresh(self) -> None:
        """Drop the cached inference copies (call after changing ``model``/``classifier`` weights in place)."""
        self._nets = None
        self._graphs = {}

    def _networks(self) -> tuple[nn.Module, nn.Module | None]:
        """(matting net, classifier) as run: the optimised copies, built on first use, or the originals."""
        if self._nets is None:
            if self.optimize:
                # The weights are stored in the autocast dtype (the values autocast would cast them to at every
                # call: on the CPU in bf16, 0.479 -> 0.458 s per held-out photo, the same alpha bit for bit).
                opts = {"channels_last": self.channels_last, "inplace": self._inplace,
                        "fuse_relu": self.fuse_relu, "dtype": PRECISIONS[self.precision]}
                net: nn.Module = inference_copy(self.model, **opts)
                clf = inference_copy(self.classifier, **opts) if self.classifier is not None else None
            else:
                net, clf = self.model.eval(), (self.classifier.eval() if self.classifier is not None else None)
            net = maybe_compile(net, self.compile)
            clf = maybe_compile(clf, self.compile) if clf is not None else None
            if self.cuda_graphs and clf is not None:
                clf = _GraphedClassifier(clf, self._graph("classifier", self._cam_fn(clf)))
            self._nets = (net, clf)
        return self._nets

    def _graph(self, name: str, fn: Callable[..., Any]) -> CudaGraphRunner:
        if name not in self._graphs:
            self._graphs[name] = CudaGraphRunner(fn)
        return self._graphs[name]

    def _graph_autocast(self) -> contextlib.AbstractContextManager:
        # Inside a captured graph the autocast weight-cast cache must be off (casts are part of the graph).
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=dtype, cache_enabled=False)

    def _cam_fn(self, clf: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def cam(x: torch.Tensor) -> torch.Tensor:
            with self._graph_autocast():
                return clf(x)[1]
        return cam

    def _net_fn(self, net: nn.Module, aux: bool) -> Callable[..., dict[str, torch.Tensor]]:
        def run(image: torch.Tensor, image_n: torch.Tensor, trimap2: torch.Tensor, gauss: torch.Tensor,
                smap: torch.Tensor) -> dict[str, torch.Tensor]:
            with self._graph_autocast():
                return self._call_net(net, (image, image_n, trimap2, gauss, smap), aux)
        return run

    @property
    def _lean(self) -> bool:
        """Whether the lean inference forward runs: it frees the feature pyramid early (same ops, same result)
        and takes a whole-image pooled context; a compiled module keeps its own forward, and plain
        (optimize=False) runs stay exactly the model's code."""
        return self.optimize and not self.compile

    def _call_net(self, net: nn.Module, args: tuple[torch.Tensor, ...], aux: bool,
                  pooled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self._lean:
            return sim_inference_forward(net, *args, aux=aux, pooled=pooled)
        return net(*args, aux=aux)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, weights: str | Path | None = None, classifier: str | Path | None = None, *,
                        device: str | torch.device = "auto", **kwargs: Any) -> MattingPredictor:
        """Load matting weights (ours or official) and a classifier; None = the default weights."""
        wpath = Path(weights) if weights else find_default("matting")
        if wpath is None:
            raise WeightsError("no matting weights found: pass --weights FILE, put semantic-matte-matting.pt in "
                               "$SEMANTIC_MATTE_MODELS or ~/.local/share/semantic-matte/models, or train one "
                               "with `semantic-matte train`")
        mw = load_weights(wpath, "matting")
        cpath = Path(classifier) if classifier else (find_default("classifier") if not weights else None)
        if cpath is None and weights and mw.meta.get("classifier"):
            sibling = wpath.parent / mw.meta["classifier"]
            cpath = sibling if sibling.is_file() else None
        cw: LoadedWeights | None = load_weights(cpath, "classifier") if cpath else None
        if cw is None:
            log.warning("no classifier weights: the semantic trimap is empty unless classes are given")
        classes = mw.classes
        if cw is not None and len(cw.classes) != len(classes):
            raise WeightsError(f"classifier has {len(cw.classes)} classes, matting model {len(classes)}")
        meta = {"matting_weights": str(wpath), "classifier_weights": str(cpath) if cpath else None,
                "arch": mw.arch, "classifier_arch": cw.arch if cw else None, "source": mw.source, **mw.meta}
        # the sliding windows the checkpoint's pipeline was validated with (official SIM: 320 and 800)
        try:
            kwargs.setdefault("window_sizes", semantic_windows(mw.meta))
        except ValueError as exc:
            raise WeightsError(f"{wpath}: {exc}") from exc
        pred = cls(mw.model, cw.model if cw else None, classes=classes, device=device,
                   foreground_head=bool(mw.meta.get("foreground_head", False)), meta=meta, **kwargs)
        pred._inplace = True  # the loaded modules are ours alone: optimise them in place, no second weight copy
        return pred

    def info(self) -> dict[str, Any]:
        return {"model": getattr(self.model, "arch", type(self.model).__name__),
                "classifier": getattr(self.classifier, "arch", None) if self.classifier is not None else None,
                "classes": list(self.classes), "device": str(self.device), "precision": self.precision,
                "optimize": self.optimize, "gpu_preprocess": self.gpu_preprocess,
                "semantic_windows": list(self.window_sizes),
                "foreground": "head" if self.foreground_head else "estimated", **{k: v for k, v in self.meta.items()
                                                                                  if isinstance(v, (str, int, float))}}

    # ------------------------------------------------------------------ inference

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _activation_floats_per_px(self) -> float:
        """Analytic count of the activation elements live at the peak of one matting forward, per input
        pixel, from the layer widths (skips held for the decoder, the widest stage outputs, ASPP)."""
        c_stem, c_l1, _, c_l3, c_l4 = self.model.encoder.feature_channels
        dec = self.model.decoder
        u1 = dec.conv_up1[0].out_channels
        head = dec.conv_up4_alpha[0].in_channels
        floats = 3 * head + 64 + self.model.num_classes + 30 + 3 / 4 * (c_stem + dec.conv_up3[0].in_channels)
        floats += 3 / 16 * (c_l1 + dec.conv_up2[0].in_channels) + (3 * c_l4 + 2 * c_l3 + 7 * u1 + 4 * c_l4) / 64
        return floats

    def _act_bytes(self) -> int:
        # CPU bf16 autocast keeps fp32 activations around the convolutions (a fresh-process 512² sim_lite
        # forward grew VmHWM by 0.13 GiB in bf16, the fp32 estimate): only CUDA halves them.
        return 2 if PRECISIONS[self.precision] is not None and self.device.type == "cuda" else 4

    def estimate_memory_gb(self, h: int, w: int) -> float:
        """Activation memory (GiB) of one matting forward pass at this predictor's precision and device.

        The analytic count times a measured factor (``ACTIVATION_CALIBRATION``, see bench/PERFORMANCE.md):
        allocators reuse buffers, so the true peak is about half of the count of live tensors.
        """
        return self._activation_floats_per_px() * h * w * self._act_bytes() * self._act_factor() / 2**30

    def _act_factor(self) -> float:
        table = ACTIVATION_CALIBRATION if self._lean else ACTIVATION_CALIBRATION_PLAIN
        return table.get(self.device.type, 0.5)

    def estimate_peak_gb(self, h: int, w: int, tile: int | None = None) -> float:
        """Predicted peak device memory (GiB) of a whole ``predict`` on a padded h×w image, before running it:
        weights (originals + optimised copies), the whole-image inputs, then the larger of the semantic-trimap
        phase (float32 accumulator + one classifier batch) and the matting phase (map + one tile's activations)."""
        px = h * w
        nets = [m for m in (self.model, self.classifier) if m is not None]
        weights = sum(p.numel() * p.element_size() for m in nets for p in m.parameters())
        weights *= 2 if self.optimize and not self._inplace else 1
        low = PRECISIONS[self.precision] is not None and self.device.type == "cuda"
        in_bytes = 2 if low else 4
        c = self.model.num_classes
        inputs = px * (14 * in_bytes + 4 + 1)  # image, image_n, trimap2, 6 Gaussians; trimap as float; uint8 upload
        smap = px * c * (2 if low else 4)
        pre = px * (4 * 3 + 4 * 6 + 4 * 6)  # transient: float image, float32 Gaussians, int32 EDT buffers
        if self.classifier is not None:
            batch_px = self.classifier_batch * 320 * 320 if self.classifier_batch else default_batch_pixels(self.device)
            batch_px = min(batch_px, 4 * px)  # the 320-px windows at half-window stride cover each pixel ≤ 4×
            clf_act = batch_px * (CLASSIFIER_FLOATS_PER_PX * self._act_bytes() + 4 * c)  # + upsampled CAMs
            semantic = px * (4 * c + 4 + 16 + 1) + clf_act + (smap if low else 0)
        else:
            semantic = smap
        side = self._pick_tile(h, w, tile)
        tile_px = px if side <= 0 else min(px, side * side)
        matting = smap + tile_px * self._activation_floats_per_px() * self._act_bytes() * self._act_factor()
        if side > 0 and tile_px < px:
            matting += px * 8  # alpha accumulator and blend weights
        return (weights + inputs + max(pre, semantic, matting)) / 2**30 + DEVICE_OVERHEAD_GB.get(self.device.type, 0.0)

    def _pick_tile(self, h: int, w: int, tile: int | None) -> int:
        tile = self.tile if tile is None else tile
        if tile is not None:
            if tile < 0:
                raise ValueError(f"tile must be None (from the memory budget), 0 (never) or a side in px, got {tile}")
            return tile
        if self.estimate_memory_gb(h, w) <= self.memory_budget_gb:
            return 0
        side = 512
        while self.estimate_memory_gb(side + 512, side + 512) <= self.memory_budget_gb:
            side += 512
        return side

    @torch.no_grad()
    def predict(self, image: np.ndarray, trimap: np.ndarray, *, classes: Sequence[str] | None = None,
                want_foreground: bool = False, want_semantic: bool = False, tile: int | None = None,
                trimap_mode: str | None = None, semantic: bool = True, refine: str | None = None,
                progress: ProgressFn | None = None) -> MattingResult:
        """Matte one image.

        Args:
            image: H×W×3 (or grey / RGBA) uint8, uint16 or float in [0,1].
            trimap: H×W uint8 with 0 (background), 128 (unknown), 255 (foreground).
            classes: override the classifier with these class names (semantic trimap = those classes).
            want_foreground: also return decontaminated foreground colours.
            want_semantic: also return the C×H×W semantic trimap and per-class shares.
            tile: per-call override of the predictor's tiling (None = predictor setting).
            trimap_mode: per-call override of "strict" / "tolerant".
            semantic: False runs with an all-zero semantic trimap (the ablation without the classifier).
            refine: per-call override of the predictor's refinement ("band" / "nonlocal" / "off").
            progress: callback(fraction in [0,1], stage name).
        """
        return self._predict([image], [trimap], classes=classes, want_foreground=want_foreground,
                             want_semantic=want_semantic, tile=tile, trimap_mode=trimap_mode, semantic=semantic,
                             refine=refine, progress=progress)[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[np.ndarray], trimaps: Sequence[np.ndarray], *,
                      classes: Sequence[str] | None = None, want_foreground: bool = False,
                      want_semantic: bool = False, trimap_mode: str | None = None, semantic: bool = True,
                      refine: str | None = None, progress: ProgressFn | None = None) -> list[MattingResult]:
        """Matte several images of the same size in one pass of each network (the daemon batches small
        queued requests this way: a GPU is far from full on one small image). Each result equals
        ``predict`` on that image alone (the semantic trimap is scaled per image); never tiled, so keep
        batches small enough for ``estimate_peak_gb``. Arguments as in ``predict``."""
        if not images or len(images) != len(trimaps):
            raise ValueError(f"need as many trimaps as images (≥ 1), got {len(images)} and {len(trimaps)}")
        return self._predict(images, trimaps, classes=classes, want_foreground=want_foreground,
                             want_semantic=want_semantic, tile=0, trimap_mode=trimap_mode, semantic=semantic,
                             refine=refine, progress=progress)

    def _predict(self, images: Sequence[np.ndarray], trimaps: Sequence[np.ndarray], *,
                 classes: Sequence[str] | None, want_foreground: bool, want_semantic: bool, tile: int | None,
                 trimap_mode: str | None, semantic: bool, refine: str | None,
                 progress: ProgressFn | None) -> list[MattingResult]:
        report = progress or (lambda f, s: None)
        refine = _check_refine(refine or self.refine)
        t0 = time.perf_counter()
        rgbs, tris = [], []
        for image, trimap in zip(images, trimaps):
            rgb = as_rgb(image)
            tri = processing.validate_trimap(np.asarray(trimap), trimap_mode or self.trimap_mode)
            if rgb.shape[:2] != tri.shape:
                raise ValueError(f"image is {rgb.shape[1]}×{rgb.shape[0]} but trimap is {tri.shape[1]}×{tri.shape[0]}")
            if tris and tri.shape != tris[0].shape:
                raise ValueError(f"a batch needs images of one size: {tris[0].shape} and {tri.shape}")
            rgbs.append(rgb)
            tris.append(tri)
        n = len(tris)
        h, w = tris[0].shape
        # refinement and foreground estimation both need the float image: convert once
        images_f = [as_float_image(rgb) if refine != REFINE_OFF or want_foreground else None for rgb in rgbs]
        # The refinement's image-only work (colour alpha, the nonlocal term's KD-trees) runs beside the network:
        # its serial parts fill the cores the network leaves idle (held-out photos: 0.72 -> 0.67 s per photo).
        preparing = None
        if refine != REFINE_OFF:
            pool = ThreadPoolExecutor(1)
            preparing = [pool.submit(prepare_refinement, image_f, tri, nonlocal_term=refine == REFINE_NONLOCAL)
                         for image_f, tri in zip(images_f, tris)]
            pool.shutdown(wait=False)
        ph, pw = processing.official_padding(h, w)
        net, clf = self._networks()
        low = PRECISIONS[self.precision]
        tri_dev: torch.Tensor | None = None
        if self.gpu_preprocess:
            inputs, tri_dev = self._device_inputs(rgbs, tris, ph, pw, low)
        else:
            inputs = processing.NetworkInputs.cat([
                processing.build_inputs(processing.pad_reflect(as_float_image(rgb), ph, pw),
                                        processing.pad_reflect(tri, ph, pw), self.device)
                for rgb, tri in zip(rgbs, tris)]).for_network(
                    low or torch.float32, torch.channels_last if self.channels_last else torch.contiguous_format)
        hp, wp = h + ph, w + pw
        timings = {"preprocess": self._elapsed(t0)}
        report(0.05, "preprocess")

        t1 = time.perf_counter()
        num_classes = self.model.num_classes
        smap_dtype = low if (low is not None and self.device.type == "cuda") else torch.float32
        if classes:
            ids = [self._class_index(c) for c in classes]
            smap = override_semantic_trimap(ids, inputs.trimap, num_classes).to(smap_dtype)
        elif semantic and clf is not None:
            with self._autocast():
                smap = semantic_trimap(clf, inputs.image_n, inputs.trimap, window_sizes=self.window_sizes,
                                       batch_size=self.classifier_batch, out_dtype=smap_dtype,
                                       channels_last=self.channels_last, stitch=self.window_stitch)
        else:
            smap = torch.zeros((n, num_classes, hp, wp), device=self.device, dtype=smap_dtype)
        timings["classifier"] = self._elapsed(t1)
        report(0.25, "semantic trimap")

        t2 = time.perf_counter()
        aux = want_foreground and self.foreground_head
        side = self._pick_tile(hp, wp, tile) if n == 1 else 0
        alpha_t, fg_t, n_tiles = self._run_matting(net, inputs, smap, side, aux, report)
        timings["matting"] = self._elapsed(t2)

        t3 = time.perf_counter()
        results = []
        alphas = None  # on the device path: every image finalised at once, one download
        if tri_dev is not None:
            alphas = processing.finalize_alpha_torch(alpha_t[:, 0, :h, :w], tri_dev[:, 0, :h, :w]).cpu().numpy()
        for i, (rgb, tri) in enumerate(zip(rgbs, tris)):
            if alphas is not None:
                alpha = np.ascontiguousarray(alphas[i])
            else:
                alpha = processing.finalize_alpha(alpha_t[i, 0, :h, :w].float().cpu().numpy(), tri)
            image_f = images_f[i]
            shares = class_shares(smap[i:i + 1, :, :h, :w].float(), self.classes) \
                if want_semantic or refine == REFINE_NONLOCAL else None
            if preparing is not None:
                t4 = time.perf_counter()
                # the semantic trimap decides whether the nonlocal term applies (not to translucent matter)
                alpha = refine_alpha(image_f, tri, alpha, prepared=preparing[i].result(),
                                     nonlocal_weight=nonlocal_weight_for(shares) if refine == REFINE_NONLOCAL else 0.0)
                timings["refine"] = timings.get("refine", 0.0) + time.perf_counter() - t4
            fg = None
            if want_foreground:
                fg = self._foreground(image_f, alpha, fg_t[i, :, :h, :w].float().cpu().numpy()
                                      .transpose(1, 2, 0) if fg_t is not None else None)
            result = MattingResult(alpha=alpha, foreground=fg, timings=timings, tiles=n_tiles, batch=n)
            if want_semantic:
                result.semantic = np.ascontiguousarray(smap[i, :, :h, :w].float().cpu().numpy())
                result.class_shares = shares
            results.append(result)
        timings["postprocess"] = time.perf_counter() - t3
        timings["total"] = time.perf_counter() - t0
        report(1.0, "done")
        return results

    def _elapsed(self, since: float) -> float:
        # Kernels run asynchronously on a GPU: wait for them so each stage is charged its own time.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - since

    def _upload(self, arr: np.ndarray) -> torch.Tensor:
        """numpy → device; on CUDA through pinned memory with a non-blocking copy."""
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    def _device_inputs(self, rgbs: Sequence[np.ndarray], tris: Sequence[np.ndarray], ph: int, pw: int,
                       low: torch.dtype | None) -> tuple[processing.NetworkInputs, torch.Tensor]:
        """Pad on the host in the inputs' own dtype (1 byte/channel for uint8), upload the batch at once, and
        build the network inputs on the device. uint→float division happens on the device: same IEEE result
        (a batch mixing dtypes is converted on the host instead: the same values)."""
        raws = [processing.pad_reflect(rgb if rgb.dtype in (np.uint8, np.uint16) else as_float_image(rgb), ph, pw)
                for rgb in rgbs]
        if len({r.dtype for r in raws}) > 1:
            raws = [as_float_image(r) for r in raws]
        raw = np.stack(raws) if len(raws) > 1 else raws[0][None]
        tri_dev = self._upload(np.stack([processing.pad_reflect(t, ph, pw) for t in tris]))[:, None]
        img = self._upload(raw).permute(0, 3, 1, 2)
        if raw.dtype == np.uint8:
            img = img.float() / 255.0
        elif raw.dtype == np.uint16:
            img = img.float() / 65535.0
        # The upload is already channels-last (HWC permuted): keep the network inputs so, or every
        # full-resolution concatenation with them mixes layouts (slow copies, H200 profile).
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        img = img.contiguous(memory_format=fmt)
        inputs = processing.build_inputs_torch(img, tri_dev, dtype=low or torch.float32, memory_format=fmt)
        return inputs, tri_dev

    def _class_index(self, name: str | int) -> int:
        if isinstance(name, int) or str(name).isdigit():
            return int(name)
        if name not in self.classes:
            raise ValueError(f"unknown class {name!r}; this model knows: {', '.join(self.classes)}")
        return self.classes.index(name)

    def _forward(self, net: nn.Module, inputs: processing.NetworkInputs, smap: torch.Tensor,
                 aux: bool, pooled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        args = (inputs.image, inputs.image_n, inputs.trimap2, inputs.trimap_gauss, smap)
        if self.cuda_graphs and pooled is None:  # graphs are captured for whole images, not context tiles
            try:
                out = self._graph(f"matting-aux{int(aux)}", self._net_fn(net, aux))(*args)
                # Static graph buffers are overwritten by the next replay: hand out copies.
                return {k: v.float().clone() if v.dtype == torch.float32 else v.float() for k, v in out.items()}
            except Exception as exc:  # noqa: BLE001 — graphs are an optional accelerator
                log.warning("CUDA graph capture failed (%s); running eager from now on", exc)
                self.cuda_graphs = False
                self.refresh()
                net, _ = self._networks()
        with self._autocast():
            out = self._call_net(net, args, aux, pooled)
        return {k: v.float() for k, v in out.items()}

    def _run_matting(self, net: nn.Module, inputs: processing.NetworkInputs, smap: torch.Tensor, tile: int,
                     aux: bool, report: ProgressFn) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        _, _, hp, wp = inputs.image.shape
        if tile <= 0 or (hp <= tile and wp <= tile):
            out = self._forward(net, inputs, smap, aux)
            return out["alpha"], out.get("fg"), 1
        overlap = min(self.tile_overlap, (tile // 2 - 8) // 8 * 8)
        tiles = processing.tile_grid(hp, wp, tile, overlap)
        unknown = (inputs.trimap == TRIMAP_UNKNOWN)[0, 0]
        acc = torch.zeros((1, 1, hp, wp), device=self.device)
        acc_fg = torch.zeros((1, 3, hp, wp), device=self.device) if aux else None
        weight = torch.zeros((1, 1, hp, wp), device=self.device)
        windows = [(0, t.y0, t.x0, t.y1 - t.y0, t.x1 - t.x0) for t in tiles]
        # Tiles without unknown pixels add nothing; one summed-area query instead of a sync per tile.
        todo = [t for t, keep in zip(tiles, window_has_unknown(unknown[None], windows)) if keep]
        pooled = self._global_context(net, inputs, smap, tiles) if self.tile_context == "image" and todo else None
        for i, t in enumerate(todo):
            out = self._forward(net, inputs.crop(t.y0, t.y1, t.x0, t.x1), smap[..., t.y0:t.y1, t.x0:t.x1], aux,
                                pooled)
            wgt = self._upload(processing.blend_window(t.y1 - t.y0, t.x1 - t.x0, t, hp, wp, overlap))
            acc[..., t.y0:t.y1, t.x0:t.x1] += out["alpha"] * wgt
            if acc_fg is not None:
                acc_fg[..., t.y0:t.y1, t.x0:t.x1] += out["fg"] * wgt
            weight[..., t.y0:t.y1, t.x0:t.x1] += wgt
            del out
            report(0.25 + 0.7 * (i + 1) / len(todo), f"tile {i + 1}/{len(todo)}")
        weight = weight.clamp(min=1e-6)
        return acc / weight, (acc_fg / weight if acc_fg is not None else None), len(todo)

    @torch.no_grad()
    def _global_context(self, net: nn.Module, inputs: processing.NetworkInputs, smap: torch.Tensor,
                        tiles: list[processing.Tile]) -> torch.Tensor | None:
        """Whole-image mean of the stride-8 features for the ASPP image-pooling branch, from an encoder
        pass per tile summed over disjoint tile cores. Without it every tile pools its own mean, which
        shifts each tile's output by a tile-wide offset (the seams of naive tiling)."""
        if not self._lean:
            return None  # the module's own forward has no hook for it
        _, _, hp, wp = inputs.image.shape
        total: torch.Tensor | None = None
        for t, c in zip(tiles, processing.tile_cores(tiles, hp, wp)):
            crop = inputs.crop(t.y0, t.y1, t.x0, t.x1)
            with self._autocast():
                l4 = sim_layer4(net, crop.image_n, crop.trimap2, crop.trimap_gauss, smap[..., t.y0:t.y1, t.x0:t.x1])
            s = STRIDE8
            part = l4[..., (c.y0 - t.y0) // s:(c.y1 - t.y0) // s, (c.x0 - t.x0) // s:(c.x1 - t.x0) // s]
            part = part.float().sum(dim=(2, 3), keepdim=True)
            total = part if total is None else total + part
            del l4
        assert total is not None
        return total / ((hp // STRIDE8) * (wp // STRIDE8))

    def _foreground(self, image: np.ndarray, alpha: np.ndarray, head_fg: np.ndarray | None) -> np.ndarray:
        """Decontaminated foreground: the F head where trained, else multilevel foreground estimation."""
        if head_fg is not None:
            fg = np.clip(head_fg, 0.0, 1.0)
            # Where alpha is 1 the image is the foreground; keep the head only where it matters.
            return np.where(alpha[..., None] >= 0.999, image, fg).astype(np.float32)
        from pymatting import estimate_foreground_ml  # optional-path import: only the cut-out needs it

        return np.clip(estimate_foreground_ml(image.astype(np.float64), alpha.astype(np.float64)), 0, 1).astype(np.float32)


class _GraphedClassifier:
    """Classifier stand-in for ``semantic_trimap`` that replays captured graphs of the CAM computation.
    Only ``fc`` (class count) and the CAM are used there; logits and features are not computed."""

    def __init__(self, clf: nn.Module, runner: CudaGraphRunner) -> None:
        self.fc = clf.fc
        self._clf = clf
        self._runner: CudaGraphRunner | None = runner

    def __call__(self, x: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        if self._runner is not None:
            try:
                return None, self._runner(x), None
            except Exception as exc:  # noqa: BLE001 — graphs are an optional accelerator
                log.warning("CUDA graph capture of the classifier failed (%s); running eager", exc)
                self._runner = None
        return None, self._clf(x)[1], None
