"""Checkpoint formats and the weights search path. Nothing is ever downloaded.

Formats read:
* ours: ``{"format": "semantic-matte", "version": 1, "kind", "arch", "classes", "state_dict", "meta"}``
  (tensors may be stored in fp16; they are cast to the model's dtype on load);
* official SIM matting checkpoints: a bare state dict or ``{"state_dict": ...}`` with ``encoder.`` /
  ``decoder.`` keys (ref §5.4), loaded strictly into ``sim_r50`` (or any registered architecture whose
  keys and shapes match exactly);
* official classifier checkpoints: ``{"state_dict": ...}`` whose keys carry one leading component
  (normally ``module.``) before torchvision ResNet names.

Search path for the default weights (first hit wins): ``$SEMANTIC_MATTE_MODELS``,
``~/.local/share/semantic-matte/models``, then the weights shipped inside the package.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backend.classes import SIMD_CLASSES
from backend.errors import WeightsError
from backend.models.registry import build_model, get_entry, list_models

FORMAT = "semantic-matte"
FORMAT_VERSION = 1
DEFAULT_FILES = {"matting": "semantic-matte-matting.pt", "classifier": "semantic-matte-classifier.pt"}
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass
class LoadedWeights:
    model: nn.Module
    kind: str
    arch: str
    classes: tuple[str, ...]
    source: str  # "semantic-matte" or "official"
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("SEMANTIC_MATTE_MODELS"):
        dirs.append(Path(os.environ["SEMANTIC_MATTE_MODELS"]).expanduser())
    dirs.append(Path("~/.local/share/semantic-matte/models").expanduser())
    dirs.append(PACKAGE_WEIGHTS_DIR)
    return dirs


def find_default(kind: str) -> Path | None:
    """The default checkpoint of ``kind`` ("matting" / "classifier") on the search path, or None."""
    for d in search_dirs():
        p = d / DEFAULT_FILES[kind]
        if p.is_file():
            return p
    return None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, *, kind: str, classes: tuple[str, ...] | list[str],
                    meta: dict[str, Any] | None = None, half: bool = False) -> Path:
    """Write ``model`` in our format. ``half`` stores floating tensors as fp16 (shipping size)."""
    arch = getattr(model, "arch", None)
    if arch is None:
        raise ValueError("model has no .arch; build it with backend.models.registry.build_model")
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "arch": arch, "classes": list(classes),
                "state_dict": sd, "meta": meta or {}}, path)
    return path


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _match_arch(sd: dict[str, torch.Tensor], kind: str, num_classes: int) -> nn.Module:
    want = _shapes(sd)
    for name in list_models(kind):
        model = build_model(name, num_classes=num_classes)
        if _shapes(model.state_dict()) == want:
            return model
    raise WeightsError(f"checkpoint does not match any {kind} architecture ({', '.join(list_models(kind))})")


def _load_state(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    ref = model.state_dict()
    cast = {k: v.to(ref[k].dtype) if k in ref and v.is_floating_point() else v for k, v in sd.items()}
    try:
        model.load_state_dict(cast, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"checkpoint does not fit {getattr(model, 'arch', 'the model')}: {str(e)[:300]}") from e


def read_tensor_file(path: str | Path, what: str = "weights file") -> Any:
    """``torch.load`` of tensors and plain data only (``weights_only``), on the CPU; WeightsError for a missing,
    corrupt or foreign file, and for one that needs code to unpickle (refused, never retried unsafely)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text suggests weights_only=False (arbitrary code execution); say what was refused instead
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(e))
        raise WeightsError(f"cannot read {what} {path}: not a checkpoint of plain tensors and data "
                           f"({reason.group(1)[:160] if reason else 'unpickling failed'}); files that need code "
                           "to load are refused") from e
    except Exception as e:  # torch raises many types for corrupt / foreign files
        raise WeightsError(f"cannot read {what} {path}: {str(e).splitlines()[0][:200]}") from e


def load_weights(path: str | Path, kind: str) -> LoadedWeights:
    """Load a checkpoint of ``kind`` ("matting" or "classifier"; "discriminator" reads like a classifier)."""
    path = Path(path)
    obj = read_tensor_file(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: not a state dict or checkpoint")
    arch_kind = "classifier" if kind == "discriminator" else kind

    if obj.get("format") == FORMAT:
        if obj.get("kind") != kind and not (kind == "classifier" and obj.get("kind") == "discriminator"):
            raise WeightsError(f"{path} holds a {obj.get('kind')} model, expected {kind}")
        classes = tuple(obj["classes"])
        try:
            if get_entry(obj["arch"]).kind != arch_kind:
                raise ValueError("kind mismatch")
            model = build_model(obj["arch"], num_classes=len(classes))
        except ValueError as e:
            raise WeightsError(f"{path}: unknown or wrong architecture {obj.get('arch')!r}") from e
        _load_state(model, obj["state_dict"])
        return LoadedWeights(model.eval(), kind, obj["arch"], classes, FORMAT, path, dict(obj.get("meta") or {}))

    sd = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: no tensors found in the checkpoint")
    if arch_kind == "matting":
        if "encoder.conv1_side.weight" not in sd:
            raise WeightsError(f"{path}: not a SIM matting checkpoint (no encoder.conv1_side.weight)")
        num_classes = sd["encoder.conv1_side.weight"].shape[1]
    else:
        # Official classifier: strip the one leading component (``module.``) of every key.
        if all(k.startswith("module.") for k in sd) or "fc.weight" not in sd:
            sd = {k.split(".", 1)[1]: v for k, v in sd.items() if "." in k}
        if "fc.weight" not in sd:
            raise WeightsError(f"{path}: not a patch-classifier checkpoint (no fc.weight)")
        num_classes = sd["fc.weight"].shape[0]
    model = _match_arch(sd, arch_kind, num_classes)
    _load_state(model, sd)
    classes = SIMD_CLASSES if num_classes == len(SIMD_CLASSES) else tuple(f"class_{i}" for i in range(num_classes))
    return LoadedWeights(model.eval(), kind, model.arch, classes, "official", path)
