"""Per-model training steps: batch → loss dict (``"total"`` is optimised), evaluation, export.

Batches are dicts of float32 tensors as the data package produces them (``trainer.data``):
``image`` N×3×S×S in [0,1], ``fg``/``bg`` N×3×S×S, ``alpha`` N×1×S×S, ``trimap`` N×1×S×S with values
{0, 128, 255}, ``class_id`` N int64. The classifier and discriminator train on the same samples:
the classifier sees [ImageNet-normalised image, trimap/255] (ref §2.2), the discriminator
[foreground, α] (ref §3; ``loss.disc_input``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from backend.classes import SIMD_CLASSES
from backend.metrics import MetricAccumulator, compute_metrics
from backend.models.registry import build_model
from backend.models.weights import load_weights
from backend.processing import build_inputs_torch, normalize_image, trimap_gaussian, trimap_two_channel
from backend.protocol import TRIMAP_UNKNOWN
from backend.semantic_trimap import WINDOWS_META_KEY
from trainer.checkpoint import export_weights, unwrap
from trainer.config import TrainConfig
from trainer.losses import SIMLoss, discriminator_input, freeze, masked_cross_entropy

log = logging.getLogger(__name__)


def resolve_classes(cfg: TrainConfig) -> tuple[str, ...]:
    return tuple(cfg.data.classes) if cfg.data.classes else SIMD_CLASSES


# --------------------------------------------------------------------------- collate



class MattingCollate:
    """default_collate plus, unless ``on_device``, the network's trimap encodings computed per sample in the
    loader workers.

    The 6-channel Gaussian trimap needs an exact Euclidean distance transform. On CPU it runs here (scipy:
    exact and run-to-run deterministic), off the training process's critical path. On a GPU the workers
    skip it (``on_device=True``; 4 of 32 ms per sample here, bench/bench_loader.py) and :meth:`MattingTask.step`
    encodes the whole batch with the inference path's ``build_inputs_torch`` (exact integer EDT, also
    deterministic; agrees with scipy to ~1e-7).
    """

    def __init__(self, on_device: bool = False) -> None:
        self.on_device = on_device

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(samples)
        if self.on_device:
            return batch
        t2, tg = [], []
        for s in samples:
            tri = np.asarray(s["trimap"])[0].astype(np.uint8)
            two = trimap_two_channel(tri)
            t2.append(two.transpose(2, 0, 1))
            tg.append(trimap_gaussian(two, distance="scipy").transpose(2, 0, 1))
        batch["trimap2"] = torch.from_numpy(np.stack(t2))
        batch["trimap_gauss"] = torch.from_numpy(np.stack(tg))
        return batch


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """The batch on ``device``; ``channels_last``: image-like (4-D) tensors in NHWC layout as well."""
    nb = device.type == "cuda"
    out = {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if channels_last:
        out = {k: v.contiguous(memory_format=torch.channels_last) if isinstance(v, torch.Tensor) and v.dim() == 4 else v
               for k, v in out.items()}
    return out


def classifier_input(
    image: torch.Tensor, trimap: torch.Tensor, normalized: torch.Tensor | None = None
) -> torch.Tensor:
    """[ImageNet-normalised RGB, trimap/255] — the patch classifier's 4 channels (ref §2.2).
    ``normalized``: ``normalize_image(image)`` when the caller already has it."""
    if normalized is None:
        normalized = normalize_image(image)
    return torch.cat([normalized, trimap / 255.0], dim=1)


def training_semantic_trimap(
    classifier: nn.Module,
    image: torch.Tensor,
    trimap: torch.Tensor,
    normalized: torch.Tensor | None = None,
) -> torch.Tensor:
    """Semantic trimap of whole training crops: one classifier pass per crop, CAM upsampled to the crop,
    min–max scaled **per sample**, zero outside the unknown region.

    For an S×S crop this equals ``backend.semantic_trimap.semantic_trimap(..., window_sizes=(S,))`` on that
    crop alone (one window covers it); the per-sample scaling keeps crops of one batch independent
    (the official global min–max runs on one image at a time at inference). ``normalized``: as in
    ``classifier_input``.
    """
    with torch.no_grad():
        _, cam, _ = classifier(classifier_input(image, trimap, normalized))
        cam = F.interpolate(cam.float(), size=image.shape[-2:], mode="bilinear", align_corners=False)
        lo = cam.amin(dim=(1, 2, 3), keepdim=True)
        hi = cam.amax(dim=(1, 2, 3), keepdim=True)
        smap = (cam - lo) / (hi - lo).clamp(min=1e-12)
        return smap * (trimap == TRIMAP_UNKNOWN)


def label_semantic_trimap(class_id: torch.Tensor, trimap: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Oracle semantic trimap: the sample's class = 1 on the unknown region (no classifier needed);
    all zero for samples of unknown class (class_id −1, e.g. alphamatting photos)."""
    cid = class_id.long()
    onehot = F.one_hot(cid.clamp(min=0), num_classes).float() * (cid >= 0).float()[:, None]
    return onehot[:, :, None, None] * (trimap == TRIMAP_UNKNOWN)


