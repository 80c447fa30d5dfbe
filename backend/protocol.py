"""The one wire protocol shared by daemon, CLI, batch client and editor plug-ins.

Stdlib + msgpack only: this module is imported inside Krita / GIMP Pythons (no numpy, no torch).
numpy is imported lazily, only by the helpers that build or return numpy arrays.

A message is a ZeroMQ multipart message: frame 0 is a msgpack map (the *header*), frames 1..n are the
raw, C-ordered, little-endian bytes of the arrays the header describes in ``header["arrays"]``.
The full specification is ``docs/protocol.md``; the names below are the ones it uses.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

# Trimap pixel values (8-bit). The official SIM code tests these with exact equality.
TRIMAP_BG = 0
TRIMAP_UNKNOWN = 128
TRIMAP_FG = 255

PROTOCOL_VERSION = 1

# --- message kinds -------------------------------------------------------------------------------
# client -> broker
INFO = "info"
HEALTH = "health"
MATTE = "matte"
CLASSIFY = "classify"
CANCEL = "cancel"
STATUS = "status"  # "is my request still known?" — sent by clients when the line has been quiet
CLIENT_KINDS = frozenset({INFO, HEALTH, MATTE, CLASSIFY, CANCEL, STATUS})
JOB_KINDS = frozenset({MATTE, CLASSIFY})  # kinds that are forwarded to a worker

# broker / worker -> client
RESULT = "result"
PROGRESS = "progress"
ERROR = "error"
UNKNOWN = "unknown"  # answer to STATUS when the broker does not know the id (e.g. it restarted)
REPLY_KINDS = frozenset({RESULT, PROGRESS, ERROR, UNKNOWN})

# worker <-> broker (back end)
READY = "ready"
HEARTBEAT = "heartbeat"
JOB = "job"
BYE = "bye"
REREGISTER = "reregister"  # broker -> worker: "I do not know you, send READY again"
SHUTDOWN = "shutdown"  # broker -> worker: finish the current job, then exit
WORKER_KINDS = frozenset({READY, HEARTBEAT, PROGRESS, RESULT, ERROR, BYE})

# --- priorities ----------------------------------------------------------------------------------
INTERACTIVE = "interactive"
BATCH = "batch"
PRIORITIES = (INTERACTIVE, BATCH)

# --- error codes ---------------------------------------------------------------------------------
E_BAD_REQUEST = "bad_request"
E_TOO_LARGE = "too_large"
E_BUSY = "busy"
E_DEADLINE = "deadline_exceeded"
E_CANCELLED = "cancelled"
E_INTERNAL = "internal"
E_UNAVAILABLE = "unavailable"
ERROR_CODES = frozenset({E_BAD_REQUEST, E_TOO_LARGE, E_BUSY, E_DEADLINE, E_CANCELLED, E_INTERNAL, E_UNAVAILABLE})

# --- outputs -------------------------------------------------------------------------------------
OUT_ALPHA = "alpha"
OUT_FOREGROUND = "foreground"
OUT_SEMANTIC = "semantic"
OUTPUTS = (OUT_ALPHA, OUT_FOREGROUND, OUT_SEMANTIC)

# --- alpha refinement (backend.refinement) ---------------------------------------------------------
REFINE_BAND = "band"  # closed-form re-solve where the network is unsure
# band + a nonlocal (KNN) term: lower error on opaque detail (hair, fur), about 1.3x the CPU time of "band"
REFINE_NONLOCAL = "nonlocal"
REFINE_OFF = "off"  # the network's alpha as it is
REFINE_MODES = (REFINE_BAND, REFINE_NONLOCAL, REFINE_OFF)
# What predictor, CLI, daemon and plug-ins use unless told otherwise (session 14: "nonlocal", once its time per
# held-out photo came within closed-form matting's; docs/bench/refinement_validation.md)
REFINE_DEFAULT = REFINE_NONLOCAL

# --- trimap values (backend.processing.validate_trimap) --------------------------------------------
TRIMAP_STRICT = "strict"  # exactly 0 / 128 / 255 (the official contract; the default)
TRIMAP_TOLERANT = "tolerant"  # ≤ 25 → 0, ≥ 230 → 255, everything between unknown (127-valued, soft trimaps)
TRIMAP_MODES = (TRIMAP_STRICT, TRIMAP_TOLERANT)

# --- worker precision (announced in a worker's info; chosen at its start, not per request) ----------
PRECISION_AUTO = "auto"  # bf16 on CPUs with native bf16, fp32 elsewhere (backend.predictor.resolve_precision)
PRECISION_MODES = (PRECISION_AUTO, "fp32", "fp16", "bf16")

# --- limits --------------------------------------------------------------------------------------
# Wire dtypes: little-endian numpy type strings. Anything else is refused before touching numpy.
DTYPE_ITEMSIZE = {"|u1": 1, "<u2": 2, "<f2": 2, "<f4": 4}
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAMES = 8  # header + at most 7 arrays
MAX_ARRAYS = MAX_FRAMES - 1
MAX_RANK = 3
MAX_SIDE = 16384
MAX_CHANNELS = 64  # semantic maps carry C class channels (20 for SIM)
MAX_PIXELS = 64 * 1024 * 1024
MAX_FRAME_BYTES = 512 * 1024 * 1024  # also the ZMQ_MAXMSGSIZE of the public sockets
MAX_ID_LEN = 64
MAX_TIMEOUT = 24 * 3600.0
DEFAULT_TIMEOUT = 120.0
HEARTBEAT_INTERVAL = 1.0  # seconds, both directions
HEARTBEAT_LIVENESS = 3  # missed heartbeats before a peer is declared dead

# msgpack limits for headers a server receives (untrusted) and replies a client receives.
REQUEST_UNPACK_LIMITS = {"max_str_len": 4096, "max_bin_len": 0, "max_array_len": 64, "max_map_len": 64,
                         "max_ext_len": 0}
REPLY_UNPACK_LIMITS = {
    "max_str_len": 64 * 1024, "max_bin_len": 0, "max_array_len": 4096, "max_map_len": 4096, "max_ext_len": 0
}

_ID_RE = re.compile(rf"^[A-Za-z0-9_.:-]{{1,{MAX_ID_LEN}}}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ProtocolError(Exception):
    """A message that breaks the protocol. ``code`` is one of ERROR_CODES, sent back to the peer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _no_ext(code: int, data: bytes) -> Any:
    # msgpack ext types are never part of the protocol (msgpack-numpy's pickle payloads travel as ext/bin).
    raise ValueError("msgpack ext types are not allowed")


