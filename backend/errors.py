"""Errors the CLI and daemon report as one line plus a distinct exit status (``exit_code``).

Shared by image I/O, checkpoint loading and the CLI, so one ``except MatteError`` covers every expected failure.
"""

from __future__ import annotations

import os
from pathlib import Path

PathLike = str | os.PathLike


class MatteError(Exception):
    """Root of the errors the CLI reports as one line plus an exit status (``exit_code``)."""

    exit_code = 1

    def __init__(self, message: str, *, path: PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


class InputError(MatteError):
    """Invalid user input (generic). Subclasses narrow down the cause."""

    exit_code = 2


class MissingFileError(InputError):
    """An input file does not exist, is a directory or cannot be opened."""

    exit_code = 3


class CorruptImageError(InputError):
    """A file exists but is not a decodable image (truncated, wrong format, unsupported mode)."""

    exit_code = 4


class SizeMismatchError(InputError):
    """Image, trimap and/or alpha do not share one height and width."""

    exit_code = 5


class TrimapError(InputError):
    """A trimap that cannot be used: colour (channels differ), wrong bit depth or values."""

    exit_code = 6


class WeightsError(MatteError):
    """Model weights missing, unreadable or not fitting the architecture."""

    exit_code = 7
