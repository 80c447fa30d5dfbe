"""The training loop: data → task step → finite check → backward → clip → optimiser/scheduler step, with
logging (CSV, TensorBoard, tqdm), periodic evaluation, snapshots and exact resume (style anchors §6:
the "plain" loop, kept small enough to read in one go).

Determinism and resume. The sampler is a pure function of (seed, epoch, rank, position) and hands every
sample its own seed; ``SeededDataset`` seeds python/numpy/torch from it before the dataset builds the
sample, so augmentation does not depend on which worker ran it or when the loader was (re)created.
Snapshots store the number of samples consumed, so a resumed run reads exactly the batches the
uninterrupted run would have read. The loader draws its worker base seed from a private generator, so
creating it does not advance the global torch RNG (dropout). With ``run.deterministic`` on CPU a resumed
run is bit-identical to an uninterrupted one (tested); on CUDA, deterministic algorithms are requested
with ``warn_only`` (bilinear upsampling's backward has no deterministic CUDA kernel).

Distributed: launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK set), NCCL on GPUs, gloo on CPUs,
DistributedDataParallel, SyncBatchNorm on GPUs (PyTorch's SyncBatchNorm has no CPU kernel, so CPU/gloo
runs keep per-process BatchNorm statistics).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from backend.predictor import PRECISIONS  # run.precision → autocast dtype (None: fp32), as at inference
from trainer.checkpoint import find_last, load_snapshot, rng_state, save_snapshot, set_rng_state, unwrap
from trainer.config import ScheduleConfig, TrainConfig, config_from_dict, read_config_file, save_config
from trainer.tasks import Task, build_task, to_device

if TYPE_CHECKING:  # annotations only (Python 3.10 has no typing.Self)
    from typing_extensions import Self

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- distributed


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment (1 process without it)."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def init_distributed(device_type: str) -> bool:
    """Join the torchrun process group (also with one process: DDP and SyncBatchNorm then run as they
    would on N GPUs, which lets a single-GPU machine check that path)."""
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return True


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("run.device asks for CUDA but none is available; use run.device=cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


# --------------------------------------------------------------------------- determinism


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the python/numpy/torch (CPU) RNG states on exit, as they were on entry."""
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def set_deterministic(on: bool) -> None:
    if on:
        # Needed by cuBLAS for deterministic GEMMs; must be set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on
    torch.use_deterministic_algorithms(on, warn_only=True)


def sample_seed(seed: int, epoch: int, rank: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, index]).generate_state(1)[0])


# --------------------------------------------------------------------------- data


