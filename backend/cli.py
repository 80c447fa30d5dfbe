"""`semantic-matte` command line: matte, eval, info, plus the daemon, batch and training commands.

Every expected failure (missing / corrupt files, size mismatch, bad trimap, missing weights, no daemon)
ends with one line on stderr and a distinct exit code — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from backend import protocol as P

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_BAD_VALUE = 6  # invalid trimap / option value (same code as a trimap error)
EXIT_WEIGHTS = 7
EXIT_DEVICE = 8
EXIT_SERVER = 9

# Sub-command providers that live beside their concept (each exposes add_cli(subparsers)).
_PLUGIN_COMMANDS = ("backend.daemon", "backend.batch", "trainer.cli")

log = logging.getLogger("semantic_matte")


class CliError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- helpers


def _parse_tile(value: str) -> int | None:
    if value == "auto":
        return None
    if value == "off":
        return 0
    try:
        n = int(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError("--tile takes auto, off or a size in px (multiple of 8)") from e
    if n < 64 or n % 8:
        raise argparse.ArgumentTypeError("tile size must be ≥ 64 and a multiple of 8")
    return n


def _load_trimap(args: argparse.Namespace, shape: tuple[int, int]) -> Any:
    from backend import imageio, processing

    raw = imageio.read_trimap(args.trimap)
    if raw.shape != shape:
        raise imageio.SizeMismatchError(
            f"image is {shape[1]}×{shape[0]} but {'mask' if args.band else 'trimap'} {args.trimap} is "
            f"{raw.shape[1]}×{raw.shape[0]}")
    if args.band:
        return processing.trimap_from_mask(raw, args.band)
    try:
        return processing.validate_trimap(raw, args.trimap_mode)
    except ValueError as e:
        raise imageio.TrimapError(f"{args.trimap}: {e}") from e


def _make_predictor(args: argparse.Namespace) -> Any:
    from backend.models import weights as W
    from backend.predictor import MattingPredictor

    weights = args.weights
    if weights is None and args.model:
        found = [d / f"{args.model}.pt" for d in W.search_dirs() if (d / f"{args.model}.pt").is_file()]
        if not found:
            raise W.WeightsError(f"model {args.model!r} not found on the weights path "
                                 f"({', '.join(str(d) for d in W.search_dirs())}); see `semantic-matte info`")
        weights = found[0]
    try:
        return MattingPredictor.from_pretrained(weights, args.classifier, device=args.device,
                                                precision=args.precision, tile=args.tile,
                                                trimap_mode=args.trimap_mode, refine=args.refine)
    except RuntimeError as e:  # device problems
        raise CliError(str(e), EXIT_DEVICE) from e


def semantic_map_image(semantic: Any, num_classes: int) -> Any:
    """Colour image of the semantic trimap: hue = winning class, brightness = its score."""
    import colorsys

    import numpy as np

    palette = np.array([colorsys.hsv_to_rgb(i / num_classes, 0.85, 1.0) for i in range(num_classes)], np.float32)
    winner = semantic.argmax(axis=0)
    strength = semantic.max(axis=0)
    return palette[winner] * strength[..., None]


# --------------------------------------------------------------------------- commands


def cmd_matte(args: argparse.Namespace) -> int:
    from backend import imageio

    try:  # an unwritable format fails now, not after the matting
        imageio.check_output_format(args.output, bits=args.bits)
        if args.cutout is not None:
            imageio.check_output_format(args.cutout, bits=args.bits, alpha_channel=True)
        if args.semantic_map is not None:
            imageio.check_output_format(args.semantic_map)
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    inputs = {args.image.resolve(), args.trimap.resolve()}
    for out in (args.output, args.cutout, args.semantic_map):
        if out is None:
            continue
        if out.resolve() in inputs:
            raise CliError(f"{out} is an input: an output would replace it", EXIT_USAGE)
        _check_writable(out)
    image = imageio.read_image(args.image)
    trimap = _load_trimap(args, image.shape[:2])
    t0 = time.perf_counter()
    want_fg = args.cutout is not None
    want_sem = args.semantic_map is not None
    if args.server:
        from backend.client import ServerError, matte_via_server

        try:
            res = matte_via_server(args.server, image, trimap, classes=args.classes or None, want_foreground=want_fg,
                                   want_semantic=want_sem, tile=args.tile, refine=args.refine)
        except ServerError as e:
            raise CliError(f"daemon at {args.server}: {e}", EXIT_SERVER) from e
        alpha, fg, sem, shares = res["alpha"], res["foreground"], res["semantic"], res["class_shares"]
    else:
        predictor = _make_predictor(args)
        try:
            r = predictor.predict(image, trimap, classes=args.classes or None, want_foreground=want_fg,
                                  want_semantic=want_sem)
        except ValueError as e:
            raise CliError(str(e), EXIT_BAD_VALUE) from e
        alpha, fg, sem, shares = r.alpha, r.foreground, r.semantic, r.class_shares
    imageio.write_alpha(args.output, alpha, bits=args.bits)
    if want_fg:
        imageio.write_rgba(args.cutout, fg, alpha, bits=args.bits)
    if want_sem:
        imageio.write_rgb(args.semantic_map, semantic_map_image(sem, sem.shape[0]))
        top = sorted(shares.items(), key=lambda kv: -kv[1])[:5]
        print("classes: " + ", ".join(f"{k} {v:.0%}" for k, v in top if v > 0))
    print(f"wrote {args.output} ({alpha.shape[1]}×{alpha.shape[0]}) in {time.perf_counter() - t0:.2f}s")
    return EXIT_OK


def _check_writable(path: Path) -> None:
    """CliError now if a file cannot be created beside ``path`` (its folder is made), not after the work."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}", EXIT_USAGE) from e


