"""Krita entry points: the "Semantic Matte…" action and the docker."""

from __future__ import annotations

import os
from typing import Any

import krita as krita_mod
from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

from .controller import Controller
from .ui import MatteDialog, MattePanel

ACTION_ID = "semantic_matte_run"
DOCKER_ID = "semantic_matte_docker"

_controller: Controller | None = None


def controller() -> Controller:
    """One controller per Krita process (the docker exists once per window, the settings once)."""
    global _controller
    if _controller is None:
        app = Krita.instance()
        try:
            from plugin.core.logs import setup_log

            setup_log(os.path.join(app.getAppDataLocation(), "semantic_matte.log"))
        except Exception:  # noqa: BLE001, S110 - logging is a convenience, never a reason to fail
            pass
        _controller = Controller(app, krita_mod)
    return _controller


class SemanticMatteDocker(DockWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("Semantic Matte")
        self.panel = MattePanel(controller())
        self.setWidget(self.panel)

    def canvasChanged(self, canvas: Any) -> None:
        pass


class SemanticMatteExtension(Extension):
    def __init__(self, parent: Any) -> None:
        super().__init__(parent)
        self.dialog: MatteDialog | None = None

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:
        action = window.createAction(ACTION_ID, "Semantic Matte…", "tools/scripts")
        action.triggered.connect(self.show_dialog)

    def show_dialog(self) -> None:
        if self.dialog is None:
            win = Krita.instance().activeWindow()
            self.dialog = MatteDialog(controller(), win.qwindow() if win else None)
        self.dialog.show()
        self.dialog.raise_()


def register() -> None:
    app = Krita.instance()
    app.addExtension(SemanticMatteExtension(app))
    app.addDockWidgetFactory(
        DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, SemanticMatteDocker)
    )