class ResumableSampler(Sampler[tuple[int, int, int]]):
    """Endless stream of (dataset index, sample seed, epoch) for one rank, resumable at any position.

    Epoch e is a permutation drawn from (seed, e); rank r takes every world-th element, all ranks the
    same count (the tail of ``n mod world`` is dropped per epoch). Batches may straddle epochs.
    ``group`` > 1 permutes runs of ``group`` consecutive indices instead, each kept together and in order
    (the crops of one prepared sample, ``data.crops_per_item``); with 1 the stream is the plain one.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
        group: int = 1,
    ) -> None:
        if group < 1 or n % group:
            raise ValueError(f"dataset of {n} samples is not made of whole groups of {group}")
        if n // group < world:
            raise ValueError(f"dataset of {n // group} sample groups is smaller than the world size {world}")
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.group = group
        self.per_rank = (n // group // world) * group
        self.start = start

    def _indices(self, epoch: int) -> np.ndarray:
        groups = self.n // self.group
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(groups)
            if self.shuffle
            else np.arange(groups)
        )
        mine = order[self.rank :: self.world][: self.per_rank // self.group]
        return (mine[:, None] * self.group + np.arange(self.group)).ravel()

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        pos = self.start
        epoch, cached = -1, np.empty(0, np.int64)
        while True:
            e, off = divmod(pos, self.per_rank)
            if e != epoch:
                epoch, cached = e, self._indices(e)
            yield int(cached[off]), sample_seed(self.seed, e, self.rank, off), e
            pos += 1

    def __len__(self) -> int:  # one epoch, for information only; iteration is endless
        return self.per_rank


def crops_per_item(dataset: Any) -> int:
    """The group size of a (concatenation of) trainer.data datasets; 1 for any other dataset."""
    if isinstance(dataset, ConcatDataset):
        sizes = {crops_per_item(d) for d in dataset.datasets}
        if len(sizes) != 1:
            raise ValueError(f"concatenated datasets disagree on crops_per_item: {sorted(sizes)}")
        return sizes.pop()
    return int(getattr(dataset, "crops_per_item", 1))


def set_epoch(dataset: Any, epoch: int) -> None:
    """Forward the epoch to datasets whose random stream depends on it (trainer.data's ``set_epoch``)."""
    if isinstance(dataset, ConcatDataset):
        for d in dataset.datasets:
            set_epoch(d, epoch)
    elif hasattr(dataset, "set_epoch") and getattr(dataset, "epoch", None) != epoch:
        dataset.set_epoch(epoch)


class SeededDataset(Dataset):
    """Wraps a map-style dataset: item ``(index, seed, epoch)`` sets the dataset's epoch, seeds
    python/numpy/torch, then builds sample ``index``. Datasets that derive their randomness from
    (seed, epoch, index) themselves (trainer.data) ignore the global seeding; others become deterministic.

    In the main process (num_workers = 0) the global RNG states are restored afterwards, so data loading
    never perturbs the training RNG (dropout) — in workers the seeding is the isolation.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        index, seed, epoch = key
        in_main = torch.utils.data.get_worker_info() is None
        with preserved_rng() if in_main else contextlib.nullcontext():
            set_epoch(self.dataset, epoch)
            seed_everything(seed)
            return self.dataset[index]


def _each_dataset(dataset: Any) -> Iterator[Any]:
    """``dataset`` and every dataset nested in it (mixtures, concatenations), innermost first."""
    for d in getattr(dataset, "datasets", None) or []:
        yield from _each_dataset(d)
    yield dataset


def prepare_dataset(dataset: Any) -> None:
    """Run one-off preparation (e.g. alphamatting foreground estimation) before workers fork, so each
    worker inherits the result instead of recomputing it."""
    for d in _each_dataset(dataset):
        if hasattr(d, "prepare"):
            d.prepare()


def prepare_for_loader(dataset: Any, cfg: TrainConfig) -> None:
    """Prepare ``dataset`` in this process when its loader's workers will not: with no workers, or forked
    ones (they inherit it). Spawned workers prepare their own; what they can share through the disk (a
    JIT cache) is warmed here first (``warm_up``), so they do not all compile it at once."""
    if cfg.data.num_workers == 0 or cfg.data.worker_start == "fork":
        prepare_dataset(dataset)
        return
    for d in _each_dataset(dataset):
        if hasattr(d, "warm_up"):
            d.warm_up()


def _worker_init(worker_id: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # the workers already run in parallel; OpenCV threads would oversubscribe the CPU
    # Ctrl-C in a terminal and a scheduler's SIGTERM reach the whole process group: the workers keep serving so
    # the main process can finish its step and save a snapshot (StopSignals); it shuts them down itself.
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def train_loader(
    dataset: Dataset,
    cfg: TrainConfig,
    collate: Callable[[list[Any]], Any],
    *,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    start: int = 0,
) -> DataLoader:
    """The training loader: an endless, resumable stream from sampler position ``start`` (this rank's
    share, crop groups kept together), batches of ``data.batch_size`` built by ``data.num_workers`` workers."""
    dc = cfg.data
    sampler = ResumableSampler(
        len(dataset),  # type: ignore[arg-type]
        seed=cfg.run.seed,
        rank=rank,
        world=world,
        start=start,
        group=crops_per_item(dataset),
    )
    workers = dc.num_workers
    return DataLoader(
        SeededDataset(dataset),
        batch_size=dc.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=dc.pin_memory and device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=dc.prefetch_factor if workers else None,
        worker_init_fn=_worker_init if workers else None,
        multiprocessing_context=dc.worker_start if workers else None,
        # A private generator: creating the loader must not advance the global torch RNG.
        generator=torch.Generator().manual_seed(cfg.run.seed),
    )


def build_dataset(specs: Sequence[dict[str, Any]], cfg: TrainConfig, split: str) -> Dataset | None:
    """Datasets from ``data.train`` / ``data.val`` specs (each ``{kind = ..., ...}``), concatenated.

    ``repeat = k`` in a spec repeats that source k times (a simple mixing weight).
    """
    if not specs:
        return None
    from trainer.data import build_dataset as build_one  # the data package owns the kinds

    parts: list[Dataset] = []
    for spec in specs:
        opts = dict(spec)
        repeat = int(opts.pop("repeat", 1))
        # The task picks the view: classifier / discriminator samples skip two-foreground composition.
        ds = build_one(
            opts,
            classes=tuple(cfg.data.classes) or None,
            size=cfg.data.crop_size,
            split=split,
            seed=cfg.run.seed,
            view=cfg.task,
            crops_per_item=cfg.data.crops_per_item if split == "train" else 1,
        )
        parts.extend([ds] * repeat)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


# --------------------------------------------------------------------------- optimiser and schedule


def lr_factor(sc: ScheduleConfig, base_lr: float) -> Callable[[int], float]:
    """Multiplier of the base LR at a step: linear warm-up, then the policy, floored at ``min_lr``."""

    def factor(step: int) -> float:
        if sc.warmup_steps and step < sc.warmup_steps:
            return (step + 1) / sc.warmup_steps
        t = min(step - sc.warmup_steps, max(sc.steps - sc.warmup_steps, 1))
        span = max(sc.steps - sc.warmup_steps, 1)
        if sc.policy == "constant":
            f = 1.0
        elif sc.policy == "step":
            f = sc.decay_factor ** (t // sc.decay_every)
        elif sc.policy == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * t / span))
        else:  # poly
            f = (1.0 - t / span) ** sc.power
        return max(f, sc.min_lr / base_lr if base_lr > 0 else 0.0)

    return factor


def build_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    oc = cfg.optim
    param_groups = [
        {"params": g["params"], "lr": oc.lr * g.get("lr_mult", 1.0)} for g in groups if g["params"]
    ]
    adam_like = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
    if oc.name in adam_like:
        # On CUDA, Adam/AdamW update every parameter in one fused kernel: a GPU step here is bound by its
        # count of kernel launches (session 8: ~0.1 s of host time per step), and the per-parameter
        # updates were ~1.3 k ATen calls of a step's ~4.5 k (CPU profile, sim_lite).
        on_cuda = all(p.is_cuda for g in param_groups for p in g["params"])
        fused = {"fused": True} if on_cuda and oc.name in ("adam", "adamw") else {}
        return adam_like[oc.name](
            param_groups, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, weight_decay=oc.weight_decay, **fused
        )
    return torch.optim.SGD(param_groups, lr=oc.lr, momentum=oc.betas[0], weight_decay=oc.weight_decay)


# --------------------------------------------------------------------------- logging


class ScalarLog:
    """CSV (always) and TensorBoard (when installed and enabled) scalars; rank 0 only."""

    def __init__(self, run_dir: Path, name: str, tensorboard: bool) -> None:
        self.path = run_dir / f"{name}.csv"
        self.name = name
        self.fields: list[str] | None = None
        if self.path.is_file():
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            self.fields = header or None
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is an optional dependency
                log.info("tensorboard not installed; scalars go to %s only", self.path)

    def write(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **values}
        if self.fields is None:
            self.fields = list(row)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.fields)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{self.name}/{k}", v, step)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run re-logs them)."""
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        keep = rows[:1] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(keep)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------------- stop on signals


class TrainingStopped(Exception):
    """``train()`` ended early on a signal; the last snapshot holds the run (continue with ``--resume``)."""

    def __init__(self, signum: int, step: int, run_dir: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; snapshot in "
                         f"{run_dir / 'checkpoints'}, continue with --resume")
        self.signum, self.step = signum, step


class StopSignals:
    """While active, SIGINT / SIGTERM (Ctrl-C, ``timeout``, a scheduler's pre-emption) only ask the loop to
    stop after the current step, so it can save a snapshot first; a second signal acts as usual."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        for sig, handler in self._previous.items():  # the next one is not caught
            signal.signal(sig, handler)
        log.warning("%s: stopping after this step (a snapshot is saved first)", signal.Signals(signum).name)

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        if self.received is None:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


# --------------------------------------------------------------------------- trainer


class Trainer:
    """Args:
    cfg: resolved ``TrainConfig``.
    resume: continue from ``<run_dir>/checkpoints/last`` when it exists.
    train_dataset, val_dataset: override the datasets built from ``cfg.data`` (tests, custom runs).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
    ) -> None:
        # The weights files the run reads, as absolute paths in its config.json and snapshots: export and
        # average re-read them from wherever they are run.
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{
            key: str(Path(value).resolve())
            for key in ("init", "classifier", "discriminator") if (value := getattr(cfg.model, key))}))
        self.cfg = cfg
        self.rank, self.world, local_rank = dist_env()
        self.device = resolve_device(cfg.run.device, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.distributed = init_distributed(self.device.type)
        self.is_main = self.rank == 0
        self.run_dir = cfg.run_dir
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        set_deterministic(cfg.run.deterministic)
        seed_everything(cfg.run.seed + self.rank)
        self.amp_dtype = PRECISIONS[cfg.run.precision]
        if cfg.run.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("run.precision = 'fp16' needs a CUDA device; use bf16 or fp32 on the CPU")

        self.task: Task = build_task(cfg, self.device)
        model = self.task.model.to(self.device)
        if cfg.run.channels_last:
            model = model.to(memory_format=torch.channels_last)  # parameters only; the state dict keeps its keys
        if self.distributed and self.device.type == "cuda" and cfg.model.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.task.model = model
        self.model: nn.Module = model
        if self.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.task.find_unused_parameters,
            )
        self.optimizer = build_optimizer(cfg, self.task.param_groups())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg.schedule, cfg.optim.lr)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.run.precision == "fp16")

        self.step = 0
        self.nonfinite = 0
        self.exported: Path | None = None  # set by train() when it exports the finished model (rank 0)
        self.stopped_by: int | None = None  # the signal that stopped train() early (see StopSignals)
        snapshot = None
        if resume:
            path = find_last(self.run_dir)
            if path is None:
                log.warning("--resume: no snapshot in %s, starting from scratch", self.run_dir)
            else:
                snapshot = load_snapshot(path)
                self._restore(snapshot)
                log.info("resumed from %s at step %d", path, self.step)

        self.train_dataset = (
            train_dataset if train_dataset is not None else build_dataset(cfg.data.train, cfg, "train")
        )
        if self.train_dataset is None:
            raise ValueError("no training data: set data.train")
        self.val_dataset = val_dataset if val_dataset is not None else build_dataset(cfg.data.val, cfg, "val")
        prepare_for_loader(self.train_dataset, cfg)
        self.loader = self._loader(start=self.step * cfg.data.batch_size)

        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.json")
        self.train_log = ScalarLog(self.run_dir, "train", cfg.run.tensorboard) if self.is_main else None
        self.eval_log = ScalarLog(self.run_dir, "eval", cfg.run.tensorboard) if self.is_main else None
        if snapshot is not None and self.is_main:
            for lg in (self.train_log, self.eval_log):
                lg.truncate_after(self.step)
        self.history: list[dict[str, float]] = []
        if snapshot is not None:
            # Last, so nothing above (dataset construction, loader) can move the restored RNG streams.
            rngs = snapshot["rng"]
            set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])

    # ------------------------------------------------------------------ setup helpers

    def _loader(self, start: int) -> DataLoader:
        return train_loader(self.train_dataset, self.cfg, self.task.collate, device=self.device, rank=self.rank,
                            world=self.world, start=start)

    def state_dict(self) -> dict[str, Any]:
        rng = rng_state()
        if self.distributed:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        return {
            "models": {self.task.name: unwrap(self.model).state_dict()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "nonfinite": self.nonfinite,
            "data": {
                "position": self.step * self.cfg.data.batch_size,
                "world": self.world,
                "batch_size": self.cfg.data.batch_size,
            },
            "config": self.cfg.to_dict(),
            "task": self.task.name,
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        if snap.get("task") != self.task.name:
            raise ValueError(f"snapshot is for task {snap.get('task')!r}, this run trains {self.task.name!r}")
        data = snap["data"]
        if data["world"] != self.world or data["batch_size"] != self.cfg.data.batch_size:
            log.warning(
                "resuming with world %d × batch %d (snapshot: %d × %d): data order changes",
                self.world,
                self.cfg.data.batch_size,
                data["world"],
                data["batch_size"],
            )
        unwrap(self.model).load_state_dict(snap["models"][self.task.name])
        self.optimizer.load_state_dict(snap["optimizer"])
        self.scheduler.load_state_dict(snap["scheduler"])
        self.scaler.load_state_dict(snap["scaler"])
        self.step = int(snap["step"])
        self.nonfinite = int(snap.get("nonfinite", 0))

    def save(self) -> Path | None:
        state = self.state_dict()  # collective under DDP: every rank calls it
        if not self.is_main:
            return None
        return save_snapshot(self.run_dir, self.step, state, keep=self.cfg.run.keep_ckpts)

    # ------------------------------------------------------------------ the step

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        ok = torch.isfinite(loss.detach()).float()
        if self.distributed:  # every rank must skip together, or DDP's gradient buckets deadlock
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() > 0)

    def run_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """One optimisation step; returns the loss terms, or None when the step was skipped (non-finite)."""
        self.model.train()
        batch = to_device(batch, self.device, self.cfg.run.channels_last)
        with self._autocast():
            terms = self.task.step(self.model, batch)
        loss = terms["total"]
        if not self._all_finite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite += 1
            log.warning(
                "step %d: non-finite loss (%s), step skipped (%d in a row)",
                self.step + 1,
                float(loss.detach()),
                self.nonfinite,
            )
            if self.nonfinite >= self.cfg.run.max_nonfinite:
                raise FloatingPointError(
                    f"{self.nonfinite} consecutive non-finite losses; lower optim.lr or "
                    "use run.precision=bf16/fp32"
                )
            return None
        self.nonfinite = 0
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.cfg.optim.grad_clip
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return terms

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float] | None:
        """Rank 0 evaluates on up to ``data.val_limit`` validation samples; the others wait."""
        result = None
        if self.is_main and self.val_dataset is not None and len(self.val_dataset) > 0:  # type: ignore[arg-type]
            n = len(self.val_dataset)  # type: ignore[arg-type]
            limit = self.cfg.data.val_limit or n
            samples = (self.val_dataset[i] for i in range(min(n, limit)))
            t0 = time.perf_counter()
            with preserved_rng():
                result = self.task.evaluate(samples)
            result["eval_s"] = time.perf_counter() - t0
            assert self.eval_log is not None
            self.eval_log.write(self.step, result)
            log.info("eval @ %d: %s", self.step, {k: round(v, 4) for k, v in result.items()})
        if self.distributed:
            dist.barrier()
        return result

    # ------------------------------------------------------------------ the loop

    def _reduce_mean(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        keys = sorted(sums)
        if not keys:  # every step since the last log was skipped
            return {}
        vec = torch.stack([sums[k].detach().float() for k in keys]) / max(count, 1)
        if self.distributed:
            dist.all_reduce(vec)
            vec /= self.world
        return dict(zip(keys, vec.tolist()))

    def _stop_requested(self, signals: StopSignals) -> bool:
        if not self.distributed:
            return signals.received is not None
        # Every rank stops at the same step: the snapshot is a collective.
        flag = torch.tensor(float(signals.received is not None), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def train(self, stop_after: int | None = None) -> list[dict[str, float]]:
        """Run until ``schedule.steps`` (or ``stop_after`` steps, for an interrupted run that a later
        ``--resume`` continues). SIGINT / SIGTERM end the run after the current step with a snapshot
        (``stopped_by`` says which signal). Returns the logged training rows."""
        cfg = self.cfg
        end = cfg.schedule.steps if stop_after is None else min(cfg.schedule.steps, stop_after)
        bar = None
        if self.is_main and cfg.run.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.schedule.steps,
                initial=self.step,
                desc=f"train {self.task.name}",
                dynamic_ncols=True,
            )
        it = iter(self.loader)
        sums: dict[str, torch.Tensor] = {}
        count, t_last, skipped, data_wait = 0, time.perf_counter(), 0, 0.0
        with contextlib.ExitStack() as stack:
            signals = stack.enter_context(StopSignals())
            if bar is not None:
                stack.callback(bar.close)
            while self.step < end:
                t0 = time.perf_counter()
                batch = next(it)
                data_wait += time.perf_counter() - t0  # > 0 means the loader is the bottleneck
                terms = self.run_step(batch)
                self.step += 1
                self.scheduler.step()
                if terms is None:
                    skipped += 1
                else:
                    for k, v in terms.items():
                        v = v.detach().float()
                        sums[k] = sums[k] + v if k in sums else v
                    count += 1
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.run.log_every == 0 or self.step == end:
                    row = self._reduce_mean(sums, count)
                    dt = time.perf_counter() - t_last
                    steps_done = count + skipped
                    row.update(
                        lr=self.optimizer.param_groups[-1]["lr"],
                        skipped=float(skipped),
                        samples_per_s=steps_done * cfg.data.batch_size * self.world / max(dt, 1e-9),
                        step_s=dt / max(steps_done, 1),
                        data_wait_frac=data_wait / max(dt, 1e-9),
                    )
                    if self.is_main:
                        assert self.train_log is not None
                        self.train_log.write(self.step, row)
                        if bar is not None:
                            bar.set_postfix(
                                loss=f"{row.get('total', float('nan')):.4f}", lr=f"{row['lr']:.2e}"
                            )
                    self.history.append({"step": float(self.step), **row})
                    sums, count, skipped, data_wait, t_last = {}, 0, 0, 0.0, time.perf_counter()
                if (
                    cfg.run.eval_every
                    and self.step % cfg.run.eval_every == 0
                    and self.step < cfg.schedule.steps
                ):
                    self.evaluate()
                saved = (cfg.run.ckpt_every and self.step % cfg.run.ckpt_every == 0) or self.step == end
                if saved:
                    self.save()
                if self.step < end and self._stop_requested(signals):
                    if not saved:
                        self.save()
                    self.stopped_by = signals.received or signal.SIGTERM  # another rank's signal under DDP
                    log.warning("stopped at step %d; snapshot saved, continue with --resume", self.step)
                    break
        if self.step >= cfg.schedule.steps:
            self.evaluate()
            if self.is_main:
                self.exported = self.export()
        for lg in (self.train_log, self.eval_log):
            if lg is not None:
                lg.close()
        return self.history

    def export(self, path: Path | None = None) -> Path:
        """The trained network in the backend weights format (``<run_dir>/<task>.pt``)."""
        path = path or self.run_dir / f"{self.task.name}.pt"
        return self.task.export(path, {"trained_steps": self.step, "run": str(self.run_dir)})


def _snapshot_task(snap: dict[str, Any]) -> Task:
    """The task a snapshot's config describes, on the CPU, without loading the config's init file (the
    snapshot holds the weights)."""
    data = dict(snap["config"])
    data["model"] = {**data["model"], "init": ""}
    return build_task(config_from_dict(data), torch.device("cpu"))


def export_snapshot(snapshot: str | Path, out: str | Path | None = None, *, half: bool = False) -> Path:
    """The network of a training snapshot in the backend weights format, as the finished run would have
    exported it (default ``<run dir>/<task>_step<N>.pt``; ``half``: fp16 storage, half the size): to evaluate
    the snapshots of a run, or ship one from a run cut short. The frozen helpers the config names (the
    classifier) must still exist."""
    snapshot = Path(snapshot)
    snap = load_snapshot(snapshot)
    task = _snapshot_task(snap)
    task.model.load_state_dict(snap["models"][task.name])
    step, run_dir = int(snap["step"]), snapshot.resolve().parent.parent
    out = Path(out) if out is not None else run_dir / f"{task.name}_step{step:08d}.pt"
    return task.export(out, {"trained_steps": step, "run": str(run_dir)}, half)


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating tensors (weights and BatchNorm statistics), computed in fp32 and
    cast back; integer buffers (``num_batches_tracked``) come from the last state."""
    if not states:
        raise ValueError("nothing to average")
    keys = list(states[-1])
    for sd in states:
        if list(sd) != keys or any(sd[k].shape != states[-1][k].shape for k in keys):
            raise ValueError("snapshots of different architectures cannot be averaged")
    return {
        k: (torch.stack([sd[k].float() for sd in states]).mean(0).to(v.dtype) if v.is_floating_point() else v.clone())
        for k, v in states[-1].items()
    }


@torch.no_grad()
def recompute_batchnorm(task: Task, cfg: TrainConfig, batches: int) -> None:
    """Re-estimate every BatchNorm's running statistics of ``task.model`` on ``batches`` training batches
    (a plain mean over them, as ``torch.optim.swa_utils.update_bn`` does; that helper calls ``model(batch)``
    and cannot drive this multi-input forward). Averaged weights need this: the
    average of the snapshots' running statistics does not describe the averaged network's activations.
    The forward pass is the training step's own (semantic trimap, trimap encoding), in fp32."""
    model = task.model
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    dataset = build_dataset(cfg.data.train, cfg, "train")
    if dataset is None:
        raise ValueError("the snapshot's config has no training data (data.train) to re-estimate BatchNorm on")
    prepare_for_loader(dataset, cfg)
    batch_iter = iter(train_loader(dataset, cfg, task.collate, device=task.device))
    model.train()
    try:
        for _ in range(batches):
            task.step(model, to_device(next(batch_iter), task.device))
    finally:
        del batch_iter  # stops the loader workers now, not at interpreter exit (where they abort noisily)
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.eval()


def _averaging_input(path: Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor] | None, Any]:
    """(snapshot, None, step) for a training snapshot; (None, fp32 state dict, its ``trained_steps``) for an
    exported weights file (``train export`` / a device session's fp16 files, which carry no config; a shipped
    file's ``trained_steps`` is a description, not a number)."""
    data = load_snapshot(path)
    if "models" in data and "config" in data:
        return data, None, int(data["step"])
    if "state_dict" not in data:
        raise ValueError(f"{path}: neither a training snapshot nor a weights file")
    state = {k: v.float() if v.is_floating_point() else v for k, v in data["state_dict"].items()}
    return None, state, (data.get("meta") or {}).get("trained_steps")


