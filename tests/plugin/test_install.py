"""install/install_plugins.py: layout in the editors' profiles, idempotence, vendoring, service, clean uninstall."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "install" / "install_plugins.py"


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, XDG_DATA_HOME=str(tmp / "data"), XDG_CONFIG_HOME=str(tmp / "config"), HOME=str(tmp)
    )
    env.pop("GIMP3_DIRECTORY", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120, check=True
    )


def test_install_reinstall_uninstall(tmp_path: Path) -> None:
    rc = tmp_path / "config" / "kritarc"
    rc.parent.mkdir(parents=True)
    rc.write_text("[General]\nfoo=1\n\n[python]\nenable_other=true\n\n[Zeta]\nbar=2\n")
    _run(tmp_path, "--vendor", "never")
    _run(tmp_path, "--vendor", "never")  # idempotent
    pyk = tmp_path / "data" / "krita" / "pykrita"
    gimp = tmp_path / "config" / "GIMP" / "3.0" / "plug-ins" / "semantic-matte"
    for p in (
        pyk / "semantic_matte.desktop",
        pyk / "semantic_matte" / "__init__.py",
        pyk / "semantic_matte" / "lib" / "backend" / "client.py",
        pyk / "semantic_matte" / "lib" / "backend" / "protocol.py",
        pyk / "semantic_matte" / "lib" / "plugin" / "core" / "trimap.py",
        tmp_path / "data" / "krita" / "actions" / "semantic_matte.action",
        gimp / "semantic-matte.py",
        gimp / "lib" / "backend" / "client.py",
    ):
        assert p.is_file(), p
    assert os.access(gimp / "semantic-matte.py", os.X_OK)
    # only the client side of the backend travels (no torch code in the editors)
    assert sorted(p.name for p in (gimp / "lib" / "backend").iterdir()) == [
        "__init__.py",
        "classes.py",
        "client.py",
        "protocol.py",
    ]
    text = rc.read_text()
    assert text.count("enable_semantic_matte=true") == 1
    assert "enable_other=true" in text and "[Zeta]\nbar=2" in text and "foo=1" in text
    _run(tmp_path, "--uninstall")
    assert not (pyk / "semantic_matte").exists() and not (pyk / "semantic_matte.desktop").exists()
    assert not gimp.exists()
    text = rc.read_text()
    assert "enable_semantic_matte" not in text and "enable_other=true" in text and "bar=2" in text


def _fake_wheel(path: Path, files: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, body in files.items():
            z.writestr(name, body)


def test_vendoring_and_service_unit(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(
        wheels / "pyzmq-27.0.0-cp312-abi3-manylinux_2_28_x86_64.whl", {"zmq/__init__.py": "FAKE = 1\n"}
    )
    _fake_wheel(wheels / "msgpack-1.1.0-cp312-cp312-manylinux_2_17_x86_64.whl", {"msgpack/__init__.py": ""})
    _run(
        tmp_path,
        "--gimp",
        "--vendor",
        "always",
        "--wheels",
        str(wheels),
        "--gimp-python",
        "/nonexistent",
        "--python-version",
        "3.13",
    )
    vendor = (
        tmp_path
        / "config"
        / "GIMP"
        / "3.0"
        / "plug-ins"
        / "semantic-matte"
        / "vendor"
        / f"{sys.platform}-abi3"
    )
    assert (vendor / "zmq" / "__init__.py").is_file() and (vendor / "msgpack" / "__init__.py").is_file()
    _run(tmp_path, "--service", "--no-start")
    unit = (tmp_path / "config" / "systemd" / "user" / "semantic-matte.service").read_text()
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_line.endswith(" serve") and "@SEMANTIC_MATTE@" not in exec_line
    _run(tmp_path, "--uninstall")
    assert not (tmp_path / "config" / "systemd" / "user" / "semantic-matte.service").exists()
    assert not vendor.exists()
