"""Training configuration: dataclasses are the schema, TOML files override defaults, ``key=value``
command-line overrides override files (style anchors §6, §8). The resolved config is written to every
run directory (``config.json``) and stored inside every snapshot.

Override syntax: dotted path = TOML value, e.g. ``optim.lr=3e-4``, ``run.precision="bf16"`` (quotes
optional for strings), ``data.train=[{kind="synthetic", count=512}]``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from trainer.losses import LossWeights

TASKS = ("classifier", "discriminator", "matting")
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw", "radam", "sgd")
LR_POLICIES = ("constant", "step", "cosine", "poly")
SMAP_SOURCES = ("classifier", "label", "none")
DEFAULT_ARCH = {"classifier": "classifier_lite", "discriminator": "classifier_lite", "matting": "sim_lite"}


@dataclass
class ModelConfig:
    arch: str = ""  # registry name (backend.models.registry); "" = DEFAULT_ARCH[task]
    init: str = ""  # backend-format weights to start from ("" = random init)
    classifier: str = ""  # matting: frozen patch classifier weights for the semantic trimap
    discriminator: str = ""  # matting: frozen discriminator weights for L_c / L_f ("" = terms off)
    smap: str = "classifier"  # matting semantic trimap: classifier CAMs | label (oracle one-hot) | none
    sync_bn: bool = True  # SyncBatchNorm under DDP on GPUs (CPU/gloo keeps per-process BN)


@dataclass
class DataConfig:
    classes: list[str] = field(default_factory=list)  # empty = the 20 SIMD classes
    # Dataset specs, each a table with ``kind`` plus that kind's options (trainer.tasks.build_dataset).
    train: list[dict[str, Any]] = field(default_factory=lambda: [{"kind": "synthetic"}])
    val: list[dict[str, Any]] = field(default_factory=list)
    crop_size: int = 320  # network input side (crops are resized to it)
    batch_size: int = 8  # per process
    num_workers: int = 4
    prefetch_factor: int = 4
    pin_memory: bool = True
    # Worker start method. spawn: clean processes (safe); fork: faster start, but OpenCV's thread pool is
    # not fork-safe — a worker forked after the parent ran OpenCV in parallel can deadlock in cv2 calls.
    worker_start: str = "spawn"
    val_limit: int = 32  # evaluation samples per eval round (0 = all)
    # Crops cut from each prepared training sample (repeated augmentation, trainer.data.MattingDataset):
    # > 1 divides the loader's cost per crop when the loader, not the GPU, limits the step rate.
    crops_per_item: int = 1


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-4  # Adam: L2 as in the official defaults; AdamW: decoupled
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-5  # official Adam eps
    encoder_lr_mult: float = 1.0  # official SIM: two optimisers with equal settings = one group each
    grad_clip: float = 5.0  # max global grad norm (0 = off); the official threshold is unknown


@dataclass
class ScheduleConfig:
    steps: int = 1000
    warmup_steps: int = 0
    policy: str = "cosine"
    decay_every: int = 0  # step policy: multiply by decay_factor every N steps
    decay_factor: float = 0.1
    power: float = 0.9  # poly policy
    min_lr: float = 1e-8


@dataclass
class LossConfig(LossWeights):
    # The term weights come from trainer.losses.LossWeights (one definition); these choose term variants.
    gradient_form: str = "paper"  # paper | code (trainer.losses.gradient_loss)
    disc_input: str = "fg_alpha"  # fg_alpha (official) | alpha (paper figure)
    cls_target: str = "soft"  # soft | label | bce (trainer.losses.classification_loss)
    label_smoothing: float = 0.0  # classifier / discriminator cross-entropy


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: str = ""  # "" = <task>-<arch>
    seed: int = 0
    deterministic: bool = False  # deterministic kernels + seeded everything (resume is then bit-identical)
    precision: str = "fp32"
    device: str = "auto"
    threads: int = 0  # torch intra-op threads on CPU (0 = torch default)
    channels_last: bool = False  # NHWC network + batch: oneDNN's faster convolutions (bf16 CPU step −20 %)
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end (when val data exists)
    ckpt_every: int = 500
    keep_ckpts: int = 3
    progress: bool = True
    tensorboard: bool = True
    max_nonfinite: int = 5  # consecutive skipped steps with a non-finite loss before aborting


@dataclass
class TrainConfig:
    task: str = "matting"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_name(self) -> str:
        return self.run.name or f"{self.task}-{self.model.arch}"

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run_name


class ConfigError(ValueError):
    """A config file or override names an unknown key or carries a value of the wrong type."""


# --------------------------------------------------------------------------- dict ↔ dataclass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _from_dict(tp, value, f"{where}.")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str) and typing.get_args(tp)[0] is str:
            value = [v.strip() for v in value.split(",") if v.strip()]  # "a,b,c" convenience
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(sorted(f'{where}{k}' for k in unknown))}; "
            f"known in {where or 'top level'}: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}{k}") for k, v in data.items()}
    obj = cls()
    for k, v in kwargs.items():
        setattr(obj, k, v)
    return obj


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare strings: run.precision=bf16


def toml_value(value: Any) -> str:
    """A Python value as an inline TOML value: the text of an override (the inverse of ``_parse_value``)."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (values parsed as TOML)."""
    data = json.loads(json.dumps(data))
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not key=value (e.g. optim.lr=1e-4)")
        key, text = ov.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: {p!r} is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML file (``.toml``) or a resolved config (``.json``); ``base = "other.toml"`` (relative to the
    file) is merged first, so small configs can inherit a shared one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    base = data.pop("base", None)
    if base:
        data = _merge(read_config_file(path.parent / base), data)
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, task: str | None = None
) -> TrainConfig:
    """File → overrides → dataclasses → validation. ``task`` (from the CLI subcommand) wins over the file."""
    data = read_config_file(path) if path else {}
    data = apply_overrides(data, list(overrides or []))
    if task is not None:
        data["task"] = task
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    cfg = _from_dict(TrainConfig, data)
    _resolve_defaults(cfg)
    validate(cfg)
    return cfg


