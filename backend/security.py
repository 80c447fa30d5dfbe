"""Where the daemon may listen and who may talk to it: runtime directory, loopback checks, CURVE + ZAP.

Policy: ipc in a 0700 per-user directory or tcp on loopback by default; any other bind needs CURVE with a
server key pair and a directory of allowed client public keys ("Ironhouse"). Stdlib + zmq only.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from backend import protocol as P

log = logging.getLogger(__name__)

ZAP_DOMAIN = "semantic-matte"
SERVER_KEY = "server"  # keys_dir/server.key (public), server.key_secret
CLIENTS_DIR = "clients"  # key pairs made for clients (hand the .key_secret file to the client)
AUTHORIZED_DIR = "authorized_clients"  # public keys allowed to connect as clients
WORKERS_DIR = "workers"
AUTHORIZED_WORKERS_DIR = "authorized_workers"


class SecurityError(Exception):
    """The requested configuration would expose the daemon."""


def ensure_runtime_dir(path: str | None = None) -> str:
    """Create (0700) or check the runtime directory: owned by us, no group/other access."""
    path = path or P.runtime_dir()
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise SecurityError(f"runtime directory {path} is owned by uid {st.st_uid}, not by you")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise SecurityError(f"runtime directory {path} is accessible by others (mode {stat.S_IMODE(st.st_mode):o}); "
                            f"chmod 700 it")
    return path


def endpoint_host(endpoint: str) -> str | None:
    """Host part of a tcp endpoint (None for ipc/inproc)."""
    if not endpoint.startswith("tcp://"):
        return None
    rest = endpoint[len("tcp://"):]
    if rest.startswith("["):
        return rest[1:rest.index("]")]
    host, _, _ = rest.rpartition(":")
    return host


def is_local_endpoint(endpoint: str) -> bool:
    """ipc / inproc, or tcp bound to a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint_host(endpoint)
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or '*': not provably loopback


def worker_endpoint_for(front: str) -> str:
    """Default back-end endpoint next to a front-end one: sibling ipc path, or tcp port + 1."""
    if front.startswith("ipc://"):
        return "ipc://" + os.path.join(os.path.dirname(front[len("ipc://"):]), "workers.sock")
    host = endpoint_host(front)
    port = front.rpartition(":")[2]
    if host is not None and port.isdigit() and int(port) > 0:
        return front.rpartition(":")[0] + f":{int(port) + 1}"
    if host is not None:
        return front.rpartition(":")[0] + ":0"
    raise ValueError(f"cannot derive a worker endpoint from {front!r}: pass --worker-bind")


@dataclass
class CurveServer:
    """CURVE server keys plus the directory of allowed peer public keys for one socket."""

    public: bytes
    secret: bytes
    allowed_dir: str
    domain: str = ZAP_DOMAIN

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.zap_domain = self.domain.encode()


class Authenticator:
    """ZAP handler thread enforcing the allowed-key directories (pyzmq ThreadAuthenticator)."""

    def __init__(self, context: zmq.Context) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".zap"))
        self._auth.start()

    def allow_keys(self, server: CurveServer) -> None:
        # Only keys in the directory pass; NULL and PLAIN connections to a CURVE socket are refused.
        self._auth.configure_curve(domain=server.domain, location=server.allowed_dir)

    def stop(self) -> None:
        self._auth.stop()


def create_keys(keys_dir: str, clients: list[str] | None = None, workers: list[str] | None = None) -> dict[str, Any]:
    """Create the server key pair (if missing) and client / worker key pairs; authorise their public keys."""
    import shutil

    import zmq.auth

    base = Path(keys_dir)
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(base, 0o700)
    made: dict[str, Any] = {"server": None, "clients": [], "workers": []}
    if not (base / f"{SERVER_KEY}.key_secret").exists():
        zmq.auth.create_certificates(str(base), SERVER_KEY)
        made["server"] = str(base / f"{SERVER_KEY}.key")
    for group, auth_dir, names in ((CLIENTS_DIR, AUTHORIZED_DIR, clients or []),
                                   (WORKERS_DIR, AUTHORIZED_WORKERS_DIR, workers or [])):
        (base / group).mkdir(exist_ok=True, mode=0o700)
        (base / auth_dir).mkdir(exist_ok=True, mode=0o700)
        for name in names:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"key name {name!r}: use letters, digits, - and _")
            public, secret = zmq.auth.create_certificates(str(base / group), name)
            shutil.copy(public, base / auth_dir / f"{name}.key")
            os.chmod(secret, 0o600)
            made["clients" if group == CLIENTS_DIR else "workers"].append(secret)
    os.chmod(base / f"{SERVER_KEY}.key_secret", 0o600)
    return made


def load_curve_servers(keys_dir: str) -> tuple[CurveServer, CurveServer]:
    """(front-end, back-end) CURVE configs from a directory written by ``create_keys``."""
    import zmq.auth

    base = Path(keys_dir)
    secret_file = base / f"{SERVER_KEY}.key_secret"
    if not secret_file.exists():
        raise SecurityError(f"no server key in {keys_dir}: run `semantic-matte keys --dir {keys_dir}`")
    public, secret = zmq.auth.load_certificate(str(secret_file))
    if not secret:
        raise SecurityError(f"{secret_file} has no secret key")
    for sub in (AUTHORIZED_DIR, AUTHORIZED_WORKERS_DIR):
        (base / sub).mkdir(exist_ok=True, mode=0o700)
    return (CurveServer(public, secret, str(base / AUTHORIZED_DIR), ZAP_DOMAIN),
            CurveServer(public, secret, str(base / AUTHORIZED_WORKERS_DIR), ZAP_DOMAIN + "-workers"))


def check_bind(endpoint: str, curve: CurveServer | None) -> None:
    """Refuse a non-loopback bind without CURVE and an allow-list directory that holds keys."""
    if is_local_endpoint(endpoint):
        return
    if curve is None:
        raise SecurityError(f"refusing to listen on {endpoint} without CURVE: create keys with "
                            f"`semantic-matte keys --dir DIR --client NAME` and pass --keys DIR, "
                            f"or bind tcp://127.0.0.1:PORT")
    if not os.path.isdir(curve.allowed_dir) or not any(Path(curve.allowed_dir).glob("*.key")):
        raise SecurityError(f"refusing to listen on {endpoint}: no allowed keys in {curve.allowed_dir}")