# --------------------------------------------------------------------------- tasks


class Task:
    """One trainable network plus whatever frozen helpers its loss needs."""

    name = "task"
    collate: Any = staticmethod(default_collate)

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.classes = resolve_classes(cfg)
        self.model = self._build()

    def _build(self) -> nn.Module:
        # model.arch is one of the task's architectures (trainer.config.validate)
        model = build_model(self.cfg.model.arch, num_classes=len(self.classes))
        if self.cfg.model.init:
            lw = self._load_checked(
                self.cfg.model.init, self.name, "{path} has {found} classes, config {want}"
            )
            model.load_state_dict(lw.model.state_dict())
        return model

    def _load_checked(self, path: str, kind: str, mismatch: str) -> Any:
        """``load_weights(path, kind)``, refusing a file whose class count differs from the config's;
        ``mismatch`` is the error message ({path}, {kind}, {found}, {want})."""
        lw = load_weights(path, kind)
        if len(lw.classes) != len(self.classes):
            raise ValueError(
                mismatch.format(path=path, kind=kind, found=len(lw.classes), want=len(self.classes))
            )
        return lw

    @property
    def find_unused_parameters(self) -> bool:
        return False

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, samples: Iterable[dict[str, Any]]) -> dict[str, float]:
        raise NotImplementedError

    def export(self, path: Path, extra_meta: dict[str, Any] | None = None, half: bool = False) -> Path:
        return export_weights(
            self.model,
            path,
            kind=self.name,
            classes=self.classes,
            meta={"arch": self.cfg.model.arch, **(extra_meta or {})},
            half=half,
        )


class _ClassificationTask(Task):
    """Cross-entropy over class ids; evaluation reports loss and accuracy. Samples of unknown class
    (class_id −1) are ignored."""

    def inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits, _, _ = model(self.inputs(batch))
        target = batch["class_id"].long()
        valid = target >= 0
        loss = masked_cross_entropy(logits, target, self.cfg.loss.label_smoothing)
        if not bool(valid.any()):  # the zero loss keeps the graph but learns nothing
            return {"total": loss, "ce": loss.detach(), "acc": loss.detach()}
        acc = (logits.detach().argmax(1) == target)[valid].float().mean()
        return {"total": loss, "ce": loss.detach(), "acc": acc}

    @torch.no_grad()
    def evaluate(self, samples: Iterable[dict[str, Any]]) -> dict[str, float]:
        model = unwrap(self.model)
        was_training = model.training
        model.eval()
        losses, correct, n = 0.0, 0, 0
        try:
            for s in samples:
                if int(s["class_id"]) < 0:
                    continue
                b = to_device(default_collate([s]), self.device)
                logits, _, _ = model(self.inputs(b))
                losses += float(F.cross_entropy(logits.float(), b["class_id"].long()))
                correct += int((logits.argmax(1) == b["class_id"]).sum())
                n += 1
        finally:
            model.train(was_training)
        return {"ce": losses / max(n, 1), "acc": correct / max(n, 1), "count": float(n)}


class ClassifierTask(_ClassificationTask):
    name = "classifier"

    def inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        return classifier_input(batch["image"], batch["trimap"])


class DiscriminatorTask(_ClassificationTask):
    name = "discriminator"

    def inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        return discriminator_input(batch["alpha"], batch["fg"], self.cfg.loss.disc_input)

    def export(self, path: Path, extra_meta: dict[str, Any] | None = None, half: bool = False) -> Path:
        return super().export(path, {"disc_input": self.cfg.loss.disc_input, **(extra_meta or {})}, half)


