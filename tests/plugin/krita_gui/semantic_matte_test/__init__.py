"""Test driver plug-in for real Krita under Xvfb. Inert unless $SEMANTIC_MATTE_TEST_CONFIG is set.

Scenario: open the test image, select the subject, open "Semantic Matte…" through its action, press Run
in the dialog, check the transparency mask + GUI responsiveness, undo once, then run against a dead daemon.
Writes <out>/result.json and exits with os._exit (Krita's own quit paths crash or hang headless).
"""

import json
import os
import time
import traceback

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
            Krita.instance().notifier().windowCreated.connect(lambda: QTimer.singleShot(500, self.guard(self.start)))

    def createActions(self, window):
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    def log(self, *a):
        self.rep["log"].append("%.2f %s" % (time.time() - self.t0, " ".join(str(x) for x in a)))

    def guard(self, fn):
        def run(*a):
            try:
                fn(*a)
            except Exception:
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
            except Exception:
                self.rep["error"] = traceback.format_exc()
                self.finish()
        QTimer.singleShot(100, poll)

    def select_subject(self):
        sel = Selection()
        sel.setPixelData(open(CFG["selection"], "rb").read(), 0, 0, CFG["width"], CFG["height"])
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
        k.activeWindow().qwindow().showMaximized()
        k.activeWindow().addView(self.doc)
        self.node = self.doc.topLevelNodes()[0]
        self.doc.setActiveNode(self.node)  # asynchronous in 5.1: wait below
        self.select_subject()
        self.ctl.update_settings(server=CFG["server"], band=CFG["band"], output="mask", timeout_s=60.0,
                                 trimap_source="selection")
        dockers = [d for d in k.dockers() if d.objectName() == "semantic_matte_docker"]
        self.rep["docker"] = bool(dockers)
        if dockers:
            dockers[0].show()
        self.wait_for(lambda: self.doc.activeNode() is not None and self.doc.activeNode().name() == self.node.name(),
                      self.guard(self.open_dialog), 10, "active node")

    def open_dialog(self):
        Krita.instance().action("semantic_matte_run").trigger()
        dialogs = [w for w in QApplication.topLevelWidgets() if w.objectName() == "semantic_matte_dialog"]
        self.rep["dialog"] = bool(dialogs)
        self.dialog = dialogs[0]
        self.dialog.move(420, 160)  # no window manager under Xvfb: place it over the canvas
        from plugin.core.session import ConnectionState

        self.wait_for(lambda: self.ctl.status.state == ConnectionState.CONNECTED, self.guard(self.run_job), 20,
                      "connected state")

    def run_job(self):
        self.rep["status_line"] = self.ctl.status.line
        self.ctl.jobFinished.connect(self.guard(self.job_done))
        self.start_ticks()
        self.dialog.panel.run_btn.click()

    def job_done(self, ok, message):
        self.ctl.jobFinished.disconnect()
        ticks, expected, el = self.stop_ticks()
        self.rep.update(ok=ok, message=message, ticks_during_job=ticks, expected_ticks=expected, job_seconds=el)
        w, h = CFG["width"], CFG["height"]
        kids = self.node.childNodes()
        self.rep["children"] = [[c.name(), c.type()] for c in kids]
        masks = [c for c in kids if c.type() == "transparencymask"]
        if masks:
            open(os.path.join(CFG["out"], "mask.raw"), "wb").write(bytes(masks[0].pixelData(0, 0, w, h)))
        open(os.path.join(CFG["out"], "trimap.raw"), "wb").write(self.ctl.last_input.trimap)
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
        # daemon down: short deadline, GUI must stay live, message must say how to start it
        self.select_subject()
        self.ctl.update_settings(server="tcp://127.0.0.1:%d" % CFG["dead_port"], timeout_s=3.0)
        self.ctl.jobFinished.connect(self.guard(self.down_done))
        self.start_ticks()
        self.down_t0 = time.time()
        self.dialog.panel.run_btn.click()

    def down_done(self, ok, message):
        ticks, expected, el = self.stop_ticks()
        self.rep["down"] = {"ok": ok, "message": message, "seconds": round(time.time() - self.down_t0, 2),
                            "ticks": ticks, "expected_ticks": expected,
                            "status_line": self.dialog.panel.status.text()}
        QTimer.singleShot(1500, self.guard(self.final_shot))

    def final_shot(self):
        self.rep["down"]["status_after"] = self.ctl.status.line
        self.dialog.grab().save(os.path.join(CFG["out"], "krita-dialog-down.png"))
        self.finish()


Krita.instance().addExtension(Driver(Krita.instance()))
