"""Worker process: connects to the broker's back end, announces its model, runs jobs.

The socket belongs to the main thread (heartbeats, cancel, reconnects never wait for inference); jobs
run on an executor thread that wakes the main thread through an inproc pair. The matting code is a
plain callable ``handler(job) -> (arrays, meta)`` and never sees ZeroMQ: ``PredictorHandler`` wraps a
``MattingPredictor``; tests inject trivial handlers with ``--handler module:attribute``.

Batching: a worker with ``max_batch`` > 1 announces ``2 × max_batch`` slots, so the broker keeps a
second batch queued here while one runs; the executor then runs every held job with the same
``handler.batch_key`` together through ``handler.run_batch`` (one forward pass for several small
images: a GPU is far from full on one). With ``max_batch`` = 1 jobs run strictly one at a time.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import importlib
import logging
import os
import queue
import signal
import socket as _socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from backend import protocol as P

log = logging.getLogger(__name__)

RECONNECT_MIN = 0.1
RECONNECT_MAX = 2.0
WATCHDOG_GRACE = 10.0  # a job this far past its deadline means a hung handler: recycle the process
BIG_JOB_PIXELS = 4 * 1024 * 1024  # free GPU caches after jobs this large
GPU_MAX_BATCH = 8  # default batch of small same-size jobs on a GPU worker
EXIT_RECYCLE = 0
EXIT_HUNG = 3


class JobError(Exception):
    """Raised by handlers for an explicit error reply (``code`` from protocol.ERROR_CODES)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JobCancelled(Exception):
    """Raised inside a handler (from ``Job.progress``/``Job.check``) when the job was cancelled."""


@dataclass
class Job:
    """What a handler gets: validated arrays (read-only numpy views), options and a progress hook."""

    id: str
    kind: str
    arrays: dict[str, Any]
    options: dict
    deadline: float  # time.monotonic()
    started: bool = False  # picked up by the executor (the hang watchdog only looks at these)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _report: Callable[[str, float | None], None] = field(default=lambda s, d: None, repr=False)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled("cancelled")
        if time.monotonic() > self.deadline:
            raise JobError(P.E_DEADLINE, "deadline passed while running")

    def progress(self, stage: str, done: float | None = None) -> None:
        """Report progress; raises JobCancelled / deadline error so handlers stop between stages."""
        self.check()
        self._report(stage, done)


Handler = Callable[[Job], "tuple[dict[str, Any], dict]"]


# --- the real handler ----------------------------------------------------------------------------


def _alpha_wire(alpha: Any, dtype: str) -> Any:
    import numpy as np

    if dtype == "u1":
        return np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)
    if dtype == "u2":
        return np.clip(np.rint(alpha * 65535.0), 0, 65535).astype(np.uint16)
    return np.asarray(alpha, dtype=np.float32)


