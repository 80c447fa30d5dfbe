"""Client library for the semantic-matte daemon (used by the CLI, the batch client and the editor plug-ins).

Stdlib + zmq + msgpack only; numpy is optional and imported lazily (``as_numpy``). No torch.

One ``Client`` owns one DEALER socket and can carry many requests at once (``submit`` / ``wait_any``);
the blocking helpers (``matte``, ``classify``, ``info``, ``health``) are built on the same machinery.
Reliability: every request has a 128-bit id and a deadline. When the line is quiet for a heartbeat the
client asks the broker about the id (STATUS); if the broker does not know it (it restarted) or stays
silent for ``HEARTBEAT_LIVENESS`` heartbeats, the request is re-sent with the same id (the broker
de-duplicates), at most ``retries`` times. A ``Client`` is not thread-safe (one socket, one thread).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from backend import protocol as P

if TYPE_CHECKING:  # annotations only (Python 3.10 has no typing.Self); never imported at run time
    from typing_extensions import Self

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, "float | None"], None]

# A local deadline a little after the server's, so the server's explicit deadline_exceeded arrives first.
_DEADLINE_GRACE = 0.5
_CONTROL_TIMEOUT = 5.0  # info / health / cancel


# --- errors --------------------------------------------------------------------------------------


class ServerError(Exception):
    """An error reply (or a local failure with the same meaning). ``code`` is a protocol error code."""

    code = P.E_INTERNAL

    def __init__(self, message: str, *, code: str | None = None, request_id: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadRequest(ServerError):
    code = P.E_BAD_REQUEST


class TooLarge(ServerError):
    code = P.E_TOO_LARGE


class Busy(ServerError):
    code = P.E_BUSY


class DeadlineExceeded(ServerError):
    code = P.E_DEADLINE


class Cancelled(ServerError):
    code = P.E_CANCELLED


class InternalError(ServerError):
    code = P.E_INTERNAL


class Unavailable(ServerError):
    """The daemon cannot be reached, or has no worker able to serve the request."""

    code = P.E_UNAVAILABLE


_ERRORS = {cls.code: cls for cls in (BadRequest, TooLarge, Busy, DeadlineExceeded, Cancelled, InternalError, Unavailable)}


def error_from_header(header: Mapping[str, Any]) -> ServerError:
    code = header.get("code")
    message = header.get("message")
    cls = _ERRORS.get(code, InternalError)
    retry = header.get("retry_after")
    return cls(str(message) if message is not None else str(code), code=code if code in _ERRORS else P.E_INTERNAL,
               request_id=header.get("id") if isinstance(header.get("id"), str) else None,
               retry_after=float(retry) if isinstance(retry, (int, float)) and not isinstance(retry, bool) else None)


# --- replies -------------------------------------------------------------------------------------


@dataclass
class Reply:
    """A successful reply: arrays (numpy read-only views, or RawArray without numpy) and metadata."""

    id: str
    arrays: dict[str, Any]
    meta: dict
    header: dict = field(repr=False, default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.arrays[name]


@dataclass
class CurveClientKeys:
    """CURVE keys of a client: the server's public key and this client's key pair (Z85 bytes)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_public_file: str, client_secret_file: str) -> CurveClientKeys:
        """Load ``server.key`` and ``<client>.key_secret`` as written by ``semantic-matte keys``."""
        import zmq.auth

        server_public, _ = zmq.auth.load_certificate(server_public_file)
        public, secret = zmq.auth.load_certificate(client_secret_file)
        if not secret:
            raise ValueError(f"{client_secret_file} holds no secret key")
        return cls(server_public, public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


@dataclass
class _Pending:
    id: str
    kind: str
    frames: list
    deadline: float
    progress: ProgressCallback | None
    last_heard: float
    created: float = 0.0
    attempts: int = 0
    sent: bool = False
    probes: int = 0
    next_send: float = 0.0
    outcome: Reply | ServerError | None = None
    last_progress: tuple[str, float | None] | None = None


def _ipc_path(address: str) -> str | None:
    return address[len("ipc://"):] if address.startswith("ipc://") else None


class Client:
    """Connection to a semantic-matte daemon.

    ``address``: ``ipc://PATH`` or ``tcp://HOST:PORT`` (default: the local daemon's ipc socket).
    ``timeout``: default per-request deadline (seconds); ``connect_timeout``: how long a request may wait
    for the connection before ``Unavailable``. ``retries``: how many times one request may be
    re-sent (after silence, a broker restart, or a BUSY reply when ``retry_busy``). ``curve``: keys for a
    CURVE server. ``as_numpy``: return numpy arrays (default: when numpy is importable) or RawArray.
    """

    def __init__(self, address: str | None = None, *, timeout: float = P.DEFAULT_TIMEOUT, retries: int = 3,
                 retry_busy: bool = False, curve: CurveClientKeys | None = None,
                 context: zmq.Context | None = None, as_numpy: bool | None = None,
                 heartbeat: float = P.HEARTBEAT_INTERVAL, connect_timeout: float = 5.0) -> None:
        try:
            self.address = P.parse_endpoint(address) if address else P.default_endpoint()
        except ValueError as exc:
            raise ServerError(str(exc), code=P.E_BAD_REQUEST) from None
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.retry_busy = retry_busy
        self.heartbeat = float(heartbeat)
        self.connect_timeout = float(connect_timeout)
        if as_numpy is None:
            try:
                import numpy  # noqa: F401

                as_numpy = True
            except ImportError:
                as_numpy = False
        self.as_numpy = as_numpy
        self._curve = curve
        self._ctx = context or zmq.Context.instance()
        self._pending: dict[str, _Pending] = {}
        self._done: dict[str, _Pending] = {}
        self._last_heard_server = 0.0
        self._sock: zmq.Socket | None = None
        self._connect()

    # --- connection ------------------------------------------------------------------------------

    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.immediate = 1  # never queue a request on a connection that is not up yet
        sock.sndhwm = 16
        sock.rcvhwm = 64
        sock.reconnect_ivl = 100
        sock.reconnect_ivl_max = 1000
        sock.maxmsgsize = P.MAX_FRAME_BYTES
        if self.address.startswith("tcp://"):
            sock.heartbeat_ivl = int(self.heartbeat * 1000)
            sock.heartbeat_timeout = int(self.heartbeat * 1000 * P.HEARTBEAT_LIVENESS)
            sock.heartbeat_ttl = int(self.heartbeat * 1000 * P.HEARTBEAT_LIVENESS)
        if self._curve is not None:
            self._curve.apply(sock)
        sock.connect(self.address)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, what: str) -> Unavailable:
        hint = ""
        path = _ipc_path(self.address)
        if path is not None and not os.path.exists(path):
            hint = f" (no socket at {path}: is the daemon running? start it with `semantic-matte serve`)"
        return Unavailable(f"{what}: no answer from {self.address}{hint}")

    # --- asynchronous API ------------------------------------------------------------------------

    def submit(self, kind: str, arrays: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
               *, timeout: float | None = None, priority: str = P.INTERACTIVE,
               progress: ProgressCallback | None = None, request_id: str | None = None) -> str:
        """Send a request without waiting; returns its id. Collect it with ``result`` or ``wait_any``."""
        if self._sock is None:
            raise Unavailable("client is closed")
        req_id = request_id or P.new_request_id()
        if req_id in self._pending:
            raise ValueError(f"request {req_id} is already in flight")
        timeout = self.timeout if timeout is None else float(timeout)
        header = P.request_header(kind, req_id, timeout=timeout, priority=priority, options=options)
        try:
            frames = P.encode_message(header, arrays)
        except P.ProtocolError as exc:
            raise _ERRORS.get(exc.code, BadRequest)(exc.message, request_id=req_id) from None
        # Wait for a live connection first, so requests leave in submission order and a missing
        # daemon is reported after connect_timeout instead of at the deadline.
        if not self._sock.poll(int(self.connect_timeout * 1000), zmq.POLLOUT):
            raise self._unreachable(f"could not connect within {self.connect_timeout:g} s")
        now = time.monotonic()
        pend = _Pending(req_id, kind, frames, now + timeout + _DEADLINE_GRACE, progress, last_heard=now, created=now)
        self._pending[req_id] = pend
        self._send(pend, now)
        return req_id

    def cancel(self, request_id: str) -> None:
        """Ask the server to cancel ``request_id``; its waiter then gets ``Cancelled``."""
        pend = self._pending.get(request_id)
        if pend is None or self._sock is None:
            return
        header = P.request_header(P.CANCEL, request_id, timeout=_CONTROL_TIMEOUT)
        try:
            self._sock.send_multipart(P.encode_message(header), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        if not pend.sent:  # never reached the server: cancel locally
            self._finish(pend, Cancelled("cancelled before it was sent", request_id=request_id))

    def result(self, request_id: str, timeout: float | None = None) -> Reply:
        """Wait for one request; returns its Reply or raises its ServerError."""
        end = None if timeout is None else time.monotonic() + timeout
        while request_id not in self._done:
            if request_id not in self._pending:
                raise KeyError(f"unknown request id {request_id}")
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"request {request_id} still running")
            self._pump(remaining)
        outcome = self._done.pop(request_id).outcome
        if isinstance(outcome, ServerError):
            raise outcome
        return outcome  # type: ignore[return-value]

    def wait_any(self, timeout: float | None = None) -> list[tuple[str, Reply | ServerError]]:
        """Wait until at least one request finished (or ``timeout``); returns (id, Reply or error) pairs."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self._done and self._pending:
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            self._pump(remaining)
        done = [(rid, p.outcome) for rid, p in self._done.items()]
        self._done.clear()
        return done  # type: ignore[return-value]

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # --- blocking helpers ------------------------------------------------------------------------

    def request(self, kind: str, arrays: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
                **kw: Any) -> Reply:
        return self.result(self.submit(kind, arrays, options, **kw))

    def info(self, timeout: float = _CONTROL_TIMEOUT) -> dict:
        """Server and protocol version, workers (model, device, precision), limits."""
        return self.request(P.INFO, timeout=timeout).meta

    def health(self, timeout: float = _CONTROL_TIMEOUT) -> dict:
        """``{"live": True, "ready": bool, "workers": n, "queued": n, ...}``."""
        return self.request(P.HEALTH, timeout=timeout).meta

    def matte(self, image: Any, trimap: Any = None, *, mask: Any = None, band: int | None = None,
              outputs: tuple[str, ...] = (P.OUT_ALPHA,), classes: list[str] | None = None,
              model: str | None = None, tile: int | None = None, alpha_dtype: str = "f4",
              refine: str | None = None, trimap_mode: str | None = None, timeout: float | None = None,
              priority: str = P.INTERACTIVE, progress: ProgressCallback | None = None) -> Reply:
        """Matte one image. ``image``: H×W×3/4 uint8/uint16/float32; ``trimap`` H×W uint8 (0/128/255), or
        ``mask`` H×W (non-zero = foreground) plus ``band`` (unknown band width in pixels). ``refine``:
        ``"nonlocal"`` / ``"band"`` / ``"off"`` (None = the worker's setting, ``protocol.REFINE_DEFAULT``).
        ``trimap_mode``: ``"tolerant"`` snaps a 127-valued or soft trimap (None: strict, exact 0/128/255).
        Reply arrays: ``alpha`` (H×W), ``foreground`` (H×W×3 float32), ``semantic`` (C×H×W float32);
        ``reply.meta``: model, device, precision, class_shares, timings."""
        arrays = {"image": image}
        if trimap is not None:
            arrays["trimap"] = trimap
        if mask is not None:
            arrays["mask"] = mask
        options = {"outputs": list(outputs), "classes": classes, "model": model, "tile": tile, "band": band,
                   "alpha_dtype": alpha_dtype, "refine": refine}
        if trimap_mode is not None:  # only when asked: a daemon from before the option refuses unknown keys
            options["trimap_mode"] = trimap_mode
        return self.request(P.MATTE, arrays, options, timeout=timeout, priority=priority, progress=progress)

    def classify(self, image: Any, trimap: Any, *, model: str | None = None, timeout: float | None = None,
                 priority: str = P.INTERACTIVE, progress: ProgressCallback | None = None) -> Reply:
        """Semantic trimap (``semantic`` C×H×W) and ``meta["class_shares"]`` only."""
        options = {"outputs": [P.OUT_SEMANTIC], "model": model}
        return self.request(P.CLASSIFY, {"image": image, "trimap": trimap}, options, timeout=timeout,
                            priority=priority, progress=progress)

    # --- machinery -------------------------------------------------------------------------------

    def _send(self, pend: _Pending, now: float) -> None:
        try:
            self._sock.send_multipart(pend.frames, copy=False, flags=zmq.NOBLOCK)  # type: ignore[union-attr]
        except zmq.Again:  # not connected (yet): try again on the next heartbeat
            pend.next_send = now + min(self.heartbeat, 0.1)
            return
        pend.sent = True
        pend.attempts += 1
        pend.probes = 0
        pend.last_heard = now
        pend.next_send = 0.0

    def _probe(self, pend: _Pending, now: float) -> None:
        header = P.request_header(P.STATUS, pend.id, timeout=_CONTROL_TIMEOUT)
        try:
            self._sock.send_multipart(P.encode_message(header), flags=zmq.NOBLOCK)  # type: ignore[union-attr]
        except zmq.Again:
            pass
        pend.probes += 1
        pend.last_heard = now  # next probe one heartbeat later

    def _resend(self, pend: _Pending, now: float, why: str) -> None:
        if pend.attempts > self.retries:
            self._finish(pend, self._unreachable(f"request {pend.id} failed after {pend.attempts} tries ({why})"))
            return
        log.debug("re-sending %s (%s), attempt %d", pend.id, why, pend.attempts + 1)
        self._send(pend, now)

    def _finish(self, pend: _Pending, outcome: Reply | ServerError) -> None:
        pend.outcome = outcome
        pend.frames = []  # release the request buffers
        self._pending.pop(pend.id, None)
        self._done[pend.id] = pend

    def _pump(self, timeout: float | None) -> None:
        """Receive for up to ``timeout`` (capped at a heartbeat), then run timers."""
        wait = self.heartbeat if timeout is None else max(0.0, min(timeout, self.heartbeat))
        if self._pending:
            wait = min(wait, max(0.0, min(p.deadline for p in self._pending.values()) - time.monotonic()))
            waits = [p.next_send for p in self._pending.values() if p.next_send]
            if waits:
                wait = min(wait, max(0.0, min(waits) - time.monotonic()))
        sock = self._sock
        if sock is None:
            raise Unavailable("client is closed")
        if sock.poll(int(wait * 1000) + 1, zmq.POLLIN):
            # drain what is there without blocking
            for _ in range(1000):
                try:
                    frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle(frames)
        self._timers(time.monotonic())

    def _timers(self, now: float) -> None:
        for pend in list(self._pending.values()):
            if now >= pend.deadline:
                msg = "no reply before the deadline" if pend.sent else "could not send before the deadline"
                err = DeadlineExceeded(msg, request_id=pend.id) if pend.sent else self._unreachable(msg)
                self._finish(pend, err)
            elif not pend.sent and now - pend.created >= self.connect_timeout:
                self._finish(pend, self._unreachable(f"could not connect within {self.connect_timeout:g} s"))
            elif pend.next_send:  # scheduled (re)send: not connected yet, or BUSY back-off
                if now >= pend.next_send:
                    if pend.sent:
                        self._resend(pend, now, "retry after busy / reconnect")
                    else:
                        self._send(pend, now)
            elif now - pend.last_heard >= self.heartbeat:
                if pend.probes >= P.HEARTBEAT_LIVENESS:
                    self._resend(pend, now, "server silent")
                else:
                    self._probe(pend, now)

    def _handle(self, frames: list) -> None:
        try:
            header = P.unpack_header(frames[0].buffer, P.REPLY_UNPACK_LIMITS)
        except P.ProtocolError as exc:
            log.warning("dropping malformed reply: %s", exc.message)
            return
        now = time.monotonic()
        self._last_heard_server = now
        pend = self._pending.get(header.get("id"))  # type: ignore[arg-type]
        if pend is None:
            return  # late reply to a finished request (e.g. after a retry): ignore
        pend.last_heard = now
        pend.probes = 0
        kind = header.get("kind")
        if kind == P.PROGRESS:
            stage = header.get("stage")
            done = header.get("done")
            state = (str(stage), float(done) if isinstance(done, (int, float)) else None)
            if pend.progress is not None and state != pend.last_progress:
                pend.last_progress = state
                try:
                    pend.progress(*state)
                except Exception:  # a faulty UI callback must not kill the request
                    log.exception("progress callback failed")
        elif kind == P.UNKNOWN:
            self._resend(pend, now, "server lost the request")
        elif kind == P.ERROR:
            err = error_from_header(header)
            if isinstance(err, Busy) and self.retry_busy and pend.attempts <= self.retries:
                delay = err.retry_after or self.heartbeat
                if now + delay < pend.deadline:
                    pend.next_send = now + delay
                    return
            self._finish(pend, err)
        elif kind == P.RESULT:
            try:
                specs = P.parse_array_specs(header.get("arrays"))
                arrays = P.decode_arrays(specs, frames[1:], use_numpy=self.as_numpy)
            except P.ProtocolError as exc:
                self._finish(pend, InternalError(f"malformed result: {exc.message}", request_id=pend.id))
                return
            meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
            self._finish(pend, Reply(pend.id, arrays, meta, header))


def matte_via_server(address: str | None, image: Any, trimap: Any = None, *, mask: Any = None,
                     band: int | None = None, classes: list[str] | None = None, want_foreground: bool = False,
                     want_semantic: bool = False, tile: int | None = None, model: str | None = None,
                     refine: str | None = None, trimap_mode: str | None = None, timeout: float = P.DEFAULT_TIMEOUT,
                     progress: ProgressCallback | None = None, curve: CurveClientKeys | None = None) -> dict[str, Any]:
    """One matte through the daemon, shaped like ``MattingPredictor.predict``'s result.

    Returns ``{"alpha": H×W float32, "foreground": H×W×3 float32 | None, "semantic": C×H×W float32 | None,
    "class_shares": dict | None, "meta": dict}`` (arrays are read-only numpy views). Raises ServerError
    subclasses (``Unavailable`` when the daemon cannot be reached).
    """
    outputs = [P.OUT_ALPHA] + ([P.OUT_FOREGROUND] if want_foreground else []) + ([P.OUT_SEMANTIC] if want_semantic else [])
    with Client(address, timeout=timeout, curve=curve, as_numpy=True) as client:
        reply = client.matte(image, trimap, mask=mask, band=band, outputs=tuple(outputs), classes=classes,
                             model=model, tile=tile, refine=refine, trimap_mode=trimap_mode, progress=progress)
    return {
        "alpha": reply.arrays.get(P.OUT_ALPHA),
        "foreground": reply.arrays.get(P.OUT_FOREGROUND),
        "semantic": reply.arrays.get(P.OUT_SEMANTIC),
        "class_shares": reply.meta.get("class_shares"),
        "meta": reply.meta,
    }
