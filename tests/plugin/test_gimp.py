"""GIMP 3: the installed plug-in inside real GIMP 3.0 (Debian trixie chroot), batch mode and dialog under Xvfb."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hostkit
import pytest

pytestmark = [
    pytest.mark.gimp,
    pytest.mark.skipif(hostkit.have_gimp() is not None, reason=hostkit.have_gimp() or ""),
]

HERE = Path(__file__).resolve().parent
SCREENSHOTS = hostkit.ROOT / "docs" / "screenshots"


def _install(tmp: Path) -> Path:
    profile = tmp / "gimp-profile"
    subprocess.run(
        [
            sys.executable,
            str(hostkit.ROOT / "install" / "install_plugins.py"),
            "--gimp",
            "--gimp-dir",
            str(profile / "plug-ins"),
            "--gimp-python",
            str(hostkit.CHROOT / "usr/bin/python3"),
            "--vendor",
            "never",
            "--manifest",
            str(tmp / "manifest.json"),
        ],
        check=True,
        timeout=120,
    )
    return profile


def test_gimp_batch_matte_depths_and_daemon_down(daemon: str, case: dict, tmp_path: Path) -> None:
    import numpy as np

    profile = _install(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    cfg = dict(case, out=str(out), server=daemon, band=8, dead_port=hostkit.free_port())
    script = HERE / "gimp_scripts" / "gimp_matte.py"
    shutil.copy2(script, tmp_path / "batch.py")
    t0 = time.monotonic()
    r = hostkit.run_in_chroot(
        f"gimp-console-3.0 -i --batch-interpreter python-fu-eval -b - --quit < {tmp_path / 'batch.py'}",
        {"GIMP3_DIRECTORY": str(profile), "SEMANTIC_MATTE_TEST_CONFIG": json.dumps(cfg)},
        180,
    )
    path = out / "result.json"
    assert path.exists(), f"rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    rep = json.loads(path.read_text())
    print(f"GIMP {rep.get('gimp')} batch: {time.monotonic() - t0:.1f} s", json.dumps(rep))
    assert "error" not in rep, rep["error"]
    assert rep["registered"]
    from plugin.core.trimap import trimap_from_selection

    tri = trimap_from_selection(Path(case["selection"]).read_bytes(), case["width"], case["height"], 8)
    alpha, _, _ = hostkit.direct_alpha(daemon, case["image"], tri)
    for name in ("u8", "u16", "float"):
        c = rep["cases"][name]
        assert c["status"] == "success", c
        got = np.frombuffer((out / f"{name}.alpha.raw").read_bytes(), np.uint8).reshape(alpha.shape)
        diff = np.abs(got.astype(int) - alpha.astype(int))
        if name == "float":  # linear-light float image, converted back to sRGB by babl: near, not equal
            assert diff.mean() < 0.5 and (diff > 8).mean() < 0.002, (name, diff.mean())
            assert c["layers"] == ["Semantic map", "Background (cut-out)", "Background"], c["layers"]
            assert c["source_visible"] is False
        else:
            assert diff.max() == 0, (name, diff.max())
    # class override (custom-class argument) reaches the daemon: same answer as a direct request with it
    assert rep["cases"]["fur"]["status"] == "success"
    fur, _, _ = hostkit.direct_alpha(daemon, case["image"], tri, classes=["fur"])
    got = np.frombuffer((out / "fur.alpha.raw").read_bytes(), np.uint8).reshape(fur.shape)
    assert np.abs(got.astype(int) - fur.astype(int)).max() == 0
    print("class override changed", f"{(fur != alpha).mean():.3%}", "of the pixels (tiny random model)")
    # the nonlocal-edges argument (on by default) off asks for refine="band" (with the fur class: the tiny model's
    # own classifier calls the test image translucent, which switches the nonlocal term off)
    assert rep["cases"]["band"]["status"] == "success"
    band, _, _ = hostkit.direct_alpha(daemon, case["image"], tri, classes=["fur"], refine="band")
    got = np.frombuffer((out / "band.alpha.raw").read_bytes(), np.uint8).reshape(band.shape)
    assert np.abs(got.astype(int) - band.astype(int)).max() == 0 and (band != fur).any()
    down = rep["down"]
    assert down["status"] == "execution-error" and "semantic-matte serve" in (down["error"] or "")
    assert down["seconds"] < 6 and not down["mask"]
    bad = rep["bad_address"]
    assert bad["status"] == "calling-error" and "not a daemon address: 'localhost'" in (bad["error"] or ""), bad
    log = (profile / "semantic-matte.log").read_text()  # the file users attach to bug reports
    assert "done in" in log and "failed: Daemon not reachable" in log


def test_gimp_dialog_under_xvfb(daemon: str, case: dict, tmp_path: Path) -> None:
    profile = _install(tmp_path)
    shot = tmp_path / "gimp-dialog.png"
    batch = tmp_path / "gui.py"
    batch.write_text(
        "from gi.repository import Gimp, Gio, Gegl\n"
        f"img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path({case['image']!r}))\n"
        "layer = img.get_layers()[0]\n"
        f"w, h = {case['width']}, {case['height']}\n"
        "sel = img.get_selection(); buf = sel.get_buffer()\n"
        f"buf.set(Gegl.Rectangle.new(0, 0, w, h), 'Y u8', open({case['selection']!r}, 'rb').read()); buf.flush()\n"
        "Gimp.Display.new(img)\n"
        "proc = Gimp.get_pdb().lookup_procedure('plug-in-semantic-matte')\n"
        "c = proc.create_config()\n"
        "c.set_property('run-mode', Gimp.RunMode.INTERACTIVE)\n"
        "c.set_property('image', img); c.set_core_object_array('drawables', [layer])\n"
        f"c.set_property('server', {daemon!r}); c.set_property('band', 8)\n"
        "res = proc.run(c)\n"
        f"open({str(tmp_path / 'status.txt')!r}, 'w').write(res.index(0).value_nick + ' ' + str(layer.get_mask() is not None))\n"
    )
    t0 = time.monotonic()
    r = hostkit.run_in_chroot(
        f"xvfb-run -a -s '-screen 0 1280x800x24' gimp-3.0 -n -d -f --batch-interpreter python-fu-eval -b - --quit "
        f"< {batch}",
        {"GIMP3_DIRECTORY": str(profile), "SEMANTIC_MATTE_GIMP_SCREENSHOT": str(shot)},
        180,
    )
    status = (tmp_path / "status.txt").read_text() if (tmp_path / "status.txt").exists() else None
    print(f"GIMP GUI run {time.monotonic() - t0:.1f} s, status {status}")
    assert status == "success True", f"rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert shot.exists() and shot.stat().st_size > 10_000
    if os.environ.get("SEMANTIC_MATTE_UPDATE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, SCREENSHOTS / "gimp-dialog.png")
