"""Run blocking client calls off Krita's GUI thread.

A ``QThread`` with a ``QObject`` worker moved onto it (measured: the GUI thread's timers keep firing
while a request blocks in the worker). All Krita API calls stay on the GUI thread; results come back
through queued signals.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

from .qt import QObject, QThread, pyqtSignal


class _Worker(QObject):
    progress = pyqtSignal(str, float)  # stage, fraction (-1 = unknown)
    finished = pyqtSignal(object)  # result
    failed = pyqtSignal(object)  # exception

    def __init__(self, fn: Callable[..., Any], cancel: threading.Event) -> None:
        super().__init__()
        self._fn = fn
        self._cancel = cancel

    def _progress(self, stage: str, done: float | None = None) -> None:
        self.progress.emit(str(stage), -1.0 if done is None else float(done))

    def run(self) -> None:
        try:
            result = self._fn(self._progress, self._cancel)
        except BaseException as exc:  # noqa: BLE001 - anything escaping a QThread would be lost silently
            exc.__traceback_text__ = traceback.format_exc()  # type: ignore[attr-defined]
            self.failed.emit(exc)
        else:
            self.finished.emit(result)


class BackgroundJob(QObject):
    """``fn(progress, cancel_event) -> result`` in its own thread; signals arrive on the GUI thread."""

    progress = pyqtSignal(str, float)
    finished = pyqtSignal(object)
    failed = pyqtSignal(object)

    def __init__(self, fn: Callable[..., Any], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.cancel_event = threading.Event()
        self._thread = QThread()
        self._worker = _Worker(fn, self.cancel_event)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        self._worker.progress.connect(self.progress)
        self._worker.finished.connect(self._on_finished)
        self._worker.failed.connect(self._on_failed)
        self.done = False

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self.cancel_event.set()

    def _stop_thread(self) -> None:
        self.done = True
        self._thread.quit()
        self._thread.wait(2000)

    def _on_finished(self, result: object) -> None:
        self._stop_thread()
        self.finished.emit(result)

    def _on_failed(self, exc: object) -> None:
        self._stop_thread()
        self.failed.emit(exc)
