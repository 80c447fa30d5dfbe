"""State shared by the docker and the dialog: settings, connection state, the running job.

All methods run on the GUI thread; blocking calls go through ``jobs.BackgroundJob``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from plugin.core import session
from plugin.core.session import ConnectionState, MatteOutput, ServerStatus
from plugin.core.settings import Settings, parse_server

from . import host
from .jobs import BackgroundJob
from .qt import QObject, QTimer, pyqtSignal

log = logging.getLogger("semantic_matte")

SETTINGS_GROUP = "semantic_matte"
POLL_MS = 5000  # connection probe interval while a panel is visible


class Controller(QObject):
    statusChanged = pyqtSignal(object)  # ServerStatus
    progress = pyqtSignal(str, float)  # stage, fraction (-1 unknown)
    jobStarted = pyqtSignal()
    jobFinished = pyqtSignal(bool, str)  # ok, message
    settingsChanged = pyqtSignal(object)

    def __init__(self, krita: Any, krita_mod: Any) -> None:
        super().__init__()
        self.krita = krita
        self.krita_mod = krita_mod
        self.settings = Settings.from_json(krita.readSetting(SETTINGS_GROUP, "settings", "{}"))
        self.status = ServerStatus(ConnectionState.UNKNOWN)
        self.job: BackgroundJob | None = None
        self._probe: BackgroundJob | None = None
        self.last_result: MatteOutput | None = None
        self.last_node: Any = None
        self.last_input: Any = None
        self._target: host.Target | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self.check_connection)
        self._watchers = 0

    # -- settings ---------------------------------------------------------------------------------
    def update_settings(self, **changes: Any) -> None:
        if "server" in changes:
            try:
                changes["server"] = parse_server(changes["server"])
            except ValueError as exc:  # say so in the panel; the last good address stays in use and stored
                self._set_status(ServerStatus(ConnectionState.ERROR, str(exc)))
                return
        for k, v in changes.items():
            setattr(self.settings, k, v)
        self.settings = self.settings.validated()
        self.krita.writeSetting(SETTINGS_GROUP, "settings", self.settings.to_json())
        self.settingsChanged.emit(self.settings)
        if "server" in changes:
            self.check_connection()

    # -- connection -------------------------------------------------------------------------------
    def watch(self, on: bool) -> None:
        """Panels call this when shown/hidden: probe periodically only while someone looks."""
        self._watchers = max(0, self._watchers + (1 if on else -1))
        if self._watchers and not self._timer.isActive():
            self._timer.start()
            self.check_connection()
        elif not self._watchers:
            self._timer.stop()

    def check_connection(self) -> None:
        if self._probe is not None and not self._probe.done:
            return
        server, timeout = self.settings.server, self.settings.connect_timeout_s
        if self.status.state in (ConnectionState.UNKNOWN, ConnectionState.NOT_RUNNING):
            self._set_status(ServerStatus(ConnectionState.CONNECTING))
        job = BackgroundJob(lambda progress, cancel: session.probe(server, timeout), self)
        job.finished.connect(self._set_status)
        job.failed.connect(lambda exc: self._set_status(ServerStatus(ConnectionState.ERROR, str(exc))))
        self._probe = job
        job.start()

    def _set_status(self, status: ServerStatus) -> None:
        self.status = status
        self.statusChanged.emit(status)

    # -- the matte job ----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.job is not None and not self.job.done

    def run(self) -> bool:
        """Start a matte of the active layer; False (with jobFinished(False, msg)) if it cannot start."""
        if self.busy:
            return False
        try:
            t = host.target(self.krita)
            inp = host.read_inputs(t, self.settings, len(self.status.classes))
        except host.HostError as exc:
            self.jobFinished.emit(False, str(exc))
            return False
        server, timeout, connect = (
            self.settings.server,
            self.settings.timeout_s,
            self.settings.connect_timeout_s,
        )
        self._target = t
        self.last_input = inp  # kept for the log / tests: exactly what was sent
        self._t0 = time.monotonic()
        job = BackgroundJob(
            lambda progress, cancel: session.run_matte(
                server, inp, timeout=timeout, progress=progress, cancel=cancel, connect_timeout=connect
            ),
            self,
        )
        job.progress.connect(self.progress)
        job.finished.connect(self._on_result)
        job.failed.connect(self._on_failed)
        self.job = job
        log.info(
            "matte %dx%d %s -> %s (output %s, band %d)",
            inp.width,
            inp.height,
            inp.image_dtype,
            server,
            self.settings.output,
            self.settings.band,
        )
        self.jobStarted.emit()
        self.progress.emit("sending", 0.0)
        job.start()
        return True

    def cancel(self) -> None:
        if self.busy:
            self.job.cancel()  # type: ignore[union-attr]
            self.progress.emit("cancelling", -1.0)

    def _on_failed(self, exc: BaseException) -> None:
        msg = session.describe_error(exc, self.settings.server)
        log.warning("matte failed: %s\n%s", msg, getattr(exc, "__traceback_text__", ""))
        if not isinstance(exc, session.JobCancelled):
            self.check_connection()
        self.jobFinished.emit(False, msg)

    def _on_result(self, out: MatteOutput) -> None:
        t = self._target
        try:
            if t is None:
                raise host.HostError("internal: no target")
            self.last_result = out
            if self.settings.output == "layer":
                node = host.add_cutout_layer(t, out, t.node.name() + " (cut-out)", self.krita)
            else:
                node = host.add_transparency_mask(self.krita, self.krita_mod, t, out.alpha, "Semantic Matte")
            self.last_node = node
            if out.semantic is not None:
                host.add_semantic_preview(t, out, node)
        except Exception as exc:  # why: the job succeeded, so say precisely that writing back failed
            log.exception("writing the result failed")
            self.jobFinished.emit(False, f"Could not write the result: {exc}")
            return
        log.info("done in %.2f s, classes %s", out.seconds, out.class_shares)
        msg = f"Done in {out.seconds:.1f} s"
        if out.class_shares:
            msg += " · classes: " + session.format_shares(out.class_shares)
            if out.semantic is not None:
                from plugin.core.preview import legend

                msg += "\nSemantic map layer: " + legend(self.status.classes, out.class_shares)
        elif self.settings.semantic_preview and out.semantic is None:
            msg += " · (no semantic preview: image too large)"
        self.jobFinished.emit(True, msg)