def _resolve_defaults(cfg: TrainConfig) -> None:
    if not cfg.model.arch and cfg.task in DEFAULT_ARCH:
        cfg.model.arch = DEFAULT_ARCH[cfg.task]


def _check(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def validate(cfg: TrainConfig) -> None:
    from backend.models.registry import list_models
    from trainer.losses import CLS_TARGETS, DISC_INPUTS, GRADIENT_FORMS

    _check(cfg.task, TASKS, "task")
    # the discriminator is a classifier architecture
    _check(cfg.model.arch, tuple(list_models("matting" if cfg.task == "matting" else "classifier")), "model.arch")
    _check(cfg.run.precision, PRECISIONS, "run.precision")
    _check(cfg.optim.name, OPTIMIZERS, "optim.name")
    _check(cfg.schedule.policy, LR_POLICIES, "schedule.policy")
    _check(cfg.model.smap, SMAP_SOURCES, "model.smap")
    _check(cfg.data.worker_start, ("spawn", "forkserver", "fork"), "data.worker_start")
    _check(cfg.loss.gradient_form, GRADIENT_FORMS, "loss.gradient_form")
    _check(cfg.loss.disc_input, DISC_INPUTS, "loss.disc_input")
    _check(cfg.loss.cls_target, CLS_TARGETS, "loss.cls_target")
    if cfg.data.crop_size % 8:
        raise ConfigError(f"data.crop_size must be a multiple of 8 (SIMNet stride), got {cfg.data.crop_size}")
    if cfg.data.batch_size < 1 or cfg.schedule.steps < 1:
        raise ConfigError("data.batch_size and schedule.steps must be ≥ 1")
    if cfg.data.crops_per_item < 1 or cfg.data.batch_size % cfg.data.crops_per_item:
        raise ConfigError(
            f"data.crops_per_item ({cfg.data.crops_per_item}) must be ≥ 1 and divide data.batch_size "
            f"({cfg.data.batch_size}), so that a batch holds whole groups"
        )
    if cfg.schedule.policy == "step" and cfg.schedule.decay_every < 1:
        raise ConfigError("schedule.policy = 'step' needs schedule.decay_every ≥ 1")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas needs two values, got {cfg.optim.betas}")
    for i, spec in enumerate(cfg.data.train + cfg.data.val):
        if "kind" not in spec:
            raise ConfigError(f"data set spec #{i} has no 'kind': {spec}")


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return path
