"""`semantic-matte batch IN_DIR OUT_DIR`: matte a folder through the daemon, K requests in flight, resumable.

Trimap rules, for an image ``IN_DIR/<sub>/<stem>.<ext>`` (first match wins):
  1. ``--trimaps DIR``: ``DIR/<sub>/<stem>.<any image ext>``;
  2. ``--masks DIR --band N``: ``DIR/<sub>/<stem>.*`` is a binary mask, the worker makes a trimap with an
     unknown band of N px;
  3. otherwise the first existing folder of ``IN_DIR/trimaps``, ``IN_DIR/../trimaps``, ``IN_DIR/../trimap``.
Images without a trimap are reported as errors; the batch goes on. Folders named ``trimaps``/``masks``
inside IN_DIR, and OUT_DIR when it lies inside IN_DIR, are not treated as inputs; OUT_DIR = IN_DIR is refused.

Outputs: ``OUT_DIR/<sub>/<stem>.png`` (alpha, 8 or 16 bit), plus ``<stem>_cutout.png`` (RGBA with the
estimated foreground) with ``--cutout``; an image whose output name another input already takes (``a.jpg``
beside ``a.png``) is reported as an error, not matted over it. ``OUT_DIR/manifest.jsonl`` records every finished file (input
size/mtime + options); a re-run skips files recorded ``ok`` whose input and options are unchanged and whose
output exists. ``OUT_DIR/errors.json`` lists the files that failed, with code and message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import protocol as P

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
GUIDE_DIRS = ("trimaps", "trimap", "masks", "mask")
MANIFEST = "manifest.jsonl"
ERRORS = "errors.json"


@dataclass
class Item:
    image: Path
    rel: Path  # relative to IN_DIR, without suffix
    trimap: Path | None = None
    mask: Path | None = None


def _find_guide(folder: Path, rel: Path) -> Path | None:
    for ext in IMAGE_EXTS:
        cand = folder / rel.parent / (rel.name + ext)
        if cand.is_file():
            return cand
    return None


def discover(in_dir: Path, *, trimaps: Path | None = None, masks: Path | None = None,
             recursive: bool = True, out_dir: Path | None = None) -> Iterator[Item]:
    """Yield input images in sorted order with their trimap or mask (see the module docstring). Nothing under
    the guide folders or ``out_dir`` is an input (an output folder inside IN_DIR must not feed the next run)."""
    if trimaps is None and masks is None:
        for cand in (in_dir / "trimaps", in_dir.parent / "trimaps", in_dir.parent / "trimap"):
            if cand.is_dir():
                trimaps = cand
                break
    skip = {p.resolve() for p in (trimaps, masks) if p is not None}
    if out_dir is not None and in_dir.resolve() in out_dir.resolve().parents:
        skip.add(out_dir.resolve())
    pattern = "**/*" if recursive else "*"
    for path in sorted(in_dir.glob(pattern)):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTS:
            continue
        rel_parts = path.relative_to(in_dir).parts
        if any(part in GUIDE_DIRS for part in rel_parts[:-1]):
            continue
        if any(s in path.resolve().parents for s in skip):
            continue
        rel = path.relative_to(in_dir).with_suffix("")
        item = Item(path, rel)
        if trimaps is not None:
            item.trimap = _find_guide(trimaps, rel)
        if item.trimap is None and masks is not None:
            item.mask = _find_guide(masks, rel)
        yield item


class Manifest:
    """Append-only JSON lines: the last record per input wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self.records[rec["input"]] = rec
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut by a crash
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 — kept open for add(), closed by close()

    def done(self, key: str, stamp: dict, outputs: list[Path]) -> bool:
        rec = self.records.get(key)
        return bool(rec and rec.get("status") == "ok" and rec.get("stamp") == stamp and all(p.exists() for p in outputs))

    def add(self, record: dict) -> None:
        self.records[record["input"]] = record
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _stamp(item: Item, options_hash: str) -> dict:
    st = item.image.stat()
    guide = item.trimap or item.mask
    gst = guide.stat() if guide else None
    return {"size": st.st_size, "mtime": st.st_mtime_ns, "guide": str(guide) if guide else None,
            "guide_mtime": gst.st_mtime_ns if gst else None, "options": options_hash}