def cmd_eval(args: argparse.Namespace) -> int:
    from backend import evaluation

    if args.report is not None:
        if args.report.exists() and not args.report.is_dir():
            raise CliError(f"--report {args.report}: a file is in the way of the report folder", EXIT_USAGE)
        _check_writable(args.report / "report.md")
    predictor = _make_predictor(args)
    samples = evaluation.find_samples(args.dataset, trimap_set=args.trimap_set)
    if args.held_out:
        samples = evaluation.held_out_samples(samples)
    if args.limit:
        samples = samples[: args.limit]
    if not samples:
        raise CliError(f"no samples found under {args.dataset}", 3)

    def predict(image: Any, trimap: Any, group: str | None) -> Any:
        return predictor.predict(image, trimap, semantic=not args.no_semantic).alpha

    result = evaluation.evaluate(predict, samples)
    print(evaluation.format_table(result))
    if args.report:
        evaluation.write_report(result, args.report)
        print(f"report written to {args.report}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from backend import __version__
    from backend.models import weights as W
    from backend.models.registry import get_entry, list_models

    print(f"semantic-matte {__version__}  python {platform.python_version()}  torch {torch.__version__}")
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    print("devices: " + ", ".join(devices))
    print("architectures:")
    for name in list_models():
        e = get_entry(name)
        print(f"  {name:<16} {e.kind:<10} {e.description}")
    print("weights search path:")
    for d in W.search_dirs():
        files = sorted(p.name for p in d.glob("*.pt")) if d.is_dir() else []
        print(f"  {d}{'' if d.is_dir() else '  (missing)'}")
        for f in files:
            print(f"      {f}")
    for kind in ("matting", "classifier"):
        print(f"default {kind}: {W.find_default(kind) or 'none — see README: Weights'}")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, help="matting checkpoint (ours or official SIM); default: shipped model")
    p.add_argument("--classifier", type=Path, help="patch-classifier checkpoint (ours or official)")
    p.add_argument("--model", help="name of a model on the weights search path (see `info`)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--precision", default=P.PRECISION_AUTO, choices=P.PRECISION_MODES,
                   help="autocast precision (auto: bf16 on CPUs with native bf16, else fp32)")
    p.add_argument("--tile", type=_parse_tile, default=None, metavar="auto|off|PX",
                   help="tiled inference for large images (default auto: by memory budget)")
    p.add_argument("--trimap-mode", default=P.TRIMAP_STRICT, choices=P.TRIMAP_MODES,
                   help="strict: exact 0/128/255; tolerant: ≤25→0, ≥230→255, rest unknown (127, soft trimaps)")
    p.add_argument("--refine", default=P.REFINE_DEFAULT, choices=P.REFINE_MODES,
                   help="nonlocal (default): closed-form re-solve of alpha where the network is unsure plus a "
                        "KNN-matting term (lower error on hair and fur); band: the re-solve alone (≈ 0.8x the time); "
                        "off: network alpha")


