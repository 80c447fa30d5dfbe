"""CURVE + ZAP: allowed keys work, unknown keys and plaintext are refused; remote workers over CURVE/TCP."""

from __future__ import annotations

import subprocess
import sys

import pytest
import zmq.auth
from conftest import REPO, child_env, free_port, sample, wait_ready

from backend.client import Client, CurveClientKeys, Unavailable

pytestmark = pytest.mark.timeout(90)


def make_keys(tmp_path):
    keys = tmp_path / "keys"
    out = subprocess.run([sys.executable, "-m", "backend.daemon", "keys", "--dir", str(keys), "--client", "alice",
                          "--worker", "gpu1", "--worker", "gpu2"], env=child_env(), cwd=REPO, capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert (keys / "server.key_secret").stat().st_mode & 0o077 == 0
    return keys


def test_curve_allows_known_key_and_rejects_unknown_and_plaintext(daemon, tmp_path):
    keys = make_keys(tmp_path)
    port = free_port()
    alice = CurveClientKeys.from_files(str(keys / "server.key"), str(keys / "clients" / "alice.key_secret"))
    d = daemon("--keys", str(keys), bind=f"tcp://127.0.0.1:{port}", curve=alice)
    image, trimap = sample()
    with Client(d.endpoint, curve=alice) as c:
        assert c.matte(image, trimap)["alpha"].shape == trimap.shape
    # a valid key pair that is not in authorized_clients/
    stranger_dir = tmp_path / "stranger"
    stranger_dir.mkdir()
    _, secret = zmq.auth.create_certificates(str(stranger_dir), "mallory")
    mallory = CurveClientKeys.from_files(str(keys / "server.key"), secret)
    for curve in (mallory, None):  # unknown key, then plaintext
        with (
            pytest.raises(Unavailable),
            Client(d.endpoint, curve=curve, connect_timeout=1.0, retries=0, heartbeat=0.3) as c,
        ):
            c.health(timeout=2.0)
    assert d.proc.poll() is None


def test_two_remote_workers_over_curve_tcp(spawn, tmp_path):
    keys = make_keys(tmp_path)
    port = free_port()
    front, back = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"
    spawn([sys.executable, "-m", "backend.daemon", "serve", "--runtime-dir", str(tmp_path / "rt"), "--bind", front,
           "--workers", "0", "--keys", str(keys)], endpoint=front, name="broker")
    for name in ("gpu1", "gpu2"):
        spawn([sys.executable, "-m", "backend.daemon", "worker", "--connect", back, "--handler",
               "daemon_handlers:slow", "--name", name, "--curve-server-key", str(keys / "server.key"),
               "--curve-secret", str(keys / "workers" / f"{name}.key_secret")], env=child_env(SLOW_MS="50"),
              name=name)
    # an unauthorised worker (a client key) must not be able to register
    spawn([sys.executable, "-m", "backend.worker", "--connect", back, "--handler", "daemon_handlers:echo",
           "--name", "intruder", "--curve-server-key", str(keys / "server.key"),
           "--curve-secret", str(keys / "clients" / "alice.key_secret")], name="intruder")
    alice = CurveClientKeys.from_files(str(keys / "server.key"), str(keys / "clients" / "alice.key_secret"))
    wait_ready(front, workers=2, curve=alice)
    image, trimap = sample()
    with Client(front, curve=alice) as c:
        ids = [c.submit("matte", {"image": image, "trimap": trimap}) for _ in range(12)]
        names = {c.result(rid).meta["worker"] for rid in ids}
        info = c.info()
    assert names == {"gpu1", "gpu2"}
    assert sorted(w["name"] for w in info["workers"]) == ["gpu1", "gpu2"]
