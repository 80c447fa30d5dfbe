#!/usr/bin/env python3
"""Install / uninstall the Semantic Matte plug-ins for Krita (5.1+) and GIMP (3.0+).

    python3 install/install_plugins.py                 # both editors, current user
    python3 install/install_plugins.py --krita         # only Krita (also: --gimp)
    python3 install/install_plugins.py --service       # + systemd user service for the daemon
    python3 install/install_plugins.py --uninstall     # remove everything this script installed

What it does: copies the host code, ``plugin/core`` and the daemon's client library
(``backend/{__init__,protocol,client,classes}.py``) into the editor's profile; enables the Krita plug-in
in ``kritarc``; if the editor's Python cannot import pyzmq + msgpack, downloads wheels with pip and
unpacks them into the plug-in's ``vendor/`` folder. Stdlib only; never touches system files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KRITA_NAME = "semantic_matte"
GIMP_NAME = "semantic-matte"
BACKEND_FILES = ("__init__.py", "protocol.py", "client.py", "classes.py")
MANIFEST = ".semantic-matte-install.json"
SERVICE = "semantic-matte.service"


# --- locations -----------------------------------------------------------------------------------


def _home() -> Path:
    return Path.home()


def krita_resource_dir() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", _home())) / "krita"
    if sys.platform == "darwin":
        return _home() / "Library" / "Application Support" / "krita"
    return Path(os.environ.get("XDG_DATA_HOME") or _home() / ".local" / "share") / "krita"


def kritarc_path() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", _home())) / "kritarc"
    if sys.platform == "darwin":
        return _home() / "Library" / "Preferences" / "kritarc"
    return Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config") / "kritarc"


def gimp_profile_dir() -> Path:
    if os.environ.get("GIMP3_DIRECTORY"):
        return Path(os.environ["GIMP3_DIRECTORY"])
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", _home())) / "GIMP" / "3.0"
    if sys.platform == "darwin":
        return _home() / "Library" / "Application Support" / "GIMP" / "3.0"
    return Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config") / "GIMP" / "3.0"


# --- shared library copy -------------------------------------------------------------------------


def _ignore(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]


def copy_lib(dest: Path) -> None:
    """``dest/plugin/core`` + ``dest/backend/<client files>``: the only shared code the hosts import."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "plugin").mkdir(parents=True)
    shutil.copy2(ROOT / "plugin" / "__init__.py", dest / "plugin" / "__init__.py")
    shutil.copytree(ROOT / "plugin" / "core", dest / "plugin" / "core", ignore=_ignore)
    (dest / "backend").mkdir()
    for name in BACKEND_FILES:
        shutil.copy2(ROOT / "backend" / name, dest / "backend" / name)


# --- Python dependencies -------------------------------------------------------------------------


def host_has_deps(python: str | None) -> bool | None:
    """Can ``python`` import zmq and msgpack? None when that Python cannot be run from here."""
    if not python:
        return None
    try:
        r = subprocess.run(
            [python, "-c", "import zmq, msgpack"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.returncode == 0


def python_tag(python: str) -> tuple[str, str]:
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.platform, '%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return out[0], out[1]


def vendor_deps(vendor: Path, plat: str, pyver: str, wheels: Path | None) -> Path:
    """Unpack pyzmq + msgpack wheels for (platform, python) into ``vendor/<plat>-cpXY`` (or ``-abi3``)."""
    major, minor = (int(x) for x in pyver.split("."))
    tag = f"{plat}-abi3" if (major, minor) >= (3, 12) else f"{plat}-cp{major}{minor}"
    target = vendor / tag
    with tempfile.TemporaryDirectory() as tmp:
        src = wheels
        if src is None:
            src = Path(tmp)
            pip_plat = {
                "linux": "manylinux_2_28_x86_64"
                if platform.machine() in ("x86_64", "AMD64")
                else "manylinux_2_28_aarch64",
                "win32": "win_amd64",
                "darwin": "macosx_10_15_universal2",
            }[plat]
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--only-binary=:all:",
                    "--no-deps",
                    "--python-version",
                    pyver,
                    "--platform",
                    pip_plat,
                    "-d",
                    str(src),
                    "pyzmq>=25",
                    "msgpack>=1.0",
                ],
                check=True,
                timeout=300,
            )
        found = sorted(Path(src).glob("*.whl"))
        if not any(w.name.startswith("pyzmq") for w in found):
            raise SystemExit(f"no pyzmq wheel in {src}")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for whl in found:
            if whl.name.startswith(("pyzmq", "msgpack")):
                with zipfile.ZipFile(whl) as z:
                    z.extractall(target)
    return target


