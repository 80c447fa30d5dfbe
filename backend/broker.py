"""Majordomo-style broker: clients on a front-end ROUTER, workers on a back-end ROUTER, LRU ready queue.

One thread, one poll loop. Requests are validated here (cheaply, before they are queued), kept in two
bounded FIFO queues (interactive before batch), dispatched to the least-recently-used idle worker and
answered by that worker through the broker. A worker announces how many jobs it holds at once
(``slots``: 1 for a plain worker; more for a GPU worker that batches small queued requests), and the
broker keeps up to that many on it. Heartbeats both ways, deadlines, de-duplication by id,
re-queue-once on worker death, cancellation and draining live here; pixels are never copied (frames
are forwarded as received).
"""

from __future__ import annotations

import collections
import logging
import os
import socket as _socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from backend import protocol as P

log = logging.getLogger(__name__)

SERVER_VERSION = "0.1.0"
MAX_SLOTS = 64  # cap on a worker's announced capacity
MAX_ATTEMPTS = 2  # a request on a worker that dies is re-queued once, then failed
CACHE_TTL = 120.0  # seconds a finished reply is kept for retries of the same id
CACHE_BYTES = 64 * 1024 * 1024
TICK = 0.02  # poll granularity: bounds how late deadlines and heartbeats are noticed


@dataclass
class _Job:
    req: P.Request
    header: dict
    frames: list  # array frames (zmq.Frame), forwarded without copies
    client: bytes  # routing id of the newest connection asking for it
    received: float
    deadline: float
    attempts: int = 0
    worker: bytes | None = None
    started: float = 0.0
    answered: bool = False  # the client already got a final answer (cancel / deadline)

    @property
    def nbytes(self) -> int:
        return sum(len(f.buffer) if hasattr(f, "buffer") else len(f) for f in self.frames)


@dataclass
class _Worker:
    identity: bytes
    info: dict
    expiry: float
    jobs: dict[str, _Job] = field(default_factory=dict)  # held by the worker (running or in its queue)
    leaving: bool = False
    pid: int | None = None
    jobs_done: int = 0

    @property
    def slots(self) -> int:
        slots = self.info.get("slots", 1)
        return max(1, min(MAX_SLOTS, slots)) if isinstance(slots, int) else 1

    @property
    def has_room(self) -> bool:
        return not self.leaving and len(self.jobs) < self.slots

    @property
    def model(self) -> str | None:
        model = self.info.get("model")
        return model if isinstance(model, str) else None


@dataclass
class BrokerConfig:
    queue_size: dict = field(default_factory=lambda: {P.INTERACTIVE: 32, P.BATCH: 128})
    max_pixels: int = P.MAX_PIXELS
    max_frame_bytes: int = P.MAX_FRAME_BYTES  # ZMQ_MAXMSGSIZE: a bigger frame disconnects the peer
    heartbeat: float = P.HEARTBEAT_INTERVAL
    liveness: int = P.HEARTBEAT_LIVENESS
    cache_ttl: float = CACHE_TTL
    cache_bytes: int = CACHE_BYTES
    drain_timeout: float = 30.0


def _tune_router(sock: zmq.Socket, maxmsgsize: int, hwm: int = 16) -> None:
    sock.linger = 1000  # let final replies flush on shutdown, never hang forever
    sock.router_mandatory = 1  # unroutable replies raise instead of vanishing silently
    sock.sndhwm = hwm  # HWM counts messages, not bytes: keep it small for image-sized messages
    sock.rcvhwm = hwm
    sock.maxmsgsize = maxmsgsize
    sock.handshake_ivl = 5000
    sock.heartbeat_ivl = 1000
    sock.heartbeat_timeout = 3000
    sock.heartbeat_ttl = 3000


