"""Widgets: one options panel used by both the docker and the "Semantic Matte…" dialog."""

from __future__ import annotations

from typing import Any

from plugin.core.session import ConnectionState, ServerStatus
from plugin.core.settings import Settings

from .controller import Controller
from .qt import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

_STATE_COLOURS = {
    ConnectionState.CONNECTED: "#2e7d32",
    ConnectionState.STARTING: "#b26a00",
    ConnectionState.CONNECTING: "#b26a00",
    ConnectionState.NOT_RUNNING: "#c62828",
    ConnectionState.ERROR: "#c62828",
}
OUTPUT_LABELS = (("mask", "Transparency mask"), ("layer", "Cut-out layer (decontaminated)"))
SOURCE_LABELS = (("selection", "Selection + band"), ("layer", "Trimap layer"))


class MattePanel(QWidget):
    def __init__(self, ctl: Controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctl = ctl
        self.setObjectName("semantic_matte_panel")
        lay = QVBoxLayout(self)
        self.status = QLabel("…")
        self.status.setObjectName("status")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)

        form = QFormLayout()
        self.server = QLineEdit()
        self.server.setObjectName("server")
        self.check = QPushButton("Check")
        row = QHBoxLayout()
        row.addWidget(self.server, 1)
        row.addWidget(self.check)
        form.addRow("Server", row)
        self.source = QComboBox()
        for key, label in SOURCE_LABELS:
            self.source.addItem(label, key)
        form.addRow("Trimap from", self.source)
        self.band = QSpinBox()
        self.band.setRange(0, 1000)
        self.band.setSuffix(" px")
        form.addRow("Band width", self.band)
        self.trimap_layer = QLineEdit()
        form.addRow("Trimap layer", self.trimap_layer)
        self.klass = QComboBox()
        self.klass.setObjectName("classes")
        form.addRow("Class", self.klass)
        self.output = QComboBox()
        for key, label in OUTPUT_LABELS:
            self.output.addItem(label, key)
        form.addRow("Output", self.output)
        self.preview = QCheckBox("Semantic preview (class map layer)")
        form.addRow("", self.preview)
        self.refine = QCheckBox("Refine fine edges (closed-form, where the network is unsure)")
        form.addRow("", self.refine)
        self.nonlocal_edges = QCheckBox("Nonlocal edges (better hair and fur; off: faster)")
        form.addRow("", self.nonlocal_edges)
        self.timeout = QSpinBox()
        self.timeout.setRange(1, 3600)
        self.timeout.setSuffix(" s")
        form.addRow("Timeout", self.timeout)
        lay.addLayout(form)

        self.bar = QProgressBar()
        self.bar.setRange(0, 100)
        self.bar.setValue(0)
        lay.addWidget(self.bar)
        self.message = QLabel("")
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        lay.addWidget(self.message)
        buttons = QHBoxLayout()
        self.run_btn = QPushButton("Run")
        self.run_btn.setObjectName("run")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setObjectName("cancel")
        self.cancel_btn.setEnabled(False)
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        lay.addLayout(buttons)
        lay.addStretch(1)

        self._load(ctl.settings)
        self._classes: tuple[str, ...] = ()
        self._fill_classes(ctl.status)
        self._on_status(ctl.status)
        ctl.statusChanged.connect(self._on_status)
        ctl.settingsChanged.connect(self._on_settings)  # keep docker and dialog in step
        ctl.progress.connect(self._on_progress)
        ctl.jobStarted.connect(self._on_started)
        ctl.jobFinished.connect(self._on_finished)
        self.check.clicked.connect(ctl.check_connection)
        self.run_btn.clicked.connect(self._run)
        self.cancel_btn.clicked.connect(ctl.cancel)
        self.server.editingFinished.connect(lambda: ctl.update_settings(server=self.server.text().strip()))
        self.source.currentIndexChanged.connect(lambda _: self._save())
        self.band.valueChanged.connect(lambda _: self._save())
        self.trimap_layer.editingFinished.connect(self._save)
        self.klass.currentIndexChanged.connect(lambda _: self._save())
        self.output.currentIndexChanged.connect(lambda _: self._save())
        self.preview.toggled.connect(lambda _: self._save())
        self.refine.toggled.connect(lambda _: self._save())
        self.nonlocal_edges.toggled.connect(lambda _: self._save())
        self.timeout.valueChanged.connect(lambda _: self._save())

    # -- settings <-> widgets ---------------------------------------------------------------------
    def _load(self, s: Settings) -> None:
        self._loading = True
        self.server.setText(s.server)
        self.source.setCurrentIndex(max(0, self.source.findData(s.trimap_source)))
        self.band.setValue(s.band)
        self.trimap_layer.setText(s.trimap_layer)
        self.output.setCurrentIndex(max(0, self.output.findData(s.output)))
        self.preview.setChecked(s.semantic_preview)
        self.refine.setChecked(s.refine_edges)
        self.nonlocal_edges.setChecked(s.nonlocal_edges)
        self.timeout.setValue(int(s.timeout_s))
        self._sync_enabled()
        self._loading = False

    def _on_settings(self, s: Settings) -> None:
        if not getattr(self, "_loading", False):
            self._load(s)
            self.klass.setCurrentIndex(max(0, self.klass.findData(s.class_override)))

    def _sync_enabled(self) -> None:
        by_layer = self.source.currentData() == "layer"
        self.band.setEnabled(not by_layer)
        self.trimap_layer.setEnabled(by_layer)
        self.nonlocal_edges.setEnabled(self.refine.isChecked())

    def _save(self) -> None:
        if getattr(self, "_loading", False):
            return
        self._sync_enabled()
        self._loading = True  # our own settingsChanged echo must not reload the widgets mid-edit
        try:
            self._push()
        finally:
            self._loading = False

    def _push(self) -> None:
        self.ctl.update_settings(
            trimap_source=self.source.currentData(),
            band=self.band.value(),
            trimap_layer=self.trimap_layer.text().strip() or "trimap",
            class_override=self.klass.currentData() or "",
            output=self.output.currentData(),
            semantic_preview=self.preview.isChecked(),
            refine_edges=self.refine.isChecked(),
            nonlocal_edges=self.nonlocal_edges.isChecked(),
            timeout_s=float(self.timeout.value()),
        )

    def _fill_classes(self, status: ServerStatus) -> None:
        if status.classes == self._classes:
            return
        self._loading = True
        self._classes = status.classes
        self.klass.clear()
        self.klass.addItem("Automatic (classifier)", "")
        for name in status.classes:
            self.klass.addItem(name, name)
        self.klass.setCurrentIndex(max(0, self.klass.findData(self.ctl.settings.class_override)))
        self._loading = False

    # -- controller signals -----------------------------------------------------------------------
    def _on_status(self, status: ServerStatus) -> None:
        colour = _STATE_COLOURS.get(status.state, "#555")
        self.status.setText(f"<span style='color:{colour}'>●</span> {status.line}")
        self.status.setToolTip(status.message)
        self._fill_classes(status)

    def _run(self) -> None:
        self._save()
        self.message.setText("")
        self.ctl.run()

    def _on_started(self) -> None:
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.bar.setRange(0, 100)
        self.bar.setValue(0)

    def _on_progress(self, stage: str, done: float) -> None:
        if done < 0:
            self.bar.setRange(0, 0)  # busy indicator when the stage has no fraction
        else:
            self.bar.setRange(0, 100)
            self.bar.setValue(int(done * 100))
        self.message.setText(stage.replace("_", " ").capitalize() + "…")

    def _on_finished(self, ok: bool, msg: str) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.bar.setRange(0, 100)
        self.bar.setValue(100 if ok else 0)
        self.message.setText(msg)

    def showEvent(self, ev: Any) -> None:
        super().showEvent(ev)
        self.ctl.watch(True)

    def hideEvent(self, ev: Any) -> None:
        super().hideEvent(ev)
        self.ctl.watch(False)


class MatteDialog(QDialog):
    """Non-modal: the editor stays usable while the job runs."""

    def __init__(self, ctl: Controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("semantic_matte_dialog")
        self.setWindowTitle("Semantic Matte")
        self.setModal(False)
        lay = QVBoxLayout(self)
        self.panel = MattePanel(ctl, self)
        lay.addWidget(self.panel)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        lay.addWidget(close)
        self.resize(420, 460)
