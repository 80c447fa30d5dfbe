"""A small log file per editor profile, for bug reports ("attach semantic_matte.log").

Connection problems are the main support load of editor plug-ins talking to a server; a log with the
address, sizes, timings and tracebacks answers most of them.
"""

from __future__ import annotations

import logging
import logging.handlers
import os

LOGGER = "semantic_matte"


def setup_log(path: str) -> logging.Logger:
    """Attach a rotating file handler (1 MB x 2) once; never raises (a read-only profile must not break us)."""
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    if any(getattr(h, "_semantic_matte", False) for h in log.handlers):
        return log
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=1_000_000, backupCount=2, encoding="utf-8"
        )
    except OSError:
        return log
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler._semantic_matte = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    return log