class PredictorHandler:
    """Runs matte / classify jobs on a ``MattingPredictor``, one at a time or batched."""

    def __init__(self, predictor: Any, batch_max_pixels: int = 1024 * 1024,
                 batch_total_pixels: int = 4 * 1024 * 1024) -> None:
        self.predictor = predictor
        self.batch_max_pixels = batch_max_pixels  # larger images fill the device on their own
        self.batch_total_pixels = batch_total_pixels  # one forward pass at most this big (device memory)

    def info(self) -> dict:
        return dict(self.predictor.info())

    @staticmethod
    def _inputs(job: Job) -> tuple[Any, Any, bool, bool]:
        image = job.arrays["image"]
        if image.shape[2] == 4:
            image = image[..., :3]  # RGBA from editors: the alpha channel is not an input of SIM
        trimap = job.arrays.get("trimap")
        if trimap is None:
            from backend.processing import trimap_from_mask

            trimap = trimap_from_mask(job.arrays["mask"], int(job.options["band"]))
        return (image, trimap, *PredictorHandler._wants(job))

    @staticmethod
    def _wants(job: Job) -> tuple[bool, bool]:
        """(foreground, semantic map) — what the job's kind and ``outputs`` ask the predictor for."""
        outputs = job.options.get("outputs", [P.OUT_ALPHA])
        return job.kind == P.MATTE and P.OUT_FOREGROUND in outputs, job.kind == P.CLASSIFY or P.OUT_SEMANTIC in outputs

    def batch_key(self, job: Job) -> tuple | None:
        """Jobs with equal keys can share one forward pass; None = run alone."""
        h, w = job.arrays["image"].shape[:2]
        if h * w > self.batch_max_pixels or job.options.get("tile"):
            return None
        return (h, w, tuple(job.options.get("classes") or ()), job.options.get("refine"),
                job.options.get("trimap_mode"), *self._wants(job))

    def __call__(self, job: Job) -> tuple[dict[str, Any], dict]:
        return self._run_one(job, self._inputs(job))

    def _run_one(self, job: Job, inputs: tuple[Any, Any, bool, bool]) -> tuple[dict[str, Any], dict]:
        image, trimap, want_fg, want_semantic = inputs

        def progress(done: float, stage: str) -> None:
            job.progress(stage, done)

        job.progress("start", 0.0)
        try:
            res = self.predictor.predict(image, trimap, classes=job.options.get("classes"), want_foreground=want_fg,
                                         want_semantic=want_semantic, tile=job.options.get("tile"),
                                         trimap_mode=job.options.get("trimap_mode"),
                                         refine=job.options.get("refine"), progress=progress)
        except ValueError as exc:  # bad trimap values, unknown class names, ...
            raise JobError(P.E_BAD_REQUEST, str(exc)) from None
        return self._reply(job, res, want_semantic)

    def run_batch(self, jobs: list[Job]) -> list[Any]:
        """Jobs of one ``batch_key`` in one ``predict_batch``: per job (arrays, meta) or the exception that
        ends it. Cancelled or expired jobs drop out first; if the batch as a whole fails (one bad trimap),
        each job runs alone so only the bad one fails."""
        outcomes: dict[int, Any] = {}
        live = []
        for i, job in enumerate(jobs):
            try:
                job.progress("start", 0.0)
                live.append((i, job, self._inputs(job)))
            except Exception as exc:  # noqa: BLE001 — becomes that job's error reply
                outcomes[i] = exc
        h, w = jobs[0].arrays["image"].shape[:2]
        per_pass = max(1, self.batch_total_pixels // (h * w))
        for start in range(0, len(live), per_pass):
            self._run_chunk(live[start:start + per_pass], outcomes)
        return [outcomes[i] for i in range(len(jobs))]

    def _run_chunk(self, live: list, outcomes: dict[int, Any]) -> None:
        """One ``predict_batch`` over (index, job, inputs) triples; on a ValueError each job runs alone."""
        _, first, (_, _, want_fg, want_semantic) = live[0]
        try:
            results = self.predictor.predict_batch([x[2][0] for x in live], [x[2][1] for x in live],
                                                   classes=first.options.get("classes"),
                                                   want_foreground=want_fg, want_semantic=want_semantic,
                                                   trimap_mode=first.options.get("trimap_mode"),
                                                   refine=first.options.get("refine"))
        except ValueError:
            results = None
        for k, (i, job, inputs) in enumerate(live):
            try:
                if results is None:
                    outcomes[i] = self._run_one(job, inputs)
                    continue
                job.progress("done", 1.0)
                outcomes[i] = self._reply(job, results[k], want_semantic)
            except Exception as exc:  # noqa: BLE001
                outcomes[i] = exc

    @staticmethod
    def _reply(job: Job, res: Any, want_semantic: bool) -> tuple[dict[str, Any], dict]:
        outputs = job.options.get("outputs", [P.OUT_ALPHA])
        arrays: dict[str, Any] = {}
        if job.kind == P.MATTE and P.OUT_ALPHA in outputs:
            arrays[P.OUT_ALPHA] = _alpha_wire(res.alpha, job.options.get("alpha_dtype", "f4"))
        if job.kind == P.MATTE and P.OUT_FOREGROUND in outputs and res.foreground is not None:
            arrays[P.OUT_FOREGROUND] = res.foreground
        if want_semantic and res.semantic is not None:
            arrays[P.OUT_SEMANTIC] = res.semantic
        meta: dict[str, Any] = {"timings": {k: round(float(v), 6) for k, v in res.timings.items()},
                                "tiles": int(res.tiles), "batch": int(res.batch)}
        if res.class_shares is not None:
            meta["class_shares"] = {str(k): float(v) for k, v in res.class_shares.items()}
        return arrays, meta


def load_handler(spec: str) -> Any:
    """``module:attribute`` -> the handler object (test and extension hook)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"handler must be 'module:attribute', got {spec!r}")
    return getattr(importlib.import_module(module), attr)


def build_predictor_handler(*, model: str | None = None, classifier: str | None = None,
                            weights: str | None = None, classifier_weights: str | None = None,
                            device: str = "auto", precision: str = P.PRECISION_AUTO,
                            seed: int | None = None) -> PredictorHandler:
    """Load the model once. ``model``/``classifier`` = registry names (random weights, for tests and
    benchmarks, reproducible with ``seed``); otherwise weights files / the default weights."""
    import torch

    from backend.predictor import MattingPredictor

    if model:
        from backend.models.registry import build_model

        if seed is not None:
            torch.manual_seed(seed)
        net = build_model(model)
        cls_net = build_model(classifier) if classifier else None
        predictor = MattingPredictor(net, cls_net, device=device, precision=precision)
    else:
        predictor = MattingPredictor.from_pretrained(weights, classifier_weights, device=device, precision=precision)
    return PredictorHandler(predictor)


# --- process -------------------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _gpu_reserved_mb() -> float:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0.0
    return torch.cuda.memory_reserved() / 2**20


def _free_gpu_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def die_with_parent() -> None:
    """Linux: get SIGTERM when the daemon dies, so kill -9 of the daemon leaves no orphan workers."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class Worker:
    """The worker loop. ``run()`` returns the process exit code."""

    def __init__(self, endpoint: str, handler: Any, *, name: str | None = None, context: zmq.Context | None = None,
                 curve: Any = None, heartbeat: float = P.HEARTBEAT_INTERVAL, liveness: int = P.HEARTBEAT_LIVENESS,
                 max_jobs: int = 0, max_rss_mb: float = 0.0, max_gpu_mb: float = 0.0, parent_pid: int | None = None,
                 max_batch: int = 1) -> None:
        self.endpoint = endpoint
        self.handler = handler
        self.name = name or f"{_socket.gethostname()}:{os.getpid()}"
        self.ctx = context or zmq.Context.instance()
        self.curve = curve
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.max_jobs = max_jobs
        self.max_rss_mb = max_rss_mb
        self.max_gpu_mb = max_gpu_mb
        self.parent_pid = parent_pid
        batching = max_batch > 1 and callable(getattr(handler, "run_batch", None)) and callable(
            getattr(handler, "batch_key", None))
        self.max_batch = max_batch if batching else 1
        self.slots = 2 * self.max_batch if batching else 1  # one batch running, the next one gathering
        self.stop = threading.Event()
        self.jobs_done = 0
        self._sock: zmq.Socket | None = None
        self._outbox: queue.Queue = queue.Queue()
        self._backlog: collections.deque = collections.deque()  # final replies the socket could not take yet
        self._active: dict[str, Job] = {}  # jobs this worker holds (running or waiting for the executor)
        self._need_ready = False
        self._leaving = False
        self._bye_sent = False
        self._wake_addr = f"inproc://worker-wake-{id(self)}"
        self._wake = self.ctx.socket(zmq.PULL)
        self._wake.bind(self._wake_addr)
        self._jobs: queue.Queue = queue.Queue()
        self._executor = threading.Thread(target=self._executor_loop, name="job-executor", daemon=True)
        self._executor.start()
        self._announce = self._describe()

    def _describe(self) -> dict:
        info: dict[str, Any] = {}
        describe = getattr(self.handler, "info", None)
        if callable(describe):
            info.update(describe())
        info.update(name=self.name, pid=os.getpid(), host=_socket.gethostname())
        info.setdefault("model", "custom")
        info.setdefault("version", "0")
        info.setdefault("device", "cpu")
        info.setdefault("precision", "fp32")
        info.update(slots=self.slots, max_batch=self.max_batch)
        # only msgpack-friendly scalars and lists go on the wire
        return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, list)) or v is None}

    # --- socket ----------------------------------------------------------------------------------

    def _connect(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        # Held jobs bound the big messages either way: each sends a result and a few progress messages.
        sock.sndhwm = 4 * self.slots + 16
        sock.rcvhwm = 2 * self.slots + 16
        sock.reconnect_ivl = 100
        sock.reconnect_ivl_max = int(RECONNECT_MAX * 1000)
        sock.maxmsgsize = P.MAX_FRAME_BYTES
        if self.endpoint.startswith("tcp://"):
            sock.heartbeat_ivl = int(self.heartbeat * 1000)
            sock.heartbeat_timeout = int(self.heartbeat * 1000 * self.liveness)
            sock.tcp_keepalive = 1
        if self.curve is not None:
            self.curve.apply(sock)
        sock.connect(self.endpoint)
        self._sock = sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _send(self, header: dict, arrays: dict | None = None) -> bool:
        return self._send_frames(P.encode_message(header, arrays))

    def _send_frames(self, frames: list) -> bool:
        """Send without blocking; False when the pipe is full (HWM) or there is no socket."""
        if self._sock is None:
            return False
        try:
            self._sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _ready(self) -> None:
        self._send({"v": P.PROTOCOL_VERSION, "kind": P.READY, "worker": self._announce})

    # --- main loop -------------------------------------------------------------------------------

    def run(self) -> int:
        self._connect()
        self._ready()
        heard = time.monotonic()
        next_beat = heard + self.heartbeat
        backoff = RECONNECT_MIN
        poller = zmq.Poller()
        poller.register(self._wake, zmq.POLLIN)
        poller.register(self._sock, zmq.POLLIN)
        exit_code = 0
        log.info("worker started", extra={"worker": self.name, "endpoint": self.endpoint, **{
            k: self._announce.get(k) for k in ("model", "device", "precision")}})
        while True:
            if self._sock is not None:  # wake as soon as a backlogged reply can be sent
                poller.register(self._sock, zmq.POLLIN | (zmq.POLLOUT if self._backlog else 0))
            events = dict(poller.poll(int(self.heartbeat * 250)))
            now = time.monotonic()
            if events.get(self._wake):
                while True:
                    try:
                        self._wake.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            self._flush_outbox()
            if self._sock is not None and events.get(self._sock, 0) & zmq.POLLIN:
                for _ in range(64):
                    try:
                        frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    heard = now
                    backoff = RECONNECT_MIN
                    self._on_message(frames)
            if (self._leaving or self.stop.is_set()) and not self._bye_sent:
                # Tell the broker now (no new jobs), finish what is held, then go.
                self._send({"v": P.PROTOCOL_VERSION, "kind": P.BYE})
                self._bye_sent = True
            if not self._active and self._bye_sent:
                break
            hung = [j for j in self._active.values() if j.started and now > j.deadline + WATCHDOG_GRACE]
            if hung:
                log.error("job %s hung past its deadline: recycling this worker", hung[0].id)
                for job in hung:
                    self._send(P.error_header(job.id, P.E_DEADLINE, "worker hung; recycled"))
                self._send({"v": P.PROTOCOL_VERSION, "kind": P.BYE})
                exit_code = EXIT_HUNG
                break
            if self.parent_pid and os.getppid() != self.parent_pid:
                log.warning("daemon is gone: exiting")
                break
            if now - heard > self.heartbeat * self.liveness:
                # Broker silent: reconnect with back-off (Paranoid Pirate); it may have restarted.
                log.warning("broker silent for %.1f s: reconnecting in %.1f s", now - heard, backoff)
                poller.unregister(self._sock)
                self._disconnect()
                if self.stop.wait(backoff):
                    break
                backoff = min(backoff * 2, RECONNECT_MAX)
                self._connect()
                poller.register(self._sock, zmq.POLLIN)
                if not self._active:
                    self._ready()
                else:
                    self._need_ready = True
                heard = time.monotonic()
                next_beat = heard
            if now >= next_beat:
                self._send({"v": P.PROTOCOL_VERSION, "kind": P.HEARTBEAT})
                next_beat = now + self.heartbeat
        self._flush_outbox()
        self._disconnect()
        if exit_code == EXIT_HUNG:
            os._exit(EXIT_HUNG)  # the executor thread is stuck: do not join it
        self._jobs.put(None)
        self._executor.join(timeout=5)
        self._wake.close(linger=0)
        return exit_code

    def _on_message(self, frames: list) -> None:
        try:
            header = P.unpack_header(frames[0].buffer, P.REPLY_UNPACK_LIMITS)
        except P.ProtocolError as exc:
            log.warning("malformed message from broker: %s", exc.message)
            return
        kind = header.get("kind")
        if kind == P.JOB:
            self._on_job(header, frames[1:])
        elif kind == P.CANCEL:
            job = self._active.get(header.get("id"))  # type: ignore[arg-type]
            if job is not None:
                job._cancel.set()
        elif kind == P.REREGISTER:
            if not self._active:
                self._ready()
            else:
                self._need_ready = True
        elif kind == P.SHUTDOWN:
            self.stop.set()

    def _on_job(self, header: dict, frames: list) -> None:
        req_id = header.get("id") if isinstance(header.get("id"), str) else None
        if len(self._active) >= self.slots or self._bye_sent or (req_id is not None and req_id in self._active):
            self._send(P.error_header(req_id, P.E_BUSY, "worker already busy", retry_after=0.1))
            return
        try:
            job_header = dict(header, kind=header.get("job_kind"))
            req = P.parse_request(job_header, frames)
            if req.kind not in P.JOB_KINDS:
                raise P.ProtocolError(P.E_BAD_REQUEST, f"not a job kind: {req.kind!r}")
            arrays = P.decode_arrays(req.specs, frames)
        except P.ProtocolError as exc:
            self._send(P.error_header(req_id, exc.code, exc.message))
            return
        job = Job(req.id, req.kind, arrays, req.options, time.monotonic() + req.timeout)
        job._report = self._reporter(job)
        self._active[job.id] = job
        self._jobs.put(job)

    def _reporter(self, job: Job) -> Callable[[str, float | None], None]:
        def report(stage: str, done: float | None) -> None:
            self._post(P.progress_header(job.id, str(stage), done), None)
        return report

    def _executor_loop(self) -> None:
        """The one thread that runs handlers: one job, or one batch of compatible jobs, at a time."""
        wake = self.ctx.socket(zmq.PUSH)
        wake.linger = 0
        wake.sndhwm = 1000
        wake.connect(self._wake_addr)
        self._wake_push = wake
        pending: collections.deque[Job] = collections.deque()
        closing = False
        while pending or not closing:
            if not pending:
                job = self._jobs.get()
                if job is None:
                    break
                pending.append(job)
            while not closing:  # everything that has arrived meanwhile can join the batch
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    closing = True
                else:
                    pending.append(job)
            self._execute(self._take_batch(pending))
        wake.close(linger=0)

    def _take_batch(self, pending: collections.deque[Job]) -> list[Job]:
        """The oldest held job plus up to ``max_batch - 1`` later ones with the same batch key."""
        head = pending.popleft()
        if self.max_batch <= 1 or not pending:
            return [head]
        try:
            key = self.handler.batch_key(head)
        except Exception:  # noqa: BLE001 — a malformed job runs alone and fails there with its own error
            key = None
        if key is None:
            return [head]
        batch, rest = [head], collections.deque()
        while pending:
            job = pending.popleft()
            try:
                same = len(batch) < self.max_batch and self.handler.batch_key(job) == key
            except Exception:  # noqa: BLE001
                same = False
            (batch if same else rest).append(job)
        pending.extend(rest)
        return batch

    def _post(self, header: dict, arrays: dict | None) -> None:
        """Called from the executor thread: hand a message to the socket thread and wake it."""
        self._outbox.put((header, arrays))
        try:
            self._wake_push.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass  # the main loop is already awake with messages queued

    def _execute(self, jobs: list[Job]) -> None:
        t0 = time.perf_counter()
        for job in jobs:
            job.started = True
        outcomes: list[Any]
        if len(jobs) == 1:
            try:
                job = jobs[0]
                job.check()
                outcomes = [self.handler(job)]
            except Exception as exc:  # noqa: BLE001 — turned into the error reply below
                outcomes = [exc]
        else:
            try:
                outcomes = list(self.handler.run_batch(jobs))
            except Exception as exc:  # noqa: BLE001
                outcomes = [exc] * len(jobs)
        compute = round(time.perf_counter() - t0, 6)
        for job, outcome in zip(jobs, outcomes):
            header, arrays = self._reply(job, outcome, compute)
            # One message carries the final reply and the end of the job, so the main thread can never
            # count this job as held after its reply went out.
            header["__final__"] = True
            self._post(header, arrays if header["kind"] == P.RESULT else None)

    def _reply(self, job: Job, outcome: Any, compute_s: float) -> tuple[dict, dict | None]:
        """Result or error header (and arrays) for one job's outcome: (arrays, meta), arrays, or an exception."""
        if isinstance(outcome, JobCancelled):
            return P.error_header(job.id, P.E_CANCELLED, "cancelled"), None
        if isinstance(outcome, (JobError, P.ProtocolError)):
            return P.error_header(job.id, outcome.code, outcome.message), None
        if isinstance(outcome, MemoryError):
            return P.error_header(job.id, P.E_TOO_LARGE, "out of memory: use tiling or a smaller image"), None
        if isinstance(outcome, BaseException):
            if type(outcome).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
                return P.error_header(job.id, P.E_TOO_LARGE, "GPU out of memory: use tiling"), None
            log.error("job %s failed", job.id, exc_info=outcome)
            return P.error_header(job.id, P.E_INTERNAL, f"{type(outcome).__name__}: {outcome}"[:1000]), None
        arrays, meta = outcome if isinstance(outcome, tuple) else (outcome, {})
        meta = dict(meta or {})
        timings = dict(meta.get("timings") or {})
        timings["compute_s"] = compute_s
        meta["timings"] = timings
        for key in ("model", "version", "device", "precision"):
            meta.setdefault(key, self._announce.get(key))
        meta["worker"] = self.name
        return P.result_header(job.id, meta), arrays

    def _flush_outbox(self) -> None:
        """Progress may be dropped when the pipe is full; final replies never are: they wait in the
        backlog (in order) and go out on a later loop turn, and only then is their job finished."""
        while self._backlog:
            job_id, frames = self._backlog[0]
            if not self._send_frames(frames):
                return
            self._backlog.popleft()
            self._finish_job(job_id)
        while True:
            try:
                header, arrays = self._outbox.get_nowait()
            except queue.Empty:
                return
            final = header.pop("__final__", False)
            try:
                frames = P.encode_message(header, arrays)
            except P.ProtocolError as exc:  # handler returned something unsendable
                frames = P.encode_message(
                    P.error_header(header.get("id"), P.E_INTERNAL, f"bad handler output: {exc.message}"))
            if not final:
                self._send_frames(frames)  # progress: best effort
            elif not self._backlog and self._send_frames(frames):
                self._finish_job(header.get("id"))
            else:
                self._backlog.append((header.get("id"), frames))

    def _finish_job(self, job_id: str | None) -> None:
        job = self._active.pop(job_id, None) if job_id is not None else None
        self.jobs_done += 1
        if job is not None and job.arrays.get("image") is not None:
            shape = job.arrays["image"].shape
            if shape[0] * shape[1] >= BIG_JOB_PIXELS:
                _free_gpu_cache()
        if self._need_ready and not self._active:
            self._need_ready = False
            self._ready()
        reason = None
        if self.max_jobs and self.jobs_done >= self.max_jobs:
            reason = f"{self.jobs_done} jobs"
        elif self.max_rss_mb and rss_mb() > self.max_rss_mb:
            reason = f"RSS {rss_mb():.0f} MiB > {self.max_rss_mb:.0f}"
        elif self.max_gpu_mb and _gpu_reserved_mb() > self.max_gpu_mb:
            reason = f"GPU memory {_gpu_reserved_mb():.0f} MiB > {self.max_gpu_mb:.0f}"
        if reason:
            log.info("recycling worker after %s", reason)
            self._leaving = True


# --- command line (the daemon starts workers with this; remote GPU hosts run it by hand) ---------


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    from backend.cli import endpoint_argument

    parser.add_argument("--connect", required=True, type=endpoint_argument, help="broker back-end endpoint (tcp://HOST:PORT or ipc://PATH)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--precision", default=P.PRECISION_AUTO, choices=P.PRECISION_MODES)
    parser.add_argument("--weights", help="matting weights file (default: the installed default weights)")
    parser.add_argument("--classifier-weights", help="classifier weights file")
    parser.add_argument("--model", help="registry model name with random weights (tests/benchmarks), e.g. sim_tiny")
    parser.add_argument("--classifier", help="registry classifier name with --model, e.g. classifier_tiny")
    parser.add_argument("--seed", type=int, default=None, help="torch seed for --model random weights")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--handler", help="module:attribute of a custom job handler (tests)")
    parser.add_argument("--name", help="worker name shown by `semantic-matte status`")
    parser.add_argument("--max-batch", type=int, default=None,
                        help=f"small same-size jobs run together (default: {GPU_MAX_BATCH} on GPU, 1 on CPU)")
    parser.add_argument("--max-jobs", type=int, default=0, help="recycle the process after N jobs (0 = never)")
    parser.add_argument("--max-rss-mb", type=float, default=0.0, help="recycle above this RSS")
    parser.add_argument("--max-gpu-mb", type=float, default=0.0, help="recycle above this reserved GPU memory")
    parser.add_argument("--curve-server-key", help="broker public key file (CURVE, remote workers)")
    parser.add_argument("--curve-secret", help="this worker's secret key file (CURVE)")
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)