# --- Krita ---------------------------------------------------------------------------------------


def set_kritarc_enabled(path: Path, enabled: bool) -> None:
    """Set ``enable_semantic_matte`` in the [python] section, keeping everything else byte for byte."""
    key = f"enable_{KRITA_NAME}"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    out: list[str] = []
    section = None
    done = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if section == "python" and not done and enabled:
                out.append(f"{key}=true")
                done = True
            section = stripped[1:-1]
        elif section == "python" and stripped.split("=", 1)[0] == key:
            if enabled and not done:
                out.append(f"{key}=true")
                done = True
            continue
        out.append(line)
    if enabled and not done:
        if section != "python":
            out += ["", "[python]"] if out else ["[python]"]
        out.append(f"{key}=true")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def install_krita(args: argparse.Namespace) -> dict:
    pykrita = Path(args.krita_dir) if args.krita_dir else krita_resource_dir() / "pykrita"
    pkg = pykrita / KRITA_NAME
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(ROOT / "plugin" / "krita" / KRITA_NAME, pkg, ignore=_ignore)
    shutil.copy2(ROOT / "plugin" / "krita" / f"{KRITA_NAME}.desktop", pykrita / f"{KRITA_NAME}.desktop")
    actions = pykrita.parent / "actions"
    actions.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "plugin" / "krita" / f"{KRITA_NAME}.action", actions / f"{KRITA_NAME}.action")
    copy_lib(pkg / "lib")
    _deps(args, pkg / "vendor", args.krita_python)
    rc = Path(args.kritarc) if args.kritarc else kritarc_path()
    set_kritarc_enabled(rc, True)
    print(f"Krita: installed {pkg} (enabled in {rc}); restart Krita, then Tools > Scripts > Semantic Matte…")
    return {
        "krita": [str(pkg), str(pykrita / f"{KRITA_NAME}.desktop"), str(actions / f"{KRITA_NAME}.action")],
        "kritarc": str(rc),
    }


# --- GIMP ----------------------------------------------------------------------------------------


def install_gimp(args: argparse.Namespace) -> dict:
    plug_ins = Path(args.gimp_dir) if args.gimp_dir else gimp_profile_dir() / "plug-ins"
    folder = plug_ins / GIMP_NAME  # GIMP 3 wants <name>/<name>.py
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(ROOT / "plugin" / "gimp" / GIMP_NAME, folder, ignore=_ignore)
    (folder / f"{GIMP_NAME}.py").chmod(0o755)
    copy_lib(folder / "lib")
    _deps(args, folder / "vendor", args.gimp_python)
    print(f"GIMP: installed {folder}; restart GIMP, then Filters > Semantic Matte…")
    return {"gimp": [str(folder)]}


def _deps(args: argparse.Namespace, vendor: Path, python: str | None) -> None:
    mode = args.vendor
    if mode == "never":
        return
    if mode == "auto":
        ok = host_has_deps(python)
        if ok:
            return
        if ok is None and not args.wheels:
            print(
                f"note: cannot check the editor's Python ({python}); if the plug-in reports missing pyzmq, "
                f"re-run with --vendor always"
            )
            return
    plat, ver = (
        python_tag(python)
        if python and host_has_deps(python) is not None
        else (sys.platform, args.python_version)
    )
    where = vendor_deps(vendor, plat, ver, Path(args.wheels) if args.wheels else None)
    print(f"vendored pyzmq + msgpack for Python {ver} into {where}")


# --- daemon service ------------------------------------------------------------------------------


def service_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config") / "systemd" / "user"


