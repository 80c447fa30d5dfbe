"""Request life cycle shared by the Krita and GIMP plug-ins: connection state, one matte job, error text.

Everything here blocks (it runs in Krita's worker thread or in GIMP's plug-in process) and talks to the
daemon only through ``backend.client`` — the one implementation of the wire protocol.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend import protocol as P
from backend.classes import SIMD_CLASSES

from .pixels import F32, U8, U16, alpha_to_u8

ProgressFn = Callable[[str, "float | None"], None]

START_HINT = "Start it with: semantic-matte serve   (or: systemctl --user start semantic-matte)"


class ConnectionState(enum.Enum):
    UNKNOWN = "unknown"
    CONNECTING = "connecting"  # probing right now
    STARTING = "starting"  # daemon answers but no worker is ready yet (model loading)
    CONNECTED = "connected"
    NOT_RUNNING = "not running"
    ERROR = "error"


class JobState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobCancelled(Exception):
    """The user cancelled the job."""


@dataclass
class ServerStatus:
    state: ConnectionState
    message: str = ""
    classes: tuple[str, ...] = SIMD_CLASSES
    model: str = ""
    info: dict = field(default_factory=dict)

    @property
    def line(self) -> str:
        """One line for the UI: state, then what to do about it."""
        if self.state is ConnectionState.CONNECTED:
            return f"Connected: {self.model or 'daemon'}"
        if self.state is ConnectionState.STARTING:
            return "Daemon starting (loading model)…"
        if self.state is ConnectionState.NOT_RUNNING:
            return "Daemon not running. " + START_HINT
        if self.state is ConnectionState.CONNECTING:
            return "Connecting…"
        return f"Error: {self.message}" if self.message else self.state.value


@dataclass
class MatteInput:
    width: int
    height: int
    image: bytes  # RGB, C order
    image_dtype: str  # |u1, <u2 or <f4
    trimap: bytes  # one byte per pixel, TRIMAP_BG/UNKNOWN/FG
    class_override: str = ""
    want_foreground: bool = False
    want_semantic: bool = False
    refine: str = P.REFINE_DEFAULT  # the daemon's alpha refinement (Settings.refine_mode)


@dataclass
class MatteOutput:
    alpha: bytes  # one byte per pixel
    foreground: bytes | None = None  # H×W×3 in ``foreground_dtype``
    foreground_dtype: str = F32
    semantic: bytes | None = None  # C×H×W float32
    semantic_shape: tuple[int, ...] = ()
    class_shares: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    seconds: float = 0.0


def _client(server: str, timeout: float, connect_timeout: float):
    from backend.client import Client  # imported late: needs zmq, which the host may lack

    # retries=0: an editor user wants a quick, clear failure rather than silent re-sends;
    # connect_timeout: "daemon not running" is reported after seconds, not at the request deadline.
    return Client(server, timeout=timeout, retries=0, as_numpy=False, connect_timeout=connect_timeout)


def _classes_from_info(info: dict) -> tuple[str, ...]:
    """Class names advertised by the server (custom models), else the 20 SIMD classes."""
    candidates: list[Any] = [info.get("classes")]
    for w in info.get("workers") or []:
        if isinstance(w, dict):
            candidates.append(w.get("classes"))
    model = info.get("model")
    if isinstance(model, dict):
        candidates.append(model.get("classes"))
    for c in candidates:
        if isinstance(c, (list, tuple)) and c and all(isinstance(x, str) for x in c):
            return tuple(c)
    return SIMD_CLASSES


def _model_from_info(info: dict) -> str:
    for w in info.get("workers") or []:
        if isinstance(w, dict) and w.get("model"):
            return f"{w.get('model')} on {w.get('device', '?')}"
    m = info.get("model")
    return str(m.get("name") if isinstance(m, dict) else m or "")


def probe(server: str, timeout: float = 3.0) -> ServerStatus:
    """Ask the daemon for health + info; never raises."""
    try:
        from backend import client as C
    except ImportError as exc:  # pyzmq / msgpack missing in the host Python
        return ServerStatus(
            ConnectionState.ERROR, f"cannot load the client library ({exc}); re-run install_plugins"
        )
    try:
        with _client(server, timeout, timeout) as cl:
            health = cl.health(timeout=timeout)
            info = cl.info(timeout=timeout)
    except (C.Unavailable, C.DeadlineExceeded):
        return ServerStatus(ConnectionState.NOT_RUNNING, f"no answer from {server}")
    except C.ServerError as exc:
        return ServerStatus(ConnectionState.ERROR, str(exc))
    except Exception as exc:  # noqa: BLE001 - e.g. a malformed address: zmq.ZMQError("Invalid argument")
        return ServerStatus(ConnectionState.ERROR, f"{server}: {exc}")
    state = ConnectionState.CONNECTED if health.get("ready", True) else ConnectionState.STARTING
    return ServerStatus(state, "", _classes_from_info(info), _model_from_info(info), info)


def run_matte(
    server: str,
    job: MatteInput,
    *,
    timeout: float,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    connect_timeout: float = 3.0,
    poll_s: float = 0.1,
) -> MatteOutput:
    """Send one matte request and wait for it, honouring ``cancel``. Raises client errors / JobCancelled."""
    from backend import client as C

    t0 = time.monotonic()
    outputs = [P.OUT_ALPHA]
    if job.want_foreground:
        outputs.append(P.OUT_FOREGROUND)
    if job.want_semantic:
        outputs.append(P.OUT_SEMANTIC)
    image = P.RawArray(job.image, job.image_dtype, (job.height, job.width, 3))
    trimap = P.RawArray(job.trimap, "|u1", (job.height, job.width))
    options = {
        "outputs": outputs,
        "alpha_dtype": "u1",
        "classes": [job.class_override] if job.class_override else None,
        "refine": job.refine,
    }
    if progress:
        progress("sending", 0.0)
    with _client(server, timeout, min(connect_timeout, timeout)) as cl:
        rid = cl.submit(
            P.MATTE, {"image": image, "trimap": trimap}, options, timeout=timeout, progress=progress
        )
        cancel_sent = 0.0
        while True:
            if cancel is not None and cancel.is_set() and not cancel_sent:
                cl.cancel(rid)  # the client is single-threaded: cancel from the thread that owns it
                cancel_sent = time.monotonic()
            try:
                reply = cl.result(rid, timeout=poll_s)
                break
            except TimeoutError:
                # why: a dead daemon never confirms the cancel; the user should not wait for the deadline
                if cancel_sent and time.monotonic() - cancel_sent > 1.0:
                    raise JobCancelled("cancelled") from None
                continue
            except C.Cancelled:
                raise JobCancelled("cancelled") from None
    if cancel_sent:
        raise JobCancelled("cancelled")
    a = reply.arrays[P.OUT_ALPHA]
    alpha = alpha_to_u8(bytes(a.data), a.dtype)
    out = MatteOutput(alpha=alpha, meta=dict(reply.meta), seconds=time.monotonic() - t0)
    fg = reply.arrays.get(P.OUT_FOREGROUND)
    if fg is not None:
        out.foreground, out.foreground_dtype = bytes(fg.data), fg.dtype
    sem = reply.arrays.get(P.OUT_SEMANTIC)
    if sem is not None:
        out.semantic, out.semantic_shape = bytes(sem.data), tuple(sem.shape)
    shares = reply.meta.get("class_shares")
    if isinstance(shares, dict):
        out.class_shares = {str(k): float(v) for k, v in shares.items() if isinstance(v, (int, float))}
    return out


def describe_error(exc: BaseException, server: str = "") -> str:
    """One readable line for a failed job (the UI shows it; details go to the log)."""
    if isinstance(exc, JobCancelled):
        return "Cancelled."
    try:
        from backend import client as C
    except ImportError:
        C = None  # type: ignore[assignment]
    if C is not None:
        if isinstance(exc, C.Unavailable):
            return f"Daemon not reachable at {server or 'its address'}. {START_HINT}"
        if isinstance(exc, C.DeadlineExceeded):
            return "The daemon took too long (timeout). Try a smaller image or a longer timeout."
        if isinstance(exc, C.Busy):
            return "The daemon is busy with other requests; try again in a moment."
        if isinstance(exc, C.TooLarge):
            return f"Image too large for the daemon: {exc.message}"
        if isinstance(exc, C.ServerError):
            return f"Daemon error ({exc.code}): {exc.message}"
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def format_shares(shares: dict, top: int = 3) -> str:
    """'hair_easy 62%, fur 21%, defocus 9%' for the semantic preview line."""
    items = sorted(shares.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k} {v * 100:.0f}%" for k, v in items)


__all__ = [
    "F32",
    "START_HINT",
    "U8",
    "U16",
    "ConnectionState",
    "JobCancelled",
    "JobState",
    "MatteInput",
    "MatteOutput",
    "ServerStatus",
    "describe_error",
    "format_shares",
    "probe",
    "run_matte",
]
