"""Semantic Matte for Krita. Loads the shared code (plug-in core + client library) and registers the plug-in.

Installed layout (install/install_plugins.py): ``pykrita/semantic_matte/lib`` holds ``plugin/core`` and
``backend/{protocol,client,classes}.py``; ``vendor/<platform-tag>`` holds pyzmq / msgpack when the host
Python lacks them. In a source checkout the repository root is used instead.
"""

from __future__ import annotations

import os
import sys

MIN_KRITA = (5, 1)


def _setup_paths() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    lib = os.path.join(here, "lib")
    repo = os.path.abspath(os.path.join(here, "..", "..", ".."))
    if os.path.isdir(lib):
        paths = [lib]
    elif os.path.isfile(os.path.join(repo, "backend", "client.py")):
        paths = [repo]  # running from a source checkout
    else:
        paths = []
    try:
        import msgpack  # noqa: F401
        import zmq  # noqa: F401
    except ImportError:
        vendor = os.path.join(here, "vendor")
        tag = "{}-cp{}{}".format(sys.platform, *sys.version_info[:2])
        for name in (tag, f"{sys.platform}-abi3" if sys.version_info >= (3, 12) else "", "common"):
            p = os.path.join(vendor, name)
            if name and os.path.isdir(p):
                paths.append(p)
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)


def _check_host() -> str | None:
    from krita import Krita

    try:
        version = tuple(int(x) for x in Krita.instance().version().split(".")[:2])
    except ValueError:
        version = MIN_KRITA
    if version < MIN_KRITA:
        return "Semantic Matte needs Krita {}.{} or newer.".format(*MIN_KRITA)
    try:
        import backend.client  # noqa: F401
        import plugin.core.session  # noqa: F401
    except ImportError as exc:
        return (
            f"Semantic Matte cannot load its libraries ({exc}). Re-run install_plugins.py, or install "
            f"pyzmq and msgpack for Krita's Python ({sys.executable or 'python3'} {sys.version.split()[0]})."
        )
    return None


_setup_paths()
LOAD_ERROR = _check_host()

if LOAD_ERROR is None:
    from .extension import register

    register()
else:  # why: a silent failure is the top complaint about editor plug-ins; say what is wrong
    sys.stderr.write("semantic_matte: " + LOAD_ERROR + "\n")
    try:
        from .qt import QMessageBox, QTimer

        QTimer.singleShot(0, lambda: QMessageBox.warning(None, "Semantic Matte", LOAD_ERROR))
    except Exception:  # noqa: BLE001, S110 - the stderr line above already reported it
        pass