def install_service(args: argparse.Namespace) -> dict:
    exe = shutil.which("semantic-matte") or f"{sys.executable} -m backend.cli"
    text = (ROOT / "install" / SERVICE).read_text(encoding="utf-8").replace("@SEMANTIC_MATTE@", exe)
    dest = service_dir() / SERVICE
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
    if shutil.which("systemctl") and not args.no_start:
        subprocess.run(["systemctl", "--user", "daemon-reload"], check=False)
        subprocess.run(["systemctl", "--user", "enable", "--now", SERVICE], check=False)
    print(f"service: {dest} (systemctl --user status {SERVICE})")
    return {"service": str(dest)}


# --- manifest / uninstall ------------------------------------------------------------------------


def manifest_path() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or _home() / ".local" / "share") / "semantic-matte" / MANIFEST


def uninstall(args: argparse.Namespace) -> None:
    mpath = Path(args.manifest) if args.manifest else manifest_path()
    data = json.loads(mpath.read_text()) if mpath.exists() else {}
    if not data:  # nothing recorded: fall back to the default locations
        data = {
            "krita": [
                str(krita_resource_dir() / "pykrita" / KRITA_NAME),
                str(krita_resource_dir() / "pykrita" / f"{KRITA_NAME}.desktop"),
                str(krita_resource_dir() / "actions" / f"{KRITA_NAME}.action"),
            ],
            "kritarc": str(kritarc_path()),
            "gimp": [str(gimp_profile_dir() / "plug-ins" / GIMP_NAME)],
        }
    if data.get("service") and shutil.which("systemctl"):
        subprocess.run(["systemctl", "--user", "disable", "--now", SERVICE], check=False)
    for p in (
        data.get("krita", []) + data.get("gimp", []) + ([data["service"]] if data.get("service") else [])
    ):
        path = Path(p)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if data.get("kritarc") and Path(data["kritarc"]).exists():
        set_kritarc_enabled(Path(data["kritarc"]), False)
    if mpath.exists():
        mpath.unlink()
    print("Semantic Matte plug-ins removed.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)  # as the CLI
    ap.add_argument("--krita", action="store_true", help="install the Krita plug-in")
    ap.add_argument("--gimp", action="store_true", help="install the GIMP 3 plug-in")
    ap.add_argument(
        "--service", action="store_true", help="install + start the daemon as a systemd user service"
    )
    ap.add_argument("--no-start", action="store_true", help="with --service: write the unit only")
    ap.add_argument("--uninstall", action="store_true")
    ap.add_argument("--krita-dir", help="pykrita folder (default: the user's Krita resource folder)")
    ap.add_argument("--kritarc", help="kritarc to enable the plug-in in (default: the user's)")
    ap.add_argument("--gimp-dir", help="GIMP 3 plug-ins folder (default: <GIMP 3 profile>/plug-ins)")
    ap.add_argument(
        "--vendor",
        choices=("auto", "always", "never"),
        default="auto",
        help="bundle pyzmq + msgpack into the plug-in (auto: only when the editor's Python lacks them)",
    )
    ap.add_argument("--wheels", help="folder with pyzmq / msgpack wheels to vendor (offline install)")
    ap.add_argument(
        "--krita-python",
        default="/usr/bin/python3" if sys.platform.startswith("linux") else None,
        help="the Python Krita embeds, to check for pyzmq (Linux distro Krita: /usr/bin/python3)",
    )
    ap.add_argument(
        "--gimp-python",
        default="/usr/bin/python3" if sys.platform.startswith("linux") else None,
        help="the Python GIMP runs plug-ins with",
    )
    ap.add_argument(
        "--python-version",
        default="{}.{}".format(*sys.version_info[:2]),
        help="editor Python version when it cannot be run from here (wheel selection)",
    )
    ap.add_argument(
        "--manifest", help="where to record installed paths (default: ~/.local/share/semantic-matte)"
    )
    args = ap.parse_args(argv)
    if args.uninstall:
        uninstall(args)
        return 0
    if not (args.krita or args.gimp or args.service):
        args.krita = args.gimp = True
    record: dict = {}
    if args.krita:
        record.update(install_krita(args))
    if args.gimp:
        record.update(install_gimp(args))
    if args.service:
        record.update(install_service(args))
    mpath = Path(args.manifest) if args.manifest else manifest_path()
    old = json.loads(mpath.read_text()) if mpath.exists() else {}
    old.update(record)
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(old, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