class MattingTask(Task):
    """SIMNet with every SIM loss; frozen classifier (semantic trimap) and discriminator (L_c, L_f)."""

    name = "matting"

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.collate = MattingCollate(on_device=device.type == "cuda")
        lc = cfg.loss
        self.loss = SIMLoss(
            lc,  # a LossConfig is a LossWeights; SIMLoss reads only the weight fields
            gradient_form=lc.gradient_form,
            disc_input=lc.disc_input,
            cls_target=lc.cls_target,
        )
        self.classifier = self._frozen(cfg.model.classifier, "classifier") if cfg.model.classifier else None
        if cfg.model.smap == "classifier" and self.classifier is None:
            raise ValueError(
                "model.smap = 'classifier' needs model.classifier weights; train one with "
                "`semantic-matte train classifier`, or set model.smap = 'label' or 'none'"
            )
        self.discriminator = (
            self._frozen(cfg.model.discriminator, "discriminator") if cfg.model.discriminator else None
        )
        if self.discriminator is None and (lc.cls or lc.feat):
            log.warning("no discriminator weights (model.discriminator): L_c and L_f are off")

    def _frozen(self, path: str, kind: str) -> nn.Module:
        lw = self._load_checked(path, kind, "{kind} {path} predicts {found} classes, the config has {want}")
        if (
            kind == "discriminator"
            and lw.meta.get("disc_input", self.cfg.loss.disc_input) != self.cfg.loss.disc_input
        ):
            raise ValueError(
                f"discriminator {path} was trained with disc_input={lw.meta['disc_input']!r}, "
                f"the config says {self.cfg.loss.disc_input!r}"
            )
        return freeze(lw.model.to(self.device))

    @property
    def find_unused_parameters(self) -> bool:
        return not self.loss.needs_aux or self.cfg.loss.grad == 0 or self.cfg.loss.fb == 0

    def param_groups(self) -> list[dict[str, Any]]:
        enc = [p for p in self.model.encoder.parameters() if p.requires_grad]
        dec = [p for p in self.model.decoder.parameters() if p.requires_grad]
        # Official SIM: one optimiser for the encoder, one for the decoder, same settings (ref §4.5).
        return [{"params": enc, "lr_mult": self.cfg.optim.encoder_lr_mult}, {"params": dec, "lr_mult": 1.0}]

    def semantic(self, batch: dict[str, Any], normalized: torch.Tensor | None = None) -> torch.Tensor:
        src = self.cfg.model.smap
        if src == "classifier":
            assert self.classifier is not None
            return training_semantic_trimap(self.classifier, batch["image"], batch["trimap"], normalized)
        if src == "label":
            return label_semantic_trimap(batch["class_id"], batch["trimap"], len(self.classes))
        n, _, h, w = batch["image"].shape
        return batch["image"].new_zeros((n, len(self.classes), h, w))

    def step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = batch["image"]
        if "trimap_gauss" in batch:  # encoded by the loader workers (MattingCollate on CPU)
            normalized, trimap2, gauss = normalize_image(image), batch["trimap2"], batch["trimap_gauss"]
        else:  # encoded here, on the device, by the inference path's own function
            enc = build_inputs_torch(image, batch["trimap"])
            normalized, trimap2, gauss = enc.image_n, enc.trimap2, enc.trimap_gauss
        out = model(
            image,
            normalized,  # one normalisation for the network and the classifier
            trimap2,
            gauss,
            self.semantic(batch, normalized),
            aux=self.loss.needs_aux,
        )
        terms = self.loss(out, batch, self.discriminator)
        return {k: (v if k == "total" else v.detach()) for k, v in terms.items()}

    def predictor(self) -> Any:
        from backend.predictor import MattingPredictor

        return MattingPredictor(
            unwrap(self.model),
            self.classifier,
            classes=self.classes,
            device=self.device,
            foreground_head=True,
            window_sizes=(self.cfg.data.crop_size,),
        )

    def evaluate(self, samples: Iterable[dict[str, Any]]) -> dict[str, float]:
        """DIM metrics (backend.metrics) of the full inference path (backend.predictor) on each sample."""
        model = unwrap(self.model)
        was_training = model.training
        acc = MetricAccumulator()
        try:
            pred = self.predictor()
            for s in samples:
                image = np.asarray(s["image"]).transpose(1, 2, 0)
                trimap = np.asarray(s["trimap"])[0].astype(np.uint8)
                alpha = np.asarray(s["alpha"])[0]
                if not (trimap == TRIMAP_UNKNOWN).any():
                    continue
                res = pred.predict(image, trimap)
                acc.add(compute_metrics(res.alpha, alpha, trimap))
        finally:
            model.train(was_training)
            if self.classifier is not None:
                self.classifier.eval()
        overall = acc.summary()["overall"]
        return {k: float(v) for k, v in overall.items()}

    def export(self, path: Path, extra_meta: dict[str, Any] | None = None, half: bool = False) -> Path:
        """Matting weights plus, beside them, the classifier they were trained with (the predictor finds it
        through ``meta["classifier"]``)."""
        # the maps it trained on came from one classifier window per crop: inference uses that size too
        meta: dict[str, Any] = {"foreground_head": True, "smap": self.cfg.model.smap,
                                WINDOWS_META_KEY: [self.cfg.data.crop_size]}
        if self.cfg.model.classifier:
            src = Path(self.cfg.model.classifier)
            dst = path.parent / src.name
            path.parent.mkdir(parents=True, exist_ok=True)
            if src.resolve() != dst.resolve():
                shutil.copyfile(src, dst)
            meta["classifier"] = dst.name
        return super().export(path, {**meta, **(extra_meta or {})}, half)


TASK_CLASSES: dict[str, type[Task]] = {
    "classifier": ClassifierTask,
    "discriminator": DiscriminatorTask,
    "matting": MattingTask,
}


def build_task(cfg: TrainConfig, device: torch.device) -> Task:
    return TASK_CLASSES[cfg.task](cfg, device)
