"""The Krita plug-in's Qt layer in a real PyQt6 application (what Krita 6 embeds), offscreen.

usage: panel_pyqt6.py REPO SERVER  — prints "OK" and exits 0, or exits non-zero with the reason.
The package's ``__init__`` registers the plug-in with Krita, so its modules are loaded without it;
Krita's settings store (readSetting / writeSetting) is the one stand-in: a dict.
"""

import os
import sys
import time
import types

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
repo, server = sys.argv[1], sys.argv[2]
sys.path.insert(0, repo)
package = types.ModuleType("semantic_matte")
package.__path__ = [os.path.join(repo, "plugin", "krita", "semantic_matte")]
sys.modules["semantic_matte"] = package

from semantic_matte import qt
from semantic_matte.controller import SETTINGS_GROUP, Controller
from semantic_matte.jobs import BackgroundJob
from semantic_matte.ui import MatteDialog, MattePanel

from plugin.core import session
from plugin.core.session import ConnectionState, JobCancelled, MatteInput
from plugin.core.settings import Settings

assert qt.QT_MAJOR == 6, qt.QT_MAJOR
app = qt.QApplication([])


class SettingsStore:
    def __init__(self) -> None:
        self.values: dict = {}

    def readSetting(self, group: str, key: str, default: str) -> str:
        return self.values.get((group, key), default)

    def writeSetting(self, group: str, key: str, value: str) -> None:
        self.values[(group, key)] = value


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.005)


# 1. Showing the dialog starts the periodic probe, in a QThread, against the real daemon.
store = SettingsStore()
ctl = Controller(store, None)
ctl.update_settings(server=server)
dialog = MatteDialog(ctl)
dialog.show()
wait_for(lambda: ctl.status.state is ConnectionState.CONNECTED, "the connection probe")
panel = dialog.panel
assert "●" in panel.status.text() and "#2e7d32" in panel.status.text(), panel.status.text()
assert panel.klass.count() == 1 + len(ctl.status.classes) and len(ctl.status.classes) >= 2

# 2. Widgets -> settings -> Krita's store, and a second panel (the docker) follows.
docker = MattePanel(ctl)
panel.band.setValue(37)
assert panel.nonlocal_edges.isChecked()  # the default: refine="nonlocal"
panel.nonlocal_edges.setChecked(False)
saved = Settings.from_json(store.readSetting(SETTINGS_GROUP, "settings", "{}"))
assert saved.refine_mode() == "band" and not docker.nonlocal_edges.isChecked(), saved
panel.refine.setChecked(False)
panel.klass.setCurrentIndex(2)
saved = Settings.from_json(store.readSetting(SETTINGS_GROUP, "settings", "{}"))
assert (saved.band, saved.refine_edges, saved.class_override) == (37, False, ctl.status.classes[1]), saved
assert saved.refine_mode() == "off" and not panel.nonlocal_edges.isEnabled()  # nonlocal only refines
assert (docker.band.value(), docker.refine.isChecked()) == (37, False)

# 3. A real matte request in a BackgroundJob: progress and result arrive on the GUI thread.
w, h = 96, 64
image = bytes((x * 3 + y) % 256 for y in range(h) for x in range(w) for _ in range(3))
trimap = bytes(255 if 32 <= x < 64 else (128 if 24 <= x < 72 else 0) for y in range(h) for x in range(w))
job_input = MatteInput(w, h, image, "|u1", trimap)
seen: dict = {"stages": [], "threads": set()}


def record(key):
    def slot(*args):
        seen["threads"].add(qt.QThread.currentThread() is app.thread())
        if key == "progress":
            seen["stages"].append(args[0])
        else:
            seen[key] = args[0]

    return slot


job = BackgroundJob(lambda progress, cancel: session.run_matte(server, job_input, timeout=60, progress=progress,
                                                                cancel=cancel))
job.progress.connect(record("progress"))
job.finished.connect(record("result"))
job.failed.connect(record("error"))
job.start()
wait_for(lambda: job.done, "the matte job")
assert "error" not in seen, seen.get("error")
alpha = seen["result"].alpha
assert len(alpha) == w * h and alpha[5] == 0 and alpha[40] == 255, (alpha[5], alpha[40])
assert seen["stages"] and seen["threads"] == {True}, seen

# 4. Cancel: the job ends with JobCancelled (the request is withdrawn from the daemon).
job = BackgroundJob(lambda progress, cancel: session.run_matte(server, job_input, timeout=60, cancel=cancel))
job.finished.connect(record("late_result"))
job.failed.connect(record("cancel_error"))
job.cancel()
job.start()
wait_for(lambda: job.done, "the cancelled job")
assert isinstance(seen.get("cancel_error"), JobCancelled), seen
assert session.describe_error(seen["cancel_error"]) == "Cancelled."

# 5. A malformed address: the panel says why, and the address in use stays.
before = ctl.settings.server
ctl.update_settings(server="localhost")
assert ctl.status.state is ConnectionState.ERROR and "not a daemon address" in panel.status.text(), panel.status.text()
assert ctl.settings.server == before

# 6. The daemon gone: the panel says "not running" within the connect timeout.
ctl.update_settings(server="tcp://127.0.0.1:9", connect_timeout_s=1.0)
wait_for(lambda: ctl.status.state is ConnectionState.NOT_RUNNING, "the failed probe", timeout=20)
assert "#c62828" in panel.status.text() and "not running" in panel.status.text().lower(), panel.status.text()
dialog.close()
print("OK")
