"""Run snapshots for exact resume, the ``last`` pointer, and export to the backend weights format.

A snapshot (``<run>/checkpoints/step_XXXXXXXX.pt``) holds everything the loop needs to continue as if it
had never stopped (style anchors §6): model and optimiser states, scheduler, AMP grad scaler, the RNG
states of python / numpy / torch (CPU and CUDA) of **every** rank, the step, the data position
(samples consumed per rank), and the resolved config. ``<run>/checkpoints/last`` names the newest one;
it is replaced atomically after the snapshot file is complete, so a crash mid-write never leaves a
pointer to a partial file.

Snapshots load with ``weights_only=True``: numpy RNG state is stored as a tensor, not a pickled array.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backend.models.weights import read_tensor_file, save_checkpoint

log = logging.getLogger(__name__)

LAST_POINTER = "last"
CKPT_DIR = "checkpoints"


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """This process's RNG states in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning(
                "snapshot has %d CUDA RNG states, this machine %d GPUs: CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


def _as_tuple(x: Any) -> Any:
    # random.setstate needs tuples all the way down; weights_only loading may return lists.
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------- snapshots


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CKPT_DIR


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def save_snapshot(run_dir: str | Path, step: int, state: dict[str, Any], *, keep: int = 3) -> Path:
    """Write ``state`` for ``step``, point ``last`` at it, and prune all but the newest ``keep`` snapshots."""
    cdir = checkpoint_dir(run_dir)
    cdir.mkdir(parents=True, exist_ok=True)
    path = snapshot_path(run_dir, step)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"step": step, **state}, tmp)
    os.replace(tmp, path)
    pointer_tmp = cdir / (LAST_POINTER + ".tmp")
    pointer_tmp.write_text(path.name + "\n")
    os.replace(pointer_tmp, cdir / LAST_POINTER)
    if keep > 0:
        for old in sorted(cdir.glob("step_*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
    return path


def find_last(run_dir: str | Path) -> Path | None:
    """The snapshot ``last`` names, else the newest ``step_*.pt``, else None."""
    cdir = checkpoint_dir(run_dir)
    pointer = cdir / LAST_POINTER
    if pointer.is_file():
        p = cdir / pointer.read_text().strip()
        if p.is_file():
            return p
        log.warning("%s names a missing snapshot %s; falling back to the newest file", pointer, p.name)
    snaps = sorted(cdir.glob("step_*.pt"))
    return snaps[-1] if snaps else None


def load_snapshot(path: str | Path) -> dict[str, Any]:
    return read_tensor_file(path, "training snapshot")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def export_weights(
    model: nn.Module,
    path: str | Path,
    *,
    kind: str,
    classes: tuple[str, ...] | list[str],
    meta: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write the trained network in the backend format (``backend.models.weights.save_checkpoint``).

    kind: "matting", "classifier" or "discriminator". Matting exports should carry
    ``meta={"foreground_head": True, "classifier": "<classifier file name>", ...}``.
    """
    # SyncBatchNorm and BatchNorm2d share their state-dict keys, so the bare module exports as is.
    bare = unwrap(model)
    return save_checkpoint(path, bare, kind=kind, classes=tuple(classes), meta=meta, half=half)
