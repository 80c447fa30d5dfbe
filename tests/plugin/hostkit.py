"""Helpers for the in-editor tests: a real daemon on loopback, test images, hermetic editor profiles."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALPHAMATTING = Path(os.environ.get("SEMANTIC_MATTE_DATA", "/work/shared/data")) / "alphamatting"
CHROOT = Path(os.environ.get("SEMANTIC_MATTE_CHROOT", "/var/cache/semantic-matte/trixie"))
TINY_MODEL = ["--model", "sim_tiny", "--classifier", "classifier_tiny", "--seed", "0", "--device", "cpu"]


def host_env(**extra: str) -> dict:
    """Environment for an editor process: system PATH, no pyenv/virtualenv/PYTHON* variables.

    Why: an embedded Python derives its prefix from the first python3 on PATH; a pyenv shim there makes
    Krita load pyenv's stdlib, which has no PyQt5 ("Cannot load the PyKrita module").
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYENV", "PYTHON", "VIRTUAL_ENV", "CONDA", "_PYENV"))
    }
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.update(extra)
    return env


def run_bounded(cmd: list[str], env: dict, timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run an editor in its own process group and kill the whole group on timeout (Krita, Xvfb, GIMP)."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[killed after {timeout} s]"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """``semantic-matte serve`` as a real subprocess on 127.0.0.1 with a tiny random-weight model."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log = open(log_dir / "daemon.log", "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONPATH=str(ROOT), SEMANTIC_MATTE_RUNTIME_DIR=str(log_dir / "run"))
        cmd = [
            sys.executable,
            "-m",
            "backend.cli",
            "serve",
            "--bind",
            self.address,
            "--worker-bind",
            f"tcp://127.0.0.1:{free_port()}",
            *TINY_MODEL,
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        from backend.client import Client, ServerError

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with Client(self.address, retries=0) as c:
                    if c.health(timeout=1.0).get("ready"):
                        return
            except ServerError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"daemon not ready after {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group (start_new_session)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def synthetic_example(tmp: Path) -> tuple[Path, Path]:
    """A generated stand-in (textured background, soft-edged disc): no data set needed."""
    import numpy as np
    from PIL import Image

    h, w = 248, 400
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.stack(
        [120 + 60 * np.sin(xx / 9), 90 + 50 * np.cos(yy / 13), 60 + 40 * np.sin((xx + yy) / 17)], -1
    )
    r = np.hypot(xx - w / 2, yy - h / 2) + 6 * np.sin(np.arctan2(yy - h / 2, xx - w / 2) * 12)
    alpha = np.clip((80 - r) / 6 + 0.5, 0, 1)
    fg = np.stack([230 + 0 * xx, 140 + 40 * np.sin(yy / 5), 40 + 0 * xx], -1)
    img = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(tmp / "example.png")
    Image.fromarray((alpha * 255).astype(np.uint8)).save(tmp / "example_alpha.png")
    return tmp / "example.png", tmp / "example_alpha.png"


def example_image(tmp: Path, name: str = "GT01") -> tuple[Path, Path]:
    """(image, ground-truth alpha) from the alphamatting set, else a generated example."""
    img, alpha = ALPHAMATTING / "image" / f"{name}.png", ALPHAMATTING / "alpha" / f"{name}.png"
    if img.is_file() and alpha.is_file():
        return img, alpha
    return synthetic_example(tmp)


def prepare_case(tmp: Path, name: str = "GT01", scale: int = 2) -> dict:
    """Downscaled test image (PNG) + the subject selection (one byte per pixel) derived from its alpha."""
    from PIL import Image

    img_path, alpha_path = example_image(tmp, name)
    img = Image.open(img_path).convert("RGB")
    alpha = Image.open(alpha_path).convert("L")
    size = (img.width // scale, img.height // scale)
    img, alpha = img.resize(size, Image.BILINEAR), alpha.resize(size, Image.BILINEAR)
    img.save(tmp / "image.png")
    sel = alpha.point(lambda v: 255 if v >= 128 else 0)
    (tmp / "selection.raw").write_bytes(sel.tobytes())
    return {
        "image": str(tmp / "image.png"),
        "selection": str(tmp / "selection.raw"),
        "width": size[0],
        "height": size[1],
    }


def direct_alpha(
    address: str, image_png: str, trimap: bytes, *, foreground: bool = False, classes: list[str] | None = None,
    refine: str | None = None,
):
    """The daemon's own answer for the same input, through the client library (numpy on the test side)."""
    import numpy as np
    from PIL import Image

    from backend.client import Client

    rgb = np.asarray(Image.open(image_png).convert("RGB"))
    tri = np.frombuffer(trimap, np.uint8).reshape(rgb.shape[:2])
    outputs = ("alpha", "foreground") if foreground else ("alpha",)
    with Client(address, as_numpy=True) as c:
        rep = c.matte(rgb, tri, outputs=outputs, alpha_dtype="u1", timeout=120, classes=classes, refine=refine)
    return rep.arrays["alpha"], rep.arrays.get("foreground"), rgb


def have_krita() -> str | None:
    missing = [b for b in ("krita", "kritarunner", "xvfb-run") if shutil.which(b) is None]
    if missing:
        return f"Krita host not installed ({', '.join(missing)} missing): run install/hosts.sh krita"
    r = subprocess.run(
        ["/usr/bin/python3", "-c", "import PyQt5, zmq, msgpack"], capture_output=True, check=False
    )
    if r.returncode:
        return "python3-pyqt5 / python3-zmq / python3-msgpack missing for Krita: run install/hosts.sh krita"
    return None


def have_gimp() -> str | None:
    if not (CHROOT / "usr" / "bin" / "gimp-console-3.0").exists():
        return f"GIMP 3 chroot not found at {CHROOT}: run install/hosts.sh gimp"
    if os.geteuid() != 0:
        return "GIMP 3 tests need root (chroot)"
    return None


def run_in_chroot(command: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` (bash) in the GIMP 3 chroot with /tmp shared (test files live under /tmp)."""
    target = CHROOT / "tmp"
    mounted = subprocess.run(["mountpoint", "-q", str(target)], check=False).returncode == 0
    if not mounted:
        subprocess.run(["mount", "--bind", "/tmp", str(target)], check=True)
    try:
        envs = [
            f"{k}={v}"
            for k, v in {
                "HOME": "/root",
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                **env,
            }.items()
        ]
        return run_bounded(
            ["chroot", str(CHROOT), "/usr/bin/env", "-i", *envs, "bash", "-c", command], host_env(), timeout
        )
    finally:
        if not mounted:  # an exiting Xvfb can keep the mount busy for a moment
            for _ in range(20):
                if subprocess.run(["umount", str(target)], capture_output=True, check=False).returncode == 0:
                    break
                time.sleep(0.5)


def have_krita52() -> str | None:
    """Krita 5.2 + PyQt5 inside the trixie chroot (install/hosts.sh krita52)."""
    reason = have_gimp()
    if reason:
        return reason.replace("hosts.sh gimp", "hosts.sh krita52")
    if not (CHROOT / "usr" / "bin" / "kritarunner").exists():
        return f"Krita 5.2 not installed in {CHROOT}: run install/hosts.sh krita52"
    return None
