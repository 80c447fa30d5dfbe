"""Krita 6 embeds PyQt6, Krita 5 PyQt5. Krita 6 itself is not installable here, so its half of the plug-in
that is pure Qt runs in a real PyQt6 application (offscreen) against the real daemon: the panel and dialog,
the connection probe and matte jobs in QThreads, cancel, and "daemon not running"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hostkit
import pytest

pytest.importorskip("PyQt6", reason="PyQt6 (the test extra) is not installed")

SCRIPT = Path(__file__).resolve().parent / "pyqt6_scripts" / "panel_pyqt6.py"


def test_krita_panel_and_jobs_under_pyqt6(daemon: str) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), str(hostkit.ROOT), daemon], capture_output=True, text=True,
                         timeout=180, check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout[-2000:] + out.stderr[-3000:]