def average_snapshots(
    snapshots: Sequence[str | Path],
    out: str | Path,
    *,
    half: bool = False,
    bn_batches: int = 0,
    config: str | Path | None = None,
) -> Path:
    """Stochastic weight averaging of one training trajectory's snapshots (a run and the runs that continued
    it): the mean of their networks as one weights file (the flat region around a noisy trajectory usually
    generalises better than any single point on it).
    Inputs are training snapshots or exported weights files; ``config`` (a run's resolved ``config.json`` or
    a TOML) describes the network and data when given, else the last snapshot's config does (weights files
    carry none). ``bn_batches`` > 0 re-estimates the BatchNorm statistics on that many training batches of
    that config's data (:func:`recompute_batchnorm`). The frozen helpers the config names must exist."""
    if not snapshots:
        raise ValueError("no snapshots given")
    inputs = [_averaging_input(Path(p)) for p in snapshots]
    snaps = [snap for snap, _, _ in inputs if snap is not None]
    if config is not None:
        cfg_data = read_config_file(config)
    elif snaps:
        cfg_data = snaps[-1]["config"]
    else:
        raise ValueError("weights files carry no training config: pass the run's config.json (--config)")
    task = _snapshot_task({"config": cfg_data})
    cfg = task.cfg
    if any(s["config"]["task"] != cfg.task or s["config"]["model"]["arch"] != cfg.model.arch for s in snaps):
        raise ValueError("snapshots of different tasks or architectures cannot be averaged")
    states = [snap["models"][task.name] if snap is not None else state for snap, state, _ in inputs]
    task.model.load_state_dict(average_state_dicts(states))
    recompute_batchnorm(task, cfg, bn_batches)
    steps = [step for _, _, step in inputs]
    run_dir = Path(config).resolve().parent if config is not None else Path(snapshots[-1]).resolve().parent.parent
    numeric = [s for s in steps if isinstance(s, int)]
    meta = {"trained_steps": max(numeric) if len(numeric) == len(steps) else steps[-1], "averaged_steps": steps,
            "bn_batches": bn_batches, "run": str(run_dir)}
    return task.export(Path(out), meta, half)


def train(cfg: TrainConfig, *, resume: bool = False, **kwargs: Any) -> Trainer:
    """Build a Trainer, train, tear down the process group; returns the trainer (history, run_dir).
    Raises :class:`TrainingStopped` when a signal ended the run early (after saving a snapshot)."""
    trainer = Trainer(cfg, resume=resume, **kwargs)
    try:
        trainer.train()
    finally:
        if trainer.distributed and dist.is_initialized():
            dist.destroy_process_group()
    if trainer.stopped_by is not None:
        raise TrainingStopped(trainer.stopped_by, trainer.step, trainer.run_dir)
    return trainer
