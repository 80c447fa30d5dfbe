"""Fixtures for the plug-in tests: one real daemon per session, shared by the Krita and GIMP tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hostkit


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    """Address of a ready daemon: $SEMANTIC_MATTE_TEST_DAEMON if set, else `semantic-matte serve` (tiny model)."""
    pytest.importorskip("numpy")
    external = os.environ.get("SEMANTIC_MATTE_TEST_DAEMON")
    if external:
        yield external
        return
    d = hostkit.Daemon(tmp_path_factory.mktemp("daemon"))
    try:
        d.wait_ready(120)
        yield d.address
    finally:
        d.stop()


@pytest.fixture(scope="session")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("PIL")
    return hostkit.prepare_case(tmp_path_factory.mktemp("case"))
