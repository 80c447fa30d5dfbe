"""`semantic-matte serve | status | stop | keys | worker`: the daemon process and its supervisor.

The daemon process runs the broker loop; worker processes are children (``python -m backend.worker``),
restarted with back-off when they exit, recycled by their own limits, and told about instantly (no
waiting for missed heartbeats) when they die. SIGTERM drains: no new work, running and queued work
finishes within ``--drain-timeout`` (30 s), workers are shut down, exit 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import zmq

from backend import protocol as P
from backend import security
from backend.broker import Broker, BrokerConfig

log = logging.getLogger(__name__)

PIDFILE = "daemon.pid"
RESTART_MIN = 0.2
RESTART_MAX = 10.0
STABLE_AFTER = 30.0  # a worker alive this long resets its restart back-off


# --- logging (only the entry points configure it) -------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the ``extra=`` fields of the record."""

    _STD: ClassVar[set[str]] = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
                               "pid": record.process, "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in self._STD and key not in out:
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    """Human-readable line followed by the record's ``extra=`` fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in vars(record).items() if k not in JsonFormatter._STD]
        return f"{line} {' '.join(extras)}" if extras else line


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# --- worker supervision ---------------------------------------------------------------------------


@dataclass
class WorkerSpec:
    device: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = RESTART_MIN
    restart_at: float = 0.0
    restarts: int = 0


@dataclass
class Supervisor:
    """Starts worker processes and restarts them when they exit (unless stopping)."""

    specs: list[WorkerSpec]
    broker: Broker
    env: dict = field(default_factory=lambda: dict(os.environ))
    stopping: bool = False

    def start_all(self) -> None:
        for spec in self.specs:
            self._spawn(spec)

    def _spawn(self, spec: WorkerSpec) -> None:
        spec.proc = subprocess.Popen(spec.argv, env=self.env, stdin=subprocess.DEVNULL)
        spec.started = time.monotonic()
        log.info("worker process started", extra={"worker_pid": spec.proc.pid, "device": spec.device})

    def tick(self) -> None:
        now = time.monotonic()
        for spec in self.specs:
            proc = spec.proc
            if proc is not None and proc.poll() is not None:
                self.broker.worker_lost(proc.pid)
                code = proc.returncode
                spec.proc = None
                if self.stopping:
                    continue
                # Back off only for crash loops: not for recycling (0), kill -9 from outside, or long runs.
                if now - spec.started > STABLE_AFTER or code in (0, -signal.SIGKILL):
                    spec.backoff = RESTART_MIN
                log.log(logging.INFO if code == 0 else logging.WARNING, "worker process exited",
                        extra={"worker_pid": proc.pid, "code": code, "restart_in": spec.backoff})
                spec.restart_at = now + spec.backoff
                spec.backoff = min(spec.backoff * 2, RESTART_MAX)
            if spec.proc is None and not self.stopping and now >= spec.restart_at:
                spec.restarts += 1
                self._spawn(spec)

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.specs if s.proc is not None]

    def stop_all(self, timeout: float = 10.0) -> None:
        self.stopping = True
        end = time.monotonic() + timeout
        for spec in self.specs:
            if spec.proc is not None and spec.proc.poll() is None:
                spec.proc.terminate()
        for spec in self.specs:
            if spec.proc is None:
                continue
            try:
                spec.proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                spec.proc.kill()
                spec.proc.wait(5)


def _devices(args: argparse.Namespace) -> list[str]:
    """One worker per GPU (``--device cuda`` / auto), or the listed devices, plus ``--cpu-workers``."""
    devices: list[str] = []
    if args.workers == 0:
        pass
    elif args.device == "cpu":
        devices = ["cpu"] * max(1, args.workers or 1)
    elif args.device in ("auto", "cuda"):
        count = 0
        if not args.handler:
            try:
                import torch

                count = torch.cuda.device_count()
            except Exception:  # noqa: BLE001 — no torch / broken driver (any import error): CPU only
                count = 0
        if count:
            n = args.workers or count
            devices = [f"cuda:{i % count}" for i in range(n)]
        elif args.device == "cuda":
            raise SystemExit("--device cuda but no CUDA device is visible (refusing a silent CPU fallback)")
        else:
            devices = ["cpu"] * max(1, args.workers or 1)
    else:
        listed = [d.strip() for d in args.device.split(",") if d.strip()]
        n = args.workers or len(listed)
        devices = [listed[i % len(listed)] for i in range(n)]
    devices += ["cpu"] * args.cpu_workers
    return devices


def _worker_argv(args: argparse.Namespace, device: str, back: str, index: int, curve_files: tuple[str, str] | None,
                 threads: int = 0) -> list[str]:
    argv = [sys.executable, "-m", "backend.worker", "--connect", back, "--device", device,
            # fp16 autocast is slow on CPUs: CPU workers of an fp16 daemon run fp32
            "--precision", "fp32" if device == "cpu" and args.precision == "fp16" else args.precision,
            "--name", f"{os.uname().nodename}/{device}#{index}", "--parent-pid", str(os.getpid()),
            "--log-level", args.log_level]
    for flag, value in (("--weights", args.weights), ("--classifier-weights", args.classifier_weights),
                        ("--model", args.model), ("--classifier", args.classifier), ("--handler", args.handler),
                        ("--seed", args.seed)):
        if value is not None:
            argv += [flag, str(value)]
    if threads:
        argv += ["--threads", str(threads)]
    if args.max_batch is not None:
        argv += ["--max-batch", str(args.max_batch)]
    if args.max_jobs:
        argv += ["--max-jobs", str(args.max_jobs)]
    if args.max_rss_mb:
        argv += ["--max-rss-mb", str(args.max_rss_mb)]
    if args.max_gpu_mb:
        argv += ["--max-gpu-mb", str(args.max_gpu_mb)]
    if curve_files:
        argv += ["--curve-server-key", curve_files[0], "--curve-secret", curve_files[1]]
    return argv


def _daemon_alive(endpoint: str) -> bool:
    from backend.client import Client, ServerError

    try:
        with Client(endpoint, connect_timeout=0.5, retries=0, heartbeat=0.25) as client:
            client.health(timeout=1.0)
        return True
    except ServerError:
        return False


# --- serve ----------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    rundir = security.ensure_runtime_dir(args.runtime_dir)
    os.environ[P.ENV_RUNTIME_DIR] = rundir
    front = args.bind or "ipc://" + os.path.join(rundir, "broker.sock")
    back = args.worker_bind or security.worker_endpoint_for(front)
    curve_front = curve_back = None
    auth = None
    ctx = zmq.Context.instance()
    if args.keys:
        curve_front, curve_back = security.load_curve_servers(args.keys)
    try:
        security.check_bind(front, curve_front)
        security.check_bind(back, curve_back)
    except security.SecurityError as exc:
        log.error("%s", exc)
        return 2
    for ep in (front, back):
        path = ep[len("ipc://"):] if ep.startswith("ipc://") else None
        if path and os.path.exists(path):
            if _daemon_alive(front):
                log.error("a daemon already serves %s (semantic-matte stop)", front)
                return 1
            os.unlink(path)  # stale socket from a killed daemon: binding would otherwise steal nothing
    use_front = curve_front if front.startswith("tcp://") else None
    use_back = curve_back if back.startswith("tcp://") else None
    worker_keys = None
    if use_front or use_back:
        auth = security.Authenticator(ctx)
        if use_front:
            auth.allow_keys(use_front)
        if use_back:
            local = os.path.join(args.keys, security.WORKERS_DIR, "local.key_secret")
            if not os.path.exists(local):
                security.create_keys(args.keys, workers=["local"])
            auth.allow_keys(use_back)
            worker_keys = (os.path.join(args.keys, f"{security.SERVER_KEY}.key"), local)
    config = BrokerConfig(queue_size={P.INTERACTIVE: args.queue_size, P.BATCH: args.batch_queue_size},
                          max_pixels=args.max_pixels, max_frame_bytes=int(args.max_frame_mb * 2**20),
                          drain_timeout=args.drain_timeout, cache_bytes=int(args.reply_cache_mb * 2**20))
    broker = Broker(front, back, config=config, context=ctx, front_security=use_front, back_security=use_back)
    broker.bind()
    for ep in (broker.front_endpoint, broker.back_endpoint):
        if ep.startswith("ipc://"):
            os.chmod(ep[len("ipc://"):], 0o600)
    pidfile = os.path.join(rundir, PIDFILE)
    with open(pidfile, "w") as fh:
        json.dump({"pid": os.getpid(), "endpoint": broker.front_endpoint, "workers": broker.back_endpoint}, fh)
    devices = _devices(args)
    n_cpu = devices.count("cpu")
    cpu_threads = max(1, (os.cpu_count() or 1) // n_cpu) if n_cpu > 1 else 0  # share the cores, don't fight
    specs = [WorkerSpec(dev, _worker_argv(args, dev, broker.back_endpoint, i, worker_keys,
                                          cpu_threads if dev == "cpu" else 0))
             for i, dev in enumerate(devices)]
    supervisor = Supervisor(specs, broker)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: draining", signum)
        broker.begin_drain()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("serving", extra={"endpoint": broker.front_endpoint, "workers_endpoint": broker.back_endpoint,
                               "worker_processes": len(specs), "curve": bool(use_front)})
    print(f"semantic-matte daemon listening on {broker.front_endpoint} (workers: {broker.back_endpoint})",
          file=sys.stderr, flush=True)
    supervisor.start_all()
    try:
        broker.run(on_tick=supervisor.tick)
        broker.shutdown_workers()
        end = time.monotonic() + 5.0
        while time.monotonic() < end and any(s.proc is not None and s.proc.poll() is None for s in specs):
            broker.poll_once(0.05)  # keep answering while workers say goodbye
    finally:
        supervisor.stop_all()
        broker.close()
        if auth is not None:
            auth.stop()
        for ep in (broker.front_endpoint, broker.back_endpoint):
            if ep.startswith("ipc://"):
                try:
                    os.unlink(ep[len("ipc://"):])
                except OSError:
                    pass
        try:
            os.unlink(pidfile)
        except OSError:
            pass
    log.info("stopped", extra={"stats": json.dumps(dict(broker.stats))})
    return 0


# --- status / stop / keys / worker ----------------------------------------------------------------


def _client_curve(args: argparse.Namespace) -> Any:
    if not getattr(args, "server_key", None):
        return None
    from backend.client import CurveClientKeys

    return CurveClientKeys.from_files(args.server_key, args.client_secret)


def status(args: argparse.Namespace) -> int:
    from backend.client import Client, ServerError

    try:
        with Client(args.server, connect_timeout=2.0, retries=1, curve=_client_curve(args)) as client:
            health = client.health()
            info = client.info()
    except ServerError as exc:
        print(f"{'error' if exc.code == P.E_BAD_REQUEST else 'not running'}: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"health": health, "info": info}, indent=2))
    else:
        print(f"semantic-matte {info.get('version')} (protocol {info.get('protocol')}) pid {info.get('pid')} "
              f"on {info.get('host')}: {'ready' if health.get('ready') else 'NOT ready'}"
              f"{' (draining)' if health.get('draining') else ''}")
        print(f"queued: {health.get('queued')}  running: {health.get('running')}  idle workers: {health.get('idle')}")
        for w in info.get("workers", []):
            print(f"  worker {w.get('name')}: model {w.get('model')} on {w.get('device')} ({w.get('precision')}), "
                  f"{'busy' if w.get('busy') else 'idle'}, {w.get('jobs_done')} jobs")
    return 0 if health.get("ready") else 1


def stop(args: argparse.Namespace) -> int:
    rundir = args.runtime_dir or P.runtime_dir()
    pidfile = os.path.join(rundir, PIDFILE)
    try:
        with open(pidfile) as fh:
            pid = int(json.load(fh)["pid"])
    except (OSError, ValueError, KeyError):
        print(f"no daemon pid file in {rundir}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        os.unlink(pidfile)
        print(f"daemon {pid} was not running (stale pid file removed)", file=sys.stderr)
        return 1
    end = time.monotonic() + args.timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"daemon {pid} stopped")
            return 0
        if not os.path.exists(pidfile):  # removed as the daemon's last act (it may linger as a zombie)
            print(f"daemon {pid} stopped")
            return 0
        time.sleep(0.1)
    print(f"daemon {pid} still running after {args.timeout:g} s", file=sys.stderr)
    return 1


def keys(args: argparse.Namespace) -> int:
    made = security.create_keys(args.dir, clients=args.client, workers=args.worker)
    base = os.path.abspath(args.dir)
    if made["server"]:
        print(f"server public key: {made['server']} (give it to clients and remote workers)")
    for path in made["clients"]:
        print(f"client key: {path} (give it to that client; its public key is now authorised)")
    for path in made["workers"]:
        print(f"worker key: {path} (for `semantic-matte worker --curve-secret`)")
    print(f"serve with: semantic-matte serve --bind tcp://0.0.0.0:5557 --keys {base}")
    return 0


def worker(args: argparse.Namespace) -> int:
    from backend.worker import worker_main

    configure_logging(args.log_level, args.log_format)
    return worker_main(args)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", choices=["text", "json"], default="text")


def add_cli(subparsers: Any) -> None:
    """Register serve, status, stop, keys and worker (each ``set_defaults(func=...)`` -> exit code)."""
    from backend.cli import endpoint_argument

    p = subparsers.add_parser("serve", help="run the matting daemon (broker + workers)")
    p.add_argument("--bind", type=endpoint_argument, help="client endpoint (default ipc://<runtime dir>/broker.sock; tcp://127.0.0.1:PORT)")
    p.add_argument("--worker-bind", type=endpoint_argument, help="worker endpoint (default: next to --bind; tcp port + 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per GPU, else 1 CPU worker; 0 = none, for remote workers)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, or a list: cuda:0,cuda:1")
    p.add_argument("--cpu-workers", type=int, default=0, help="extra CPU workers next to the GPU ones")
    p.add_argument("--precision", default=P.PRECISION_AUTO, choices=P.PRECISION_MODES,
                   help="worker autocast precision (auto: bf16 on CPUs with native bf16, else fp32)")
    p.add_argument("--weights", help="matting weights file")
    p.add_argument("--classifier-weights", help="classifier weights file")
    p.add_argument("--model", help="registry model with random weights (tests/benchmarks), e.g. sim_tiny")
    p.add_argument("--classifier", help="registry classifier with --model, e.g. classifier_tiny")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--handler", help=argparse.SUPPRESS)
    p.add_argument("--queue-size", type=int, default=32, help="interactive queue bound (then BUSY)")
    p.add_argument("--batch-queue-size", type=int, default=128, help="batch queue bound (then BUSY)")
    p.add_argument("--max-pixels", type=int, default=P.MAX_PIXELS, help="largest accepted image (H*W)")
    p.add_argument("--max-frame-mb", type=float, default=P.MAX_FRAME_BYTES / 2**20,
                   help="largest accepted frame; a peer sending more is disconnected")
    p.add_argument("--reply-cache-mb", type=float, default=64.0,
                   help="memory for finished replies kept for retried request ids")
    p.add_argument("--max-batch", type=int, default=None,
                   help="small queued requests of one size a worker runs together (default: 8 on GPU, 1 on CPU)")
    p.add_argument("--max-jobs", type=int, default=0, help="recycle a worker after N jobs")
    p.add_argument("--max-rss-mb", type=float, default=0.0, help="recycle a worker above this RSS")
    p.add_argument("--max-gpu-mb", type=float, default=0.0, help="recycle a worker above this GPU memory")
    p.add_argument("--drain-timeout", type=float, default=30.0)
    p.add_argument("--keys", help="CURVE key directory (semantic-matte keys); required for non-loopback binds")
    p.add_argument("--runtime-dir", help=argparse.SUPPRESS)
    _add_common(p)
    p.set_defaults(func=serve)

    for name, fn, text in (("status", status, "show daemon health and workers"),):
        p = subparsers.add_parser(name, help=text)
        p.add_argument("--server", type=endpoint_argument, help="daemon endpoint (default: local ipc socket)")
        p.add_argument("--server-key", help="CURVE server public key file")
        p.add_argument("--client-secret", help="CURVE client secret key file")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=fn)

    p = subparsers.add_parser("stop", help="stop the local daemon (SIGTERM, drains running work)")
    p.add_argument("--timeout", type=float, default=35.0)
    p.add_argument("--runtime-dir", help=argparse.SUPPRESS)
    p.set_defaults(func=stop)

    p = subparsers.add_parser("keys", help="create CURVE server / client / worker keys")
    p.add_argument("--dir", required=True, help="key directory (created 0700)")
    p.add_argument("--client", action="append", default=[], help="create and authorise a client key NAME")
    p.add_argument("--worker", action="append", default=[], help="create and authorise a remote worker key NAME")
    p.set_defaults(func=keys)

    from backend.worker import add_worker_arguments

    p = subparsers.add_parser("worker", help="run a worker that connects to a (remote) broker")
    add_worker_arguments(p)
    _add_common(p)
    p.set_defaults(func=worker)


def main(argv: list[str] | None = None) -> int:
    """``python -m backend.daemon SUBCOMMAND`` (the same subcommands as ``semantic-matte``)."""
    from backend.cli import CommandParser

    parser = CommandParser(prog="python -m backend.daemon")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    try:
        from backend.batch import add_cli as add_batch_cli

        add_batch_cli(sub)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
