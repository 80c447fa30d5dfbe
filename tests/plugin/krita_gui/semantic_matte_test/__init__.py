"""Test driver plug-in for real Krita under Xvfb. Inert unless $SEMANTIC_MATTE_TEST_CONFIG is set.

Scenario: open the test image, select the subject, open "Semantic Matte…" through its action, press Run
in the dialog, check the transparency mask + GUI responsiveness, undo once, then run against a dead daemon.
Writes <out>/result.json and exits with os._exit (Krita's own quit paths crash or hang headless).
"""

import json
import os
import time
import traceback
from pathlib import Path

from krita import Extension, Krita, Selection

try:
    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication
except ImportError:
    from PyQt5.QtCore import QTimer
    from PyQt5.QtWidgets import QApplication

CFG = json.loads(os.environ.get("SEMANTIC_MATTE_TEST_CONFIG", "null") or "null")


class Driver(Extension):
    def __init__(self, parent):
        super().__init__(parent)
        self.rep = {"log": []}
        self.t0 = time.time()

    def setup(self):
        if CFG:
            Krita.instance().notifier().windowCreated.connect(
                lambda: QTimer.singleShot(500, self.guard(self.start))
            )

    def createActions(self, window):
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    def log(self, *a):
        self.rep["log"].append(f"{time.time() - self.t0:.2f} " + " ".join(str(x) for x in a))

    def guard(self, fn):
        def run(*a):
            try:
                fn(*a)
            except Exception:  # noqa: BLE001 - reported to the pytest side
                self.rep["error"] = traceback.format_exc()
                self.finish()

        return run

    def finish(self):
        self.rep["seconds"] = round(time.time() - self.t0, 2)
        for d in Krita.instance().documents():
            d.setModified(False)
        with open(os.path.join(CFG["out"], "result.json"), "w") as f:
            json.dump(self.rep, f, indent=1)
        os._exit(0)

    def wait_for(self, cond, then, timeout_s, what):
        end = time.time() + timeout_s

        def poll():
            try:
                if cond():
                    then()
                elif time.time() > end:
                    raise TimeoutError("timed out waiting for " + what)
                else:
                    QTimer.singleShot(100, poll)
            except Exception:  # noqa: BLE001 - reported to the pytest side
                self.rep["error"] = traceback.format_exc()
                self.finish()

        QTimer.singleShot(100, poll)

    def on_finished(self, fn):
        """Connect ``fn`` to the next jobFinished only (never disconnect the panels' own slots)."""

        def once(ok, message):
            self.ctl.jobFinished.disconnect(once)
            self.guard(fn)(ok, message)

        self.ctl.jobFinished.connect(once)

    def select_subject(self):
        sel = Selection()
        sel.setPixelData(Path(CFG["selection"]).read_bytes(), 0, 0, CFG["width"], CFG["height"])
        self.doc.setSelection(sel)
        self.doc.waitForDone()

    def start_ticks(self):
        self.ticks, self.tick_t0 = 0, time.time()
        self.timer = QTimer()
        self.timer.setInterval(50)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self):
        self.ticks += 1

    def stop_ticks(self):
        self.timer.stop()
        el = time.time() - self.tick_t0
        return self.ticks, int(el / 0.05), round(el, 2)

    # -- scenario ---------------------------------------------------------------------------------
    def start(self):
        QTimer.singleShot(150000, self.finish)  # watchdog
        k = Krita.instance()
        import semantic_matte
        import semantic_matte.extension as ext

        self.rep["load_error"] = semantic_matte.LOAD_ERROR
        self.ctl = ext.controller()
        self.doc = k.openDocument(CFG["image"])
        k.activeWindow().qwindow().setGeometry(0, 0, 1400, 900)  # no window manager: size it ourselves
        k.activeWindow().addView(self.doc)
        self.node = self.doc.topLevelNodes()[0]
        self.doc.setActiveNode(self.node)  # asynchronous in 5.1: wait below
        self.select_subject()
        self.ctl.update_settings(
            server=CFG["server"], band=CFG["band"], output="mask", timeout_s=60.0, trimap_source="selection"
        )
        dockers = [d for d in k.dockers() if d.objectName() == "semantic_matte_docker"]
        self.rep["docker"] = bool(dockers)
        if dockers:
            dockers[0].show()
        self.wait_for(
            lambda: self.doc.activeNode() is not None and self.doc.activeNode().name() == self.node.name(),
            self.guard(self.open_dialog),
            10,
            "active node",
        )

    def open_dialog(self):
        Krita.instance().action("semantic_matte_run").trigger()
        dialogs = [w for w in QApplication.topLevelWidgets() if w.objectName() == "semantic_matte_dialog"]
        self.rep["dialog"] = bool(dialogs)
        self.dialog = dialogs[0]
        self.dialog.move(420, 160)  # no window manager under Xvfb: place it over the canvas
        from plugin.core.session import ConnectionState

        self.wait_for(
            lambda: self.ctl.status.state == ConnectionState.CONNECTED,
            self.guard(self.run_job),
            20,
            "connected state",
        )

    def run_job(self):
        self.rep["status_line"] = self.ctl.status.line
        self.on_finished(self.job_done)
        self.start_ticks()
        self.dialog.panel.run_btn.click()

    def job_done(self, ok, message):
        ticks, expected, el = self.stop_ticks()
        self.rep.update(
            ok=ok, message=message, ticks_during_job=ticks, expected_ticks=expected, job_seconds=el
        )
        w, h = CFG["width"], CFG["height"]
        kids = self.node.childNodes()
        self.rep["children"] = [[c.name(), c.type()] for c in kids]
        masks = [c for c in kids if c.type() == "transparencymask"]
        if masks:
            Path(CFG["out"], "mask.raw").write_bytes(bytes(masks[0].pixelData(0, 0, w, h)))
        Path(CFG["out"], "trimap.raw").write_bytes(self.ctl.last_input.trimap)
        QTimer.singleShot(500, self.guard(self.screenshot))

    def screenshot(self):
        QApplication.processEvents()
        self.dialog.grab().save(CFG["screenshot"])
        QApplication.primaryScreen().grabWindow(0).save(os.path.join(CFG["out"], "krita-window.png"))
        Krita.instance().action("edit_undo").trigger()
        self.doc.waitForDone()
        QTimer.singleShot(500, self.guard(self.after_undo))

    def after_undo(self):
        self.rep["children_after_undo"] = [[c.name(), c.type()] for c in self.node.childNodes()]
        # cancel: Cancel pressed right after Run -> "Cancelled.", nothing added
        self.select_subject()
        self.on_finished(self.cancel_done)
        self.dialog.panel.run_btn.click()
        self.dialog.panel.cancel_btn.click()

    def cancel_done(self, ok, message):
        self.rep["cancel"] = {
            "ok": ok,
            "message": message,
            "children": [[c.name(), c.type()] for c in self.node.childNodes()],
            "layers": [n.name() for n in self.doc.topLevelNodes()],
        }
        # cut-out layer with decontaminated colours + semantic preview layer
        self.select_subject()
        self.ctl.update_settings(output="layer", semantic_preview=True)
        self.on_finished(self.layer_done)
        self.dialog.panel.run_btn.click()

    def layer_done(self, ok, message):
        w, h = CFG["width"], CFG["height"]
        names = [n.name() for n in self.doc.topLevelNodes()]
        cut = [n for n in self.doc.topLevelNodes() if n.name().endswith("(cut-out)")]
        if cut:
            px = bytes(cut[0].pixelData(0, 0, w, h))
            Path(CFG["out"], "cutout.raw").write_bytes(px)
        Path(CFG["out"], "trimap_layer.raw").write_bytes(self.ctl.last_input.trimap)
        self.rep["layer"] = {
            "ok": ok,
            "message": message,
            "layers": names,
            "source_visible": self.node.visible(),
            "semantic_requested": self.ctl.last_input.want_semantic,
        }
        self.undo_log = []
        self.undo_step(3)

    def undo_step(self, n):
        if n == 0:
            self.rep["layer"]["after_undos"] = self.undo_log
            self.rep["layer"]["source_visible_after_undo"] = self.node.visible()
            self.ctl.update_settings(output="mask", semantic_preview=False)
            return self.down()
        Krita.instance().action("edit_undo").trigger()
        self.doc.waitForDone()

        def record():
            self.undo_log.append(
                [x.name() + ("" if x.visible() else " [hidden]") for x in self.doc.topLevelNodes()]
            )
            self.undo_step(n - 1)

        QTimer.singleShot(300, self.guard(record))

    def down(self):
        # daemon down: short deadline, GUI must stay live, message must say how to start it
        self.select_subject()
        self.ctl.update_settings(server=f"tcp://127.0.0.1:{CFG['dead_port']}", timeout_s=3.0)
        self.on_finished(self.down_done)
        self.start_ticks()
        self.down_t0 = time.time()
        self.dialog.panel.run_btn.click()

    def down_done(self, ok, message):
        ticks, expected, _ = self.stop_ticks()
        self.rep["down"] = {
            "ok": ok,
            "message": message,
            "seconds": round(time.time() - self.down_t0, 2),
            "ticks": ticks,
            "expected_ticks": expected,
            "status_line": self.dialog.panel.status.text(),
        }
        QTimer.singleShot(1500, self.guard(self.final_shot))

    def final_shot(self):
        self.rep["down"]["status_after"] = self.ctl.status.line
        self.dialog.grab().save(os.path.join(CFG["out"], "krita-dialog-down.png"))
        self.finish()


Krita.instance().addExtension(Driver(Krita.instance()))
