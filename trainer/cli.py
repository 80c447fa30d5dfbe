"""`semantic-matte train …`: classifier | discriminator | matting | custom | export | average.

    semantic-matte train matting --config trainer/configs/default_sim_lite.toml [key=value ...] [--resume]
    semantic-matte train custom --classes cat,dog,bird --data DIR [--out DIR] [--steps N]
    semantic-matte train export RUN/checkpoints/step_00000250.pt [-o weights.pt]
    semantic-matte train average RUN/checkpoints/step_*.pt -o weights.pt [--bn-batches 50] [--config RUN/config.json]
    torchrun --nproc-per-node 2 -m trainer.cli train matting --config ...   # DistributedDataParallel

Imports stay light at module level (``backend.cli`` builds its parser from ``add_cli`` on every call);
torch and the trainer load only when a training command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CONFIG = 6
EXIT_WEIGHTS = 7
EXIT_DATA = 10
EXIT_NONFINITE = 11

TASKS = ("classifier", "discriminator", "matting")
_TASK_HELP = {
    "classifier": "patch classifier: image + trimap → class (cross-entropy); its CAMs make the semantic trimap",
    "discriminator": "multi-class discriminator: foreground + alpha → class; frozen during matting training",
    "matting": "SIM matting network with every SIM loss (needs classifier / discriminator weights)",
}


def _setup_logging() -> None:
    # backend.cli configures the root logger (WARNING); training progress is INFO of our own loggers.
    logging.getLogger("trainer").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _run_guarded(fn, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    """Expected failures → one line on stderr and a distinct exit code."""
    from backend.models.weights import WeightsError
    from trainer.config import ConfigError
    from trainer.engine import TrainingStopped

    try:
        fn(*args, **kwargs)
    except TrainingStopped as e:
        print(f"semantic-matte train: {e}", file=sys.stderr)
        return 128 + e.signum  # the shell's convention for "ended by signal N"
    except ConfigError as e:
        print(f"semantic-matte train: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except WeightsError as e:
        print(f"semantic-matte train: weights error: {e}", file=sys.stderr)
        return EXIT_WEIGHTS
    except FileNotFoundError as e:
        print(f"semantic-matte train: data error: {e}", file=sys.stderr)
        return EXIT_DATA
    except FloatingPointError as e:
        print(f"semantic-matte train: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    _setup_logging()
    from trainer.config import load_config

    def run() -> None:
        cfg = load_config(args.config, args.overrides, task=args.task)
        if args.print_config:
            import json

            print(json.dumps(cfg.to_dict(), indent=2))
            return
        from trainer.engine import train

        trainer = train(cfg, resume=args.resume)
        if trainer.is_main:
            print(f"weights: {trainer.exported}")

    return _run_guarded(run)


def cmd_export(args: argparse.Namespace) -> int:
    def run() -> None:
        from trainer.engine import export_snapshot

        print(f"weights: {export_snapshot(args.snapshot, args.out, half=args.half)}")

    return _run_guarded(run)


def cmd_average(args: argparse.Namespace) -> int:
    _setup_logging()

    def run() -> None:
        from trainer.engine import average_snapshots

        out = average_snapshots(args.snapshots, args.out, half=args.half, bn_batches=args.bn_batches,
                                  config=args.config)
        print(f"weights: {out}")

    return _run_guarded(run)


def cmd_custom(args: argparse.Namespace) -> int:
    _setup_logging()
    from trainer.custom import train_custom

    def run() -> None:
        out = train_custom(
            args.classes,
            args.data,
            args.out,
            steps=args.steps,
            preset=args.preset,
            backgrounds=args.backgrounds,
            overrides=args.overrides,
            resume=args.resume,
        )
        for stage, path in out.items():
            print(f"{stage}: {path}")
        if "matting" in out:
            print(
                f"use: semantic-matte matte IMAGE TRIMAP -o ALPHA --weights {out['matting']} "
                f"--classifier {out.get('classifier', Path(args.out) / 'classifier.pt')}"
            )

    return _run_guarded(run)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` and its sub-commands on a ``semantic-matte`` sub-parser set."""
    train = subparsers.add_parser(
        "train",
        help="train the classifier, discriminator or matting network",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = train.add_subparsers(dest="train_command", required=True)
    for task in TASKS:
        p = sub.add_parser(task, help=_TASK_HELP[task])
        p.add_argument(
            "--config", type=Path, help="TOML config (trainer/configs/*.toml); default: built-in defaults"
        )
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="KEY=VALUE",
            help="dotted overrides with TOML values, e.g. optim.lr=3e-4 run.precision=bf16 "
            "(after all --options)",
        )
        p.add_argument("--resume", action="store_true", help="continue from <run dir>/checkpoints/last")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        p.set_defaults(func=cmd_train, task=task)

    p = sub.add_parser(
        "export", help="a training snapshot (<run>/checkpoints/step_N.pt) as a weights file the daemon loads"
    )
    p.add_argument("snapshot", type=Path, help="snapshot file")
    p.add_argument("-o", "--out", type=Path, help="weights file (default <run>/<task>_step<N>.pt)")
    p.add_argument("--half", action="store_true", help="store fp16 (half the size; the daemon computes in fp32)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "average", help="the mean of a run's snapshots as one weights file (stochastic weight averaging)"
    )
    p.add_argument("snapshots", type=Path, nargs="+",
                   help="snapshot or exported weights files of one run (or of runs that continued it)")
    p.add_argument("--config", type=Path,
                   help="the run's config.json (needed when only weights files are given: they carry no config)")
    p.add_argument("-o", "--out", type=Path, required=True, help="weights file")
    p.add_argument("--half", action="store_true", help="store fp16 (half the size; the daemon computes in fp32)")
    p.add_argument(
        "--bn-batches", type=int, default=0, metavar="N",
        help="re-estimate BatchNorm statistics on N training batches of the run's data config (default 0: "
        "average the snapshots' statistics)",
    )
    p.set_defaults(func=cmd_average)

    p = sub.add_parser(
        "custom", help="train classifier, discriminator and matting model for your own classes"
    )
    p.add_argument("--classes", required=True, help="comma-separated class names (folders of --data)")
    p.add_argument(
        "--data", type=Path, required=True, help="root with <class>/fg and <class>/alpha image folders"
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/custom"), help="output folder (default runs/custom)"
    )
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps per stage (default 2000)")
    p.add_argument(
        "--preset",
        default="lite",
        choices=["lite", "r50", "tiny"],
        help="network sizes: lite (default model), r50 (official size), tiny (CPU demo)",
    )
    p.add_argument(
        "--backgrounds",
        action="append",
        metavar="DIR",
        help="background image folder (repeatable; default: shared folders, else generated)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run; finished stages are kept"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every stage (run.precision=bf16)"
    )
    p.set_defaults(func=cmd_custom)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m trainer.cli train ...``, e.g. under torchrun)."""
    from backend.cli import CommandParser

    parser = CommandParser(prog="semantic-matte")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    rc = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun: results are written and the process group is destroyed; skip interpreter
        # teardown, where gloo's threads intermittently hit std::terminate and fail a finished run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)