class CommandParser(argparse.ArgumentParser):
    """No prefix matching, here and in every subcommand (subparsers default to their parent's class):
    ``--trimap PATH`` must not be taken for ``--trimap-mode``, and a script's shortened option must not
    change meaning when an option is added."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def endpoint_argument(text: str) -> str:
    """argparse ``type`` of the daemon address options (``--server``, ``--bind``, ``--connect``): the address as
    ``protocol.parse_endpoint`` reads it, or a usage error naming the accepted forms."""
    try:
        return P.parse_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int_argument(text: str) -> int:
    """argparse ``type`` of counts and widths that must be ≥ 1 (``--band``, ``--limit``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="semantic-matte", description="Semantic Image Matting (SIM)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("matte", help="matte one image with a trimap (or a mask + band)")
    p.add_argument("image", type=Path)
    p.add_argument("trimap", type=Path, help="trimap PNG (0/128/255), or a binary mask with --band")
    p.add_argument("-o", "--output", type=Path, required=True, help="alpha PNG to write")
    p.add_argument("--cutout", type=Path, help="also write an RGBA cut-out with decontaminated colours")
    p.add_argument("--semantic-map", type=Path, help="also write the semantic trimap as a colour image")
    p.add_argument("--class", dest="classes", nargs="+", metavar="NAME", help="override the classifier's classes")
    p.add_argument("--band", type=positive_int_argument, help="treat TRIMAP as a binary mask; unknown band of this width in px")
    p.add_argument("--bits", type=int, choices=[8, 16], default=8, help="PNG bit depth of the outputs")
    p.add_argument("--server", metavar="ADDR", type=endpoint_argument, help="run through a daemon (e.g. ipc:///run/... or tcp://127.0.0.1:5555)")
    _add_model_options(p)
    p.set_defaults(func=cmd_matte)

    p = sub.add_parser("eval", help="evaluate on a dataset (alphamatting or SIM layout)")
    p.add_argument("dataset", type=Path)
    p.add_argument("--trimap-set", default="trimap1", help="alphamatting layout: trimap1 or trimap2")
    p.add_argument("--report", type=Path, help="write a markdown + PNG report to this directory")
    p.add_argument("--limit", type=positive_int_argument, help="only the first N samples")
    p.add_argument("--held-out", action="store_true",
                   help="alphamatting layout: only the project's 9 held-out images (GT02, GT05, ... GT26)")
    p.add_argument("--no-semantic", action="store_true", help="ablation: run without the semantic trimap")
    _add_model_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="versions, devices, architectures and weights found")
    p.set_defaults(func=cmd_info)

    for module in _PLUGIN_COMMANDS:
        try:
            add_cli = importlib.import_module(module).add_cli
        except (ImportError, AttributeError) as e:  # a part not installed keeps the rest usable
            log.debug("commands of %s unavailable: %s", module, e)
            continue
        add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from backend.errors import MatteError

    try:
        return int(args.func(args) or 0)
    except (MatteError, CliError) as e:
        print(f"semantic-matte: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # last resort: one line, details only with -v
        if args.verbose:
            raise
        print(f"semantic-matte: internal error: {type(e).__name__}: {e} (rerun with -v for details)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