class _Progress:
    """tqdm when available, else a plain line every few seconds (count, rate, ETA)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.n, self.t0, self.last = total, 0, time.monotonic(), 0.0
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="img", dynamic_ncols=True)
            except ImportError:
                pass
        self.enabled = enabled

    def update(self, n: int = 1, failed: int = 0) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(failed=failed, refresh=False)
        elif self.enabled and (time.monotonic() - self.last > 2 or self.n == self.total):
            self.last = time.monotonic()
            rate = self.n / max(1e-9, self.last - self.t0)
            eta = (self.total - self.n) / rate if rate else float("inf")
            print(f"{self.n}/{self.total} images, {rate:.2f}/s, ETA {eta:.0f} s, {failed} failed", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_batch(in_dir: str | Path, out_dir: str | Path, *, server: str | None = None, trimaps: str | Path | None = None,
              masks: str | Path | None = None, band: int | None = None, inflight: int = 4, cutout: bool = False,
              bits: int = 8, classes: list[str] | None = None, refine: str | None = None,
              trimap_mode: str | None = None, timeout: float = 600.0,
              recursive: bool = True, force: bool = False, progress: bool = True, curve: Any = None) -> dict:
    """Matte every image of ``in_dir`` into ``out_dir``; returns counts ``{"ok", "skipped", "failed"}``."""
    from backend import imageio
    from backend.client import Client, ServerError, Unavailable

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} does not exist")
    if masks is not None and not band:
        raise ValueError("--masks needs --band N (unknown band width in pixels)")
    if out_dir.resolve() == in_dir.resolve():
        raise ValueError(f"the output folder must differ from the input folder {in_dir}: the mattes would replace "
                         "the images")
    out_dir.mkdir(parents=True, exist_ok=True)
    options = {"cutout": cutout, "bits": bits, "classes": classes, "band": band}
    # kept out of the hash when unset: manifests from before these options stay valid
    if refine is not None:
        options["refine"] = refine
    if trimap_mode is not None:
        options["trimap_mode"] = trimap_mode
    options_hash = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    items = list(discover(in_dir, trimaps=Path(trimaps) if trimaps else None, masks=Path(masks) if masks else None,
                          recursive=recursive, out_dir=out_dir))
    manifest = Manifest(out_dir / MANIFEST)
    errors: list[dict] = []
    counts = {"ok": 0, "skipped": 0, "failed": 0, "total": len(items)}

    def outputs_of(item: Item) -> list[Path]:
        base = out_dir / item.rel
        return [base.with_suffix(".png")] + ([base.parent / (base.name + "_cutout.png")] if cutout else [])

    todo, clashes, claimed = [], [], {}
    for item in items:
        outs = outputs_of(item)
        # a.png and a.jpg would write the same a.png; with cut-outs, a.png and a_cutout.png the same a_cutout.png
        shared = next((p for p in outs if p in claimed), None)
        if shared is not None:
            clashes.append((item, claimed[shared], shared))
            continue
        claimed.update(dict.fromkeys(outs, item))
        stamp = _stamp(item, options_hash)
        if not force and manifest.done(str(item.rel), stamp, outs):
            counts["skipped"] += 1
        else:
            todo.append((item, stamp))
    bar = _Progress(len(todo) + len(clashes), progress)

    def fail(item: Item, stamp: dict | None, code: str, message: str) -> None:
        counts["failed"] += 1
        if stamp is not None:  # a clash has no manifest record: it would stand for the file it clashes with
            rec = {"input": str(item.rel), "status": "error", "code": code, "message": message, "stamp": stamp}
            manifest.add(rec)
        errors.append({"input": str(item.image), "code": code, "message": message})
        bar.update(1, counts["failed"])

    for item, first, shared in clashes:
        fail(item, None, "input", f"{item.image.name} and {first.image.name} would both write "
                                  f"{shared.relative_to(out_dir)}: rename one")

    pending: dict[str, tuple[Item, dict, Any]] = {}
    outputs = [P.OUT_ALPHA] + ([P.OUT_FOREGROUND] if cutout else [])
    queue = iter(todo)
    exhausted = False
    try:
        with Client(server, timeout=timeout, retries=10, retry_busy=True, curve=curve) as client:
            while pending or not exhausted:
                while not exhausted and len(pending) < inflight:
                    nxt = next(queue, None)
                    if nxt is None:
                        exhausted = True
                        break
                    item, stamp = nxt
                    if item.trimap is None and item.mask is None:
                        fail(item, stamp, "no_trimap", "no trimap or mask found (see `semantic-matte batch -h`)")
                        continue
                    try:
                        image = imageio.read_image(item.image)
                        arrays: dict[str, Any] = {"image": image}
                        if item.trimap is not None:
                            arrays["trimap"] = imageio.read_trimap(item.trimap)
                        else:
                            arrays["mask"] = imageio.read_trimap(item.mask)
                    except Exception as exc:  # noqa: BLE001 — unreadable input: record it, keep going
                        fail(item, stamp, "input", str(exc))
                        continue
                    opts = {"outputs": outputs, "classes": classes, "band": band if item.mask is not None else None,
                            "alpha_dtype": "u2" if bits == 16 else "f4", "refine": refine}
                    if trimap_mode is not None and item.trimap is not None:
                        opts["trimap_mode"] = trimap_mode
                    rid = client.submit(P.MATTE, arrays, opts, priority=P.BATCH, timeout=timeout)
                    pending[rid] = (item, stamp, image if cutout else None)
                for rid, outcome in client.wait_any(1.0):
                    item, stamp, image = pending.pop(rid)
                    if isinstance(outcome, Unavailable) and "tries" in outcome.message:
                        raise outcome  # the daemon is gone: stop instead of failing every file
                    if isinstance(outcome, ServerError):
                        fail(item, stamp, outcome.code, outcome.message)
                        continue
                    try:
                        alpha = outcome["alpha"]
                        if alpha.dtype.kind == "u":
                            alpha = alpha.astype("float32") / 65535.0
                        paths = outputs_of(item)
                        paths[0].parent.mkdir(parents=True, exist_ok=True)
                        imageio.write_alpha(paths[0], alpha, bits=bits)
                        if cutout:
                            fg = outcome.arrays.get(P.OUT_FOREGROUND)
                            imageio.write_rgba(paths[1], fg if fg is not None else image, alpha, bits=bits)
                    except Exception as exc:  # noqa: BLE001 — one unwritable output must not stop the batch
                        fail(item, stamp, "output", str(exc))
                        continue
                    counts["ok"] += 1
                    manifest.add({"input": str(item.rel), "status": "ok", "stamp": stamp,
                                  "outputs": [str(p.relative_to(out_dir)) for p in outputs_of(item)],
                                  "meta": {k: outcome.meta.get(k) for k in ("model", "device", "precision", "worker")}})
                    bar.update(1, counts["failed"])
    finally:
        bar.close()
        manifest.close()
        with open(out_dir / ERRORS, "w", encoding="utf-8") as fh:
            json.dump(errors, fh, indent=2)
    return counts


def batch_command(args: argparse.Namespace) -> int:
    from backend.client import ServerError

    curve = None
    if args.server_key:
        from backend.client import CurveClientKeys

        curve = CurveClientKeys.from_files(args.server_key, args.client_secret)
    try:
        counts = run_batch(args.in_dir, args.out_dir, server=args.server, trimaps=args.trimaps, masks=args.masks,
                           band=args.band, inflight=args.inflight, cutout=args.cutout, bits=args.bits,
                           classes=args.classes or None, refine=args.refine, trimap_mode=args.trimap_mode,
                           timeout=args.timeout, recursive=not args.no_recursive,
                           force=args.force, progress=not args.quiet, curve=curve)
    except (OSError, ValueError) as exc:  # a missing input folder, an output folder that cannot be made
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServerError as exc:
        print(f"error: daemon: {exc}", file=sys.stderr)
        return 3
    print(f"{counts['ok']} matted, {counts['skipped']} already done, {counts['failed']} failed "
          f"(of {counts['total']}); report: {Path(args.out_dir) / ERRORS}", file=sys.stderr)
    return 1 if counts["failed"] else 0


def add_cli(subparsers: Any) -> None:
    from backend.cli import endpoint_argument, positive_int_argument

    p = subparsers.add_parser("batch", help="matte a folder through the daemon (resumable)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("in_dir")
    p.add_argument("out_dir")
    p.add_argument("--server", type=endpoint_argument, help="daemon endpoint (default: the local daemon)")
    p.add_argument("--trimaps", help="folder of trimaps named like the images")
    p.add_argument("--masks", help="folder of binary masks named like the images (needs --band)")
    p.add_argument("--band", type=positive_int_argument, help="unknown band width in px around mask edges")
    p.add_argument("--inflight", "-k", type=int, default=4, help="requests kept in flight")
    p.add_argument("--cutout", action="store_true", help="also write <stem>_cutout.png (RGBA)")
    p.add_argument("--bits", type=int, choices=[8, 16], default=8)
    p.add_argument("--classes", nargs="*", help="class override for the semantic trimap")
    p.add_argument("--refine", choices=P.REFINE_MODES, help="alpha refinement (default: the daemon's, nonlocal)")
    p.add_argument("--trimap-mode", choices=P.TRIMAP_MODES,
                   help="tolerant: snap 127-valued or soft trimaps (≤25→0, ≥230→255, rest unknown); default strict")
    p.add_argument("--timeout", type=float, default=600.0, help="per-image deadline (s)")
    p.add_argument("--no-recursive", action="store_true")
    p.add_argument("--force", action="store_true", help="redo files already in the manifest")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--server-key", help="CURVE server public key file")
    p.add_argument("--client-secret", help="CURVE client secret key file")
    p.set_defaults(func=batch_command)