def new_request_id() -> str:
    """128-bit random id; retries reuse it so the broker can de-duplicate."""
    return uuid.uuid4().hex


def pack_header(header: Mapping[str, Any]) -> bytes:
    data = msgpack.packb(dict(header), use_bin_type=True)
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(E_TOO_LARGE, f"header is {len(data)} bytes (limit {MAX_HEADER_BYTES})")
    return data


def unpack_header(data: bytes | memoryview, limits: Mapping[str, int] = REQUEST_UNPACK_LIMITS) -> dict:
    """Decode a header frame with strict limits. Raises ProtocolError(bad_request/too_large)."""
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(E_TOO_LARGE, f"header frame is {len(data)} bytes (limit {MAX_HEADER_BYTES})")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, ext_hook=_no_ext, **limits)
    except Exception as exc:  # noqa: BLE001 — untrusted input: msgpack raises a zoo of types
        raise ProtocolError(E_BAD_REQUEST, f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(E_BAD_REQUEST, "header must be a msgpack map")
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(E_BAD_REQUEST, f"unsupported protocol version {version!r} (expected {PROTOCOL_VERSION})")
    kind = obj.get("kind")
    if not isinstance(kind, str):
        raise ProtocolError(E_BAD_REQUEST, "header field 'kind' must be a string")
    return obj


# --- arrays --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArraySpec:
    """Descriptor of one raw array frame: name, wire dtype string and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_ITEMSIZE[self.dtype]

    def to_wire(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class RawArray:
    """An array without numpy: a bytes-like buffer plus wire dtype and shape (for editor plug-ins)."""

    data: Any  # bytes, bytearray or memoryview, C-ordered, little-endian
    dtype: str
    shape: tuple[int, ...]

    def to_numpy(self):
        import numpy as np

        return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)


def parse_array_specs(raw: Any, *, max_pixels: int = MAX_PIXELS, max_frame_bytes: int = MAX_FRAME_BYTES) -> list[ArraySpec]:
    """Validate the ``arrays`` header field (no numpy). Raises ProtocolError."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_ARRAYS:
        raise ProtocolError(E_BAD_REQUEST, f"'arrays' must be a list of at most {MAX_ARRAYS} descriptors")
    specs: list[ArraySpec] = []
    names: set[str] = set()
    for item in raw:
        if not isinstance(item, dict):
            raise ProtocolError(E_BAD_REQUEST, "array descriptor must be a map")
        name, dtype, shape = item.get("name"), item.get("dtype"), item.get("shape")
        if not isinstance(name, str) or not _NAME_RE.match(name) or name in names:
            raise ProtocolError(E_BAD_REQUEST, f"bad or duplicate array name {name!r}")
        if not isinstance(dtype, str) or dtype not in DTYPE_ITEMSIZE:
            raise ProtocolError(E_BAD_REQUEST, f"array {name!r}: dtype {dtype!r} not in {sorted(DTYPE_ITEMSIZE)}")
        if (
            not isinstance(shape, list)
            or not 1 <= len(shape) <= MAX_RANK
            or not all(type(s) is int and s > 0 for s in shape)
        ):
            raise ProtocolError(E_BAD_REQUEST, f"array {name!r}: shape must be 1..{MAX_RANK} positive ints")
        # H×W×C (images) or C×H×W (semantic maps): the smallest axis of a rank-3 array is the channel axis.
        channels = min(shape) if len(shape) == 3 else 1
        if any(s > MAX_SIDE for s in shape) or channels > MAX_CHANNELS:
            raise ProtocolError(E_TOO_LARGE, f"array {name!r}: shape {shape} exceeds side {MAX_SIDE} "
                                             f"or {MAX_CHANNELS} channels")
        pixels = math.prod(shape) // channels
        if pixels > max_pixels:
            raise ProtocolError(E_TOO_LARGE, f"array {name!r}: {pixels} pixels > limit {max_pixels}")
        spec = ArraySpec(name, dtype, tuple(shape))
        if spec.nbytes > max_frame_bytes:
            raise ProtocolError(E_TOO_LARGE, f"array {name!r}: {spec.nbytes} bytes > limit {max_frame_bytes}")
        names.add(name)
        specs.append(spec)
    return specs


def check_frames(specs: Sequence[ArraySpec], frames: Sequence[Any]) -> None:
    """Frame count and byte counts must match the descriptors exactly (``frames`` excludes the header)."""
    if len(frames) != len(specs):
        raise ProtocolError(E_BAD_REQUEST, f"{len(frames)} array frames for {len(specs)} descriptors")
    for spec, frame in zip(specs, frames):
        size = len(frame.buffer) if hasattr(frame, "buffer") else len(frame)
        if size != spec.nbytes:
            raise ProtocolError(E_BAD_REQUEST, f"array {spec.name!r}: frame has {size} bytes, shape needs {spec.nbytes}")


def _frame_buffer(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def decode_arrays(specs: Sequence[ArraySpec], frames: Sequence[Any], *, use_numpy: bool = True) -> dict[str, Any]:
    """Rebuild arrays from already-checked frames without copying (numpy arrays are read-only views)."""
    check_frames(specs, frames)
    out: dict[str, Any] = {}
    if use_numpy:
        import numpy as np

        for spec, frame in zip(specs, frames):
            out[spec.name] = np.frombuffer(_frame_buffer(frame), dtype=np.dtype(spec.dtype)).reshape(spec.shape)
    else:
        for spec, frame in zip(specs, frames):
            out[spec.name] = RawArray(_frame_buffer(frame), spec.dtype, spec.shape)
    return out


_NUMPY_TO_WIRE = {"uint8": "|u1", "bool": "|u1", "uint16": "<u2", "float16": "<f2", "float32": "<f4", "float64": "<f4"}


def encode_array(name: str, array: Any) -> tuple[ArraySpec, Any]:
    """(descriptor, buffer) for a numpy array or RawArray; the buffer is sent with copy=False.

    numpy inputs are converted only when needed (bool -> u1, float64 -> f4, big-endian or non-contiguous).
    """
    if isinstance(array, RawArray):
        spec = ArraySpec(name, array.dtype, tuple(int(s) for s in array.shape))
        if spec.dtype not in DTYPE_ITEMSIZE:
            raise ProtocolError(E_BAD_REQUEST, f"array {name!r}: dtype {spec.dtype!r} not supported")
        return spec, array.data
    import numpy as np

    arr = np.asarray(array)
    wire = _NUMPY_TO_WIRE.get(arr.dtype.name)
    if wire is None:
        raise ProtocolError(E_BAD_REQUEST, f"array {name!r}: dtype {arr.dtype} not supported")
    target = np.dtype(wire)
    if arr.dtype != target:
        arr = arr.astype(target)
    arr = np.ascontiguousarray(arr)
    return ArraySpec(name, wire, tuple(int(s) for s in arr.shape)), memoryview(arr).cast("B")


def encode_message(header: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> list[Any]:
    """Frames for ``send_multipart(..., copy=False)``: packed header (with ``arrays`` filled) + buffers."""
    head = dict(header)
    frames: list[Any] = []
    descs: list[dict] = []
    for name, array in (arrays or {}).items():
        spec, buf = encode_array(name, array)
        descs.append(spec.to_wire())
        frames.append(buf)
    if descs:
        head["arrays"] = descs
    else:
        head.pop("arrays", None)
    head.setdefault("v", PROTOCOL_VERSION)
    return [pack_header(head), *frames]


# --- requests ------------------------------------------------------------------------------------


@dataclass
class Request:
    """A validated client request (what the broker queues and the worker runs)."""

    id: str
    kind: str
    timeout: float
    priority: str
    options: dict
    specs: list[ArraySpec] = field(default_factory=list)
    target: str | None = None  # for CANCEL / STATUS: the request id concerned


def _check_id(value: Any, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ProtocolError(E_BAD_REQUEST, f"'{what}' must be 1..{MAX_ID_LEN} chars of [A-Za-z0-9_.:-]")
    return value


_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str, type(None)),
    "classes": (list, type(None)),
    "outputs": (list,),
    "tile": (int, type(None)),
    "band": (int, type(None)),
    "alpha_dtype": (str,),
    "refine": (str, type(None)),
    "trimap_mode": (str, type(None)),
}


def _check_options(kind: str, raw: Any) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ProtocolError(E_BAD_REQUEST, "'options' must be a map")
    opts: dict = {}
    for key, value in raw.items():
        types = _OPTION_TYPES.get(key)
        if types is None:
            raise ProtocolError(E_BAD_REQUEST, f"unknown option {key!r}")
        if not isinstance(value, types) or isinstance(value, bool):
            raise ProtocolError(E_BAD_REQUEST, f"option {key!r} has the wrong type")
        opts[key] = value
    outputs = opts.get("outputs", [OUT_ALPHA] if kind == MATTE else [OUT_SEMANTIC])
    if not outputs or len(outputs) > len(OUTPUTS) or any(o not in OUTPUTS for o in outputs):
        raise ProtocolError(E_BAD_REQUEST, f"'outputs' must be a non-empty subset of {list(OUTPUTS)}")
    opts["outputs"] = list(dict.fromkeys(outputs))
    classes = opts.get("classes")
    if classes is not None and (len(classes) > MAX_CHANNELS or not all(isinstance(c, str) and c for c in classes)):
        raise ProtocolError(E_BAD_REQUEST, "'classes' must be a list of class names")
    tile = opts.get("tile")
    if tile is not None and not (tile == 0 or 64 <= tile <= MAX_SIDE):
        raise ProtocolError(E_BAD_REQUEST, f"'tile' must be 0 (never tile) or in 64..{MAX_SIDE}")
    band = opts.get("band")
    if band is not None and not 1 <= band <= 1024:
        raise ProtocolError(E_BAD_REQUEST, "'band' must be in 1..1024")
    if opts.get("refine") not in (None, *REFINE_MODES):
        raise ProtocolError(E_BAD_REQUEST, f"'refine' must be one of {', '.join(REFINE_MODES)}")
    if opts.get("trimap_mode") not in (None, *TRIMAP_MODES):
        raise ProtocolError(E_BAD_REQUEST, f"'trimap_mode' must be one of {', '.join(TRIMAP_MODES)}")
    if opts.setdefault("alpha_dtype", "f4") not in ("u1", "u2", "f4"):
        raise ProtocolError(E_BAD_REQUEST, "'alpha_dtype' must be u1, u2 or f4")
    if opts.get("model") is not None and not _NAME_RE.match(opts["model"]):
        raise ProtocolError(E_BAD_REQUEST, "bad model name")
    return opts


def _check_job_arrays(kind: str, specs: list[ArraySpec], opts: dict) -> None:
    by_name = {s.name: s for s in specs}
    allowed = {"image", "trimap", "mask"}
    extra = set(by_name) - allowed
    if extra:
        raise ProtocolError(E_BAD_REQUEST, f"unexpected arrays {sorted(extra)}")
    image = by_name.get("image")
    if image is None:
        raise ProtocolError(E_BAD_REQUEST, "missing array 'image'")
    if len(image.shape) != 3 or image.shape[2] not in (3, 4):
        raise ProtocolError(E_BAD_REQUEST, f"'image' must be H×W×3 or H×W×4, got {list(image.shape)}")
    if image.dtype not in ("|u1", "<u2", "<f4"):
        raise ProtocolError(E_BAD_REQUEST, "'image' dtype must be |u1, <u2 or <f4")
    trimap, mask = by_name.get("trimap"), by_name.get("mask")
    if (trimap is None) == (mask is None):
        raise ProtocolError(E_BAD_REQUEST, "send exactly one of 'trimap' or 'mask'")
    guide = trimap or mask
    if guide.dtype != "|u1" or guide.shape != image.shape[:2]:
        raise ProtocolError(E_BAD_REQUEST, f"'{guide.name}' must be uint8 H×W matching the image {list(image.shape[:2])}")
    if mask is not None and opts.get("band") is None:
        raise ProtocolError(E_BAD_REQUEST, "a 'mask' needs the 'band' option (unknown band width in pixels)")


def parse_request(header: Mapping[str, Any], frames: Sequence[Any], *, max_pixels: int = MAX_PIXELS,
                  max_frame_bytes: int = MAX_FRAME_BYTES) -> Request:
    """Validate a client request (header already unpacked, ``frames`` = array frames). Raises ProtocolError."""
    kind = header.get("kind")
    if kind not in CLIENT_KINDS:
        raise ProtocolError(E_BAD_REQUEST, f"unknown message kind {kind!r}")
    req_id = _check_id(header.get("id"))
    timeout = header.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise ProtocolError(E_BAD_REQUEST, f"'timeout' must be a number in (0, {MAX_TIMEOUT}] seconds")
    priority = header.get("priority", INTERACTIVE)
    if priority not in PRIORITIES:
        raise ProtocolError(E_BAD_REQUEST, f"'priority' must be one of {list(PRIORITIES)}")
    req = Request(id=req_id, kind=kind, timeout=float(timeout), priority=priority, options={})
    if kind in (CANCEL, STATUS):
        req.target = req_id
    if kind in JOB_KINDS:
        req.options = _check_options(kind, header.get("options"))
        req.specs = parse_array_specs(header.get("arrays"), max_pixels=max_pixels, max_frame_bytes=max_frame_bytes)
        _check_job_arrays(kind, req.specs, req.options)
        check_frames(req.specs, frames)
    elif frames or header.get("arrays"):
        raise ProtocolError(E_BAD_REQUEST, f"'{kind}' carries no arrays")
    return req


def request_header(kind: str, req_id: str, *, timeout: float = DEFAULT_TIMEOUT, priority: str = INTERACTIVE,
                   options: Mapping[str, Any] | None = None) -> dict:
    """Header of a client request (``arrays`` is filled in by encode_message)."""
    head: dict[str, Any] = {"v": PROTOCOL_VERSION, "kind": kind, "id": req_id, "timeout": float(timeout),
                            "priority": priority}
    if options:
        head["options"] = {k: v for k, v in options.items() if v is not None}
    return head


def error_header(req_id: str | None, code: str, message: str, *, retry_after: float | None = None) -> dict:
    head: dict[str, Any] = {"v": PROTOCOL_VERSION, "kind": ERROR, "id": req_id, "code": code, "message": message}
    if retry_after is not None:
        head["retry_after"] = round(float(retry_after), 3)
    return head


def progress_header(req_id: str, stage: str, done: float | None = None) -> dict:
    head: dict[str, Any] = {"v": PROTOCOL_VERSION, "kind": PROGRESS, "id": req_id, "stage": stage}
    if done is not None:
        head["done"] = max(0.0, min(1.0, float(done)))
    return head


def result_header(req_id: str, meta: Mapping[str, Any] | None = None) -> dict:
    return {"v": PROTOCOL_VERSION, "kind": RESULT, "id": req_id, "meta": dict(meta or {})}


# --- default endpoints ---------------------------------------------------------------------------
ENV_ENDPOINT = "SEMANTIC_MATTE_ENDPOINT"
ENV_RUNTIME_DIR = "SEMANTIC_MATTE_RUNTIME_DIR"


def runtime_dir() -> str:
    """Per-user runtime directory holding the ipc sockets and the pid file (created 0700 by the daemon)."""
    import os
    import tempfile

    explicit = os.environ.get(ENV_RUNTIME_DIR)
    if explicit:
        return explicit
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, "semantic-matte")
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return os.path.join(tempfile.gettempdir(), f"semantic-matte-{uid}")


def parse_endpoint(text: str) -> str:
    """A daemon address as ZeroMQ connects to it: ``tcp://HOST:PORT`` or ``ipc://PATH``; a bare ``HOST:PORT``
    means tcp, surrounding blanks are dropped. ValueError naming the accepted forms otherwise (ZeroMQ itself
    only says "Invalid argument")."""
    address = str(text).strip()
    if "://" not in address and re.fullmatch(r"[^/\s:]+:\d+|\[[0-9A-Fa-f:.]+\]:\d+", address):
        address = "tcp://" + address
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    valid = (scheme == "ipc" and len(rest) > 0) or (
        scheme == "tcp" and bool(host) and "/" not in rest and port.isdigit() and 0 < int(port) < 65536)
    if not valid:
        raise ValueError(f"not a daemon address: {text!r}; use tcp://HOST:PORT (or HOST:PORT) or ipc://PATH")
    return address


def default_endpoint() -> str:
    """Client-facing endpoint: $SEMANTIC_MATTE_ENDPOINT, else ipc://<runtime_dir>/broker.sock (tcp on Windows)."""
    import os

    explicit = os.environ.get(ENV_ENDPOINT)
    if explicit:
        return explicit
    if os.name == "nt":  # no ipc transport on Windows
        return "tcp://127.0.0.1:5557"
    return "ipc://" + os.path.join(runtime_dir(), "broker.sock")