def worker_main(args: argparse.Namespace) -> int:
    from backend.client import CurveClientKeys

    if args.handler:
        handler = load_handler(args.handler)
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)  # several CPU workers must not oversubscribe the cores
        handler = build_predictor_handler(model=args.model, classifier=args.classifier, weights=args.weights,
                                          classifier_weights=args.classifier_weights, device=args.device,
                                          precision=args.precision, seed=args.seed)
    curve = None
    if args.curve_server_key or args.curve_secret:
        if not (args.curve_server_key and args.curve_secret):
            raise SystemExit("--curve-server-key and --curve-secret go together")
        curve = CurveClientKeys.from_files(args.curve_server_key, args.curve_secret)
    if args.parent_pid:
        die_with_parent()
    max_batch = args.max_batch
    if max_batch is None:  # batching pays where one small image leaves the device idle: GPUs, not CPUs
        describe = getattr(handler, "info", None)
        device = str(describe().get("device", "cpu")) if callable(describe) else "cpu"
        max_batch = GPU_MAX_BATCH if device.startswith("cuda") else 1
    worker = Worker(args.connect, handler, name=args.name, curve=curve, max_jobs=args.max_jobs,
                    max_rss_mb=args.max_rss_mb, max_gpu_mb=args.max_gpu_mb, parent_pid=args.parent_pid,
                    max_batch=max(1, max_batch))
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    return worker.run()


def main(argv: list[str] | None = None) -> int:
    from backend.cli import CommandParser

    parser = CommandParser(prog="python -m backend.worker", description="semantic-matte worker process")
    add_worker_arguments(parser)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    from backend.daemon import configure_logging

    configure_logging(args.log_level, os.environ.get("SEMANTIC_MATTE_LOG_FORMAT", "text"))
    return worker_main(args)


if __name__ == "__main__":
    sys.exit(main())