class Broker:
    """The daemon's broker. ``bind()``, then ``run(until)`` (or ``poll_once`` from your own loop)."""

    def __init__(self, front: str, back: str, *, config: BrokerConfig | None = None,
                 context: zmq.Context | None = None, front_security: Any = None,
                 back_security: Any = None) -> None:
        self.front_endpoint = front
        self.back_endpoint = back
        self.config = config or BrokerConfig()
        self.ctx = context or zmq.Context.instance()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.back = self.ctx.socket(zmq.ROUTER)
        _tune_router(self.front, self.config.max_frame_bytes)
        # Per worker pipe: up to MAX_SLOTS jobs in one burst (their number, not the HWM, bounds the bytes)
        # plus heartbeats and cancels; a job send that hit the HWM would count the worker as gone.
        _tune_router(self.back, self.config.max_frame_bytes, hwm=2 * MAX_SLOTS + 16)
        if front_security is not None:
            front_security.apply(self.front)
        if back_security is not None:
            back_security.apply(self.back)
        self.poller = zmq.Poller()
        self.queues: dict[str, collections.deque[_Job]] = {p: collections.deque() for p in P.PRIORITIES}
        self.jobs: dict[str, _Job] = {}  # queued or running, by id
        self.workers: dict[bytes, _Worker] = {}
        self.idle: collections.deque[bytes] = collections.deque()  # workers with room; LRU: left = longest waiting
        self.cache: collections.OrderedDict[str, tuple[float, int, list]] = collections.OrderedDict()
        self.cache_bytes = 0
        self.stats: collections.Counter[str] = collections.Counter()
        self.draining = False
        self.drain_started = 0.0
        self.started = time.monotonic()
        self._job_time = 0.5  # EWMA of compute seconds, for retry_after estimates
        self._next_heartbeat = 0.0

    # --- lifecycle -------------------------------------------------------------------------------

    def bind(self) -> None:
        self.front.bind(self.front_endpoint)
        self.back.bind(self.back_endpoint)
        # tcp://...:0 picks a free port: remember the real endpoints
        self.front_endpoint = self.front.last_endpoint.decode()
        self.back_endpoint = self.back.last_endpoint.decode()
        self.poller.register(self.front, zmq.POLLIN)
        self.poller.register(self.back, zmq.POLLIN)
        log.info("broker listening", extra={"front": self.front_endpoint, "back": self.back_endpoint})

    def close(self) -> None:
        for sock in (self.front, self.back):
            sock.close(linger=200)

    def run(self, until: Callable[[], bool] | None = None, on_tick: Callable[[], None] | None = None) -> None:
        """Serve until ``until()`` is true or a drain completes."""
        while not (until and until()):
            self.poll_once(TICK)
            if on_tick is not None:
                on_tick()
            if self.draining and self.drained():
                break

    def begin_drain(self) -> None:
        """Stop accepting work; queued and running jobs still finish (up to ``drain_timeout``)."""
        if not self.draining:
            log.info("draining", extra={"queued": self.queued(), "running": self.running()})
            self.draining = True
            self.drain_started = time.monotonic()

    def drained(self) -> bool:
        if not self.jobs:
            return True
        if time.monotonic() - self.drain_started > self.config.drain_timeout:
            for job in list(self.jobs.values()):
                self._fail(job, P.E_UNAVAILABLE, "server shut down before the request finished", cache=False)
            return True
        return False

    def shutdown_workers(self) -> None:
        for ident in list(self.workers):
            self._send_worker(ident, {"v": P.PROTOCOL_VERSION, "kind": P.SHUTDOWN})

    # --- loop ------------------------------------------------------------------------------------

    def poll_once(self, timeout: float) -> None:
        events = dict(self.poller.poll(int(timeout * 1000)))
        # Workers first: a finishing job frees a worker for the next queued request.
        if events.get(self.back):
            for _ in range(256):
                try:
                    frames = self.back.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_worker(frames)
        if events.get(self.front):
            for _ in range(256):
                try:
                    frames = self.front.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_client(frames)
        now = time.monotonic()
        self._expire(now)
        self._dispatch(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat
            for ident in list(self.workers):
                self._send_worker(ident, {"v": P.PROTOCOL_VERSION, "kind": P.HEARTBEAT})

    # --- sending ---------------------------------------------------------------------------------

    def _send(self, sock: zmq.Socket, ident: bytes, frames: list) -> bool:
        try:
            sock.send_multipart([ident, *frames], copy=False, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:  # peer not reading (HWM reached): drop rather than block everyone
            self.stats["send_dropped_hwm"] += 1
        except zmq.ZMQError as exc:  # EHOSTUNREACH: peer gone
            self.stats["send_dropped_unroutable"] += 1
            log.debug("cannot send to %r: %s", ident, exc)
        return False

    def _reply(self, ident: bytes, header: dict, arrays: list | None = None) -> bool:
        return self._send(self.front, ident, [P.pack_header(header), *(arrays or [])])

    def _send_worker(self, ident: bytes, header: dict, frames: list | None = None) -> bool:
        return self._send(self.back, ident, [P.pack_header(header), *(frames or [])])

    def _error(self, ident: bytes, req_id: str | None, code: str, message: str, retry_after: float | None = None) -> None:
        self.stats[f"error_{code}"] += 1
        self._reply(ident, P.error_header(req_id, code, message, retry_after=retry_after))

    # --- clients ---------------------------------------------------------------------------------

    def _on_client(self, frames: list) -> None:
        self.stats["client_messages"] += 1
        ident = frames[0].bytes
        body = frames[1:]
        if not body or len(body) > P.MAX_FRAMES:
            self._error(ident, None, P.E_BAD_REQUEST, f"a message has 1..{P.MAX_FRAMES} frames, got {len(body)}")
            return
        req_id: str | None = None
        try:
            header = P.unpack_header(body[0].buffer)
            raw_id = header.get("id")
            req_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= P.MAX_ID_LEN else None
            req = P.parse_request(header, body[1:], max_pixels=self.config.max_pixels,
                                  max_frame_bytes=self.config.max_frame_bytes)
        except P.ProtocolError as exc:
            self._error(ident, req_id, exc.code, exc.message)
            return
        except Exception:  # a validator bug must never take the broker down
            log.exception("unexpected error validating a request")
            self._error(ident, req_id, P.E_INTERNAL, "could not validate the request")
            return
        kind = req.kind
        if kind == P.INFO:
            self._reply(ident, P.result_header(req.id, self.info()))
        elif kind == P.HEALTH:
            self._reply(ident, P.result_header(req.id, self.health()))
        elif kind == P.STATUS:
            self._on_status(ident, req.id)
        elif kind == P.CANCEL:
            self._on_cancel(ident, req.id)
        else:
            self._on_job(ident, req, header, body[1:])

    def _on_status(self, ident: bytes, req_id: str) -> None:
        job = self.jobs.get(req_id)
        if job is not None:
            job.client = ident  # the client may have reconnected with a new routing id
            self._reply(ident, P.progress_header(req_id, "running" if job.worker else "queued"))
        elif not self._resend_cached(ident, req_id):
            self._reply(ident, {"v": P.PROTOCOL_VERSION, "kind": P.UNKNOWN, "id": req_id})

    def _on_cancel(self, ident: bytes, req_id: str) -> None:
        job = self.jobs.get(req_id)
        if job is None:
            return  # finished or unknown: nothing to do, the client stops waiting on its own
        self.stats["cancelled"] += 1
        job.client = ident
        if job.worker is None:
            self._unqueue(job)
            self._fail(job, P.E_CANCELLED, "cancelled by the client")
        else:
            self._send_worker(job.worker, {"v": P.PROTOCOL_VERSION, "kind": P.CANCEL, "id": req_id})
            self._fail(job, P.E_CANCELLED, "cancelled by the client", keep_running=True)

    def _on_job(self, ident: bytes, req: P.Request, header: dict, frames: list) -> None:
        existing = self.jobs.get(req.id)
        if existing is not None:  # retry of a request we still hold: do not run it twice
            self.stats["duplicates"] += 1
            existing.client = ident
            self._reply(ident, P.progress_header(req.id, "running" if existing.worker else "queued"))
            return
        if self._resend_cached(ident, req.id):
            self.stats["duplicates"] += 1
            return
        if self.draining:
            self._error(ident, req.id, P.E_UNAVAILABLE, "server is shutting down")
            return
        model = req.options.get("model")
        if model and self.workers and not any(w.model == model for w in self.workers.values()):
            self._error(ident, req.id, P.E_UNAVAILABLE, f"no worker serves model {model!r}")
            return
        queue = self.queues[req.priority]
        if len(queue) >= self.config.queue_size[req.priority]:
            self._error(ident, req.id, P.E_BUSY, f"{req.priority} queue is full ({len(queue)} waiting)",
                        retry_after=self._retry_after(len(queue)))
            return
        now = time.monotonic()
        job = _Job(req, header, frames, ident, now, now + req.timeout)
        self.jobs[req.id] = job
        queue.append(job)
        self.stats["accepted"] += 1
        self._reply(ident, P.progress_header(req.id, "queued"))

    def _retry_after(self, queued: int) -> float:
        workers = max(1, len(self.workers))
        return max(0.05, min(30.0, self._job_time * (queued + 1) / workers))

    # --- workers ---------------------------------------------------------------------------------

    def _on_worker(self, frames: list) -> None:
        ident = frames[0].bytes
        body = frames[1:]
        if not body or len(body) > P.MAX_FRAMES:
            self.stats["worker_bad_messages"] += 1
            return
        try:
            header = P.unpack_header(body[0].buffer, P.REPLY_UNPACK_LIMITS)
        except P.ProtocolError as exc:
            self.stats["worker_bad_messages"] += 1
            log.warning("malformed worker message: %s", exc.message)
            return
        kind = header.get("kind")
        now = time.monotonic()
        worker = self.workers.get(ident)
        if kind == P.READY:
            self._register(ident, header, now)
            return
        if worker is None:
            # Unknown worker (we restarted, or it was expired): ask it to introduce itself again.
            if kind != P.BYE:
                self._send_worker(ident, {"v": P.PROTOCOL_VERSION, "kind": P.REREGISTER})
            return
        worker.expiry = now + self.config.heartbeat * self.config.liveness
        if kind == P.HEARTBEAT:
            return
        if kind == P.BYE:
            worker.leaving = True
            self._not_idle(ident)
            if not worker.jobs:
                self._remove_worker(ident, "left")
            return
        req_id = header.get("id")
        job = worker.jobs.get(req_id) if isinstance(req_id, str) else None
        if job is None:
            return  # late message for a job the broker already re-assigned or failed
        if kind == P.PROGRESS:
            if not job.answered:
                self._reply(job.client, header)
        elif kind in (P.RESULT, P.ERROR):
            self._job_done(worker, job, header, body, now)

    def _register(self, ident: bytes, header: dict, now: float) -> None:
        info = header.get("worker") if isinstance(header.get("worker"), dict) else {}
        pid = info.get("pid")
        worker = self.workers.get(ident)
        if worker is None:
            worker = _Worker(ident, info, now, pid=pid if isinstance(pid, int) else None)
            self.workers[ident] = worker
            log.info("worker ready", extra={"worker": info.get("name"), "model": info.get("model"),
                                            "device": info.get("device"), "precision": info.get("precision")})
        worker.info = info
        worker.expiry = now + self.config.heartbeat * self.config.liveness
        if worker.jobs:  # it re-announced itself: whatever it held is lost
            self._requeue_all(worker, "worker re-registered")
        if ident not in self.idle and worker.has_room:
            self.idle.append(ident)

    def _job_done(self, worker: _Worker, job: _Job, header: dict, body: list, now: float) -> None:
        worker.jobs.pop(job.req.id, None)
        worker.jobs_done += 1
        compute = now - job.started
        self._job_time = 0.8 * self._job_time + 0.2 * compute
        self.jobs.pop(job.req.id, None)
        if header.get("kind") == P.RESULT:
            meta = header.get("meta")
            if isinstance(meta, dict):
                meta.setdefault("timings", {})
                if isinstance(meta["timings"], dict):
                    meta["timings"]["queue_s"] = round(job.started - job.received, 6)
                meta["attempt"] = job.attempts
                header["meta"] = meta
            self.stats["completed"] += 1
        else:
            self.stats[f"error_{header.get('code')}"] += 1
        frames = [P.pack_header(header), *body[1:]]
        if not job.answered:
            self._send(self.front, job.client, frames)
        self._cache(job.req.id, frames)
        if worker.leaving:
            if not worker.jobs:
                self._remove_worker(worker.identity, "recycled")
        elif worker.identity not in self.idle:
            self.idle.append(worker.identity)

    def _remove_worker(self, ident: bytes, why: str) -> None:
        worker = self.workers.pop(ident, None)
        if worker is None:
            return
        self._not_idle(ident)
        log.info("worker removed", extra={"worker": worker.info.get("name"), "why": why})
        self._requeue_all(worker, f"worker {why}")

    def _not_idle(self, ident: bytes) -> None:
        try:
            self.idle.remove(ident)
        except ValueError:
            pass

    def _requeue_all(self, worker: _Worker, why: str) -> None:
        held = sorted(worker.jobs.values(), key=lambda j: j.received)
        worker.jobs.clear()
        for job in reversed(held):  # appendleft in reverse keeps their original order at the front
            self._requeue(job, why)

    def worker_lost(self, pid: int) -> None:
        """The supervisor saw worker process ``pid`` exit: do not wait for missed heartbeats."""
        for ident, worker in list(self.workers.items()):
            if worker.pid == pid:
                self._remove_worker(ident, "died")

    def _requeue(self, job: _Job, why: str) -> None:
        job.worker = None
        if job.answered:
            self.jobs.pop(job.req.id, None)
            return
        if job.attempts >= MAX_ATTEMPTS:
            self.stats["failed_after_retries"] += 1
            self._fail(job, P.E_UNAVAILABLE, f"the worker running the request died {job.attempts} times ({why})")
            return
        self.stats["requeued"] += 1
        self.queues[job.req.priority].appendleft(job)  # it already waited its turn

    # --- queues ----------------------------------------------------------------------------------

    def _unqueue(self, job: _Job) -> None:
        try:
            self.queues[job.req.priority].remove(job)
        except ValueError:
            pass

    def _fail(self, job: _Job, code: str, message: str, *, keep_running: bool = False, cache: bool = True) -> None:
        """Final error for ``job``. With ``keep_running`` the worker still holds it until it reports back."""
        if not job.answered:
            job.answered = True
            header = P.error_header(job.req.id, code, message)
            self.stats[f"error_{code}"] += 1
            self._reply(job.client, header)
            if cache:
                self._cache(job.req.id, [P.pack_header(header)])
        if not keep_running:
            self.jobs.pop(job.req.id, None)

    def _expire(self, now: float) -> None:
        for queue in self.queues.values():
            while queue and queue[0].deadline <= now:  # FIFO: most expired at the left, mostly
                self._fail(queue.popleft(), P.E_DEADLINE, "deadline passed while queued")
            if queue and any(j.deadline <= now for j in queue):
                for job in [j for j in queue if j.deadline <= now]:
                    queue.remove(job)
                    self._fail(job, P.E_DEADLINE, "deadline passed while queued")
        for ident, worker in list(self.workers.items()):
            for job in list(worker.jobs.values()):
                if not job.answered and job.deadline <= now:
                    self._send_worker(ident, {"v": P.PROTOCOL_VERSION, "kind": P.CANCEL, "id": job.req.id})
                    self._fail(job, P.E_DEADLINE, "deadline passed while running", keep_running=True)
            if worker.expiry <= now:
                self._remove_worker(ident, "missed heartbeats")
        while self.cache:
            _key, (expiry, size, _) = next(iter(self.cache.items()))
            if expiry > now and self.cache_bytes <= self.config.cache_bytes:
                break
            self.cache.popitem(last=False)
            self.cache_bytes -= size

    def _dispatch(self, now: float) -> None:
        for priority in P.PRIORITIES:  # interactive first
            queue = self.queues[priority]
            while queue and self.idle:
                job = queue[0]
                ident = self._pick_worker(job.req.options.get("model"))
                if ident is None:
                    break
                queue.popleft()
                self._start(job, ident, now)

    def _pick_worker(self, model: str | None) -> bytes | None:
        for ident in self.idle:  # left = least recently used
            if model is None or self.workers[ident].model == model:
                self.idle.remove(ident)
                return ident
        return None  # a worker with room left goes back to the right end in _start: jobs spread over workers

    def _start(self, job: _Job, ident: bytes, now: float) -> None:
        worker = self.workers[ident]
        job.attempts += 1
        job.worker = ident
        job.started = now
        worker.jobs[job.req.id] = job
        header = dict(job.header)
        header["kind"] = P.JOB
        header["job_kind"] = job.req.kind
        header["timeout"] = max(0.001, job.deadline - now)
        header["attempt"] = job.attempts
        if not self._send_worker(ident, header, job.frames):
            worker.jobs.pop(job.req.id, None)
            job.worker = None
            job.attempts -= 1
            self.queues[job.req.priority].appendleft(job)
            self._remove_worker(ident, "unreachable")
            return
        if worker.has_room:
            self.idle.append(ident)
        if not job.answered:
            self._reply(job.client, P.progress_header(job.req.id, "running"))

    # --- reply cache (de-duplication of retries) -------------------------------------------------

    def _cache(self, req_id: str, frames: list) -> None:
        size = sum(len(f.buffer) if hasattr(f, "buffer") else len(f) for f in frames)
        if size > self.config.cache_bytes // 4:
            return
        old = self.cache.pop(req_id, None)
        if old is not None:
            self.cache_bytes -= old[1]
        self.cache[req_id] = (time.monotonic() + self.config.cache_ttl, size, frames)
        self.cache_bytes += size

    def _resend_cached(self, ident: bytes, req_id: str) -> bool:
        entry = self.cache.get(req_id)
        if entry is None:
            return False
        self._send(self.front, ident, entry[2])
        return True

    # --- introspection ---------------------------------------------------------------------------

    def queued(self) -> dict:
        return {p: len(q) for p, q in self.queues.items()}

    def running(self) -> int:
        return sum(len(w.jobs) for w in self.workers.values())

    def health(self) -> dict:
        return {"live": True, "ready": bool(self.workers) and not self.draining, "workers": len(self.workers),
                "idle": len(self.idle), "running": self.running(), "queued": self.queued(),
                "draining": self.draining, "uptime_s": round(time.monotonic() - self.started, 3)}

    def info(self) -> dict:
        workers = []
        for w in self.workers.values():
            entry = {k: w.info.get(k) for k in ("name", "pid", "host", "model", "version", "device", "precision")}
            entry.update(busy=bool(w.jobs), held=len(w.jobs), slots=w.slots, jobs_done=w.jobs_done)
            workers.append(entry)
        classes = next((w.info.get("classes") for w in self.workers.values() if w.info.get("classes")), None)
        return {
            "server": "semantic-matte", "version": SERVER_VERSION, "protocol": P.PROTOCOL_VERSION,
            "host": _socket.gethostname(), "pid": os.getpid(),
            "models": sorted({w.model for w in self.workers.values() if w.model}),
            "classes": classes, "workers": workers,
            "limits": {"max_side": P.MAX_SIDE, "max_pixels": self.config.max_pixels,
                       "max_frame_bytes": self.config.max_frame_bytes, "max_frames": P.MAX_FRAMES,
                       "queue_size": dict(self.config.queue_size), "dtypes": sorted(P.DTYPE_ITEMSIZE)},
            "stats": dict(self.stats),
        }
