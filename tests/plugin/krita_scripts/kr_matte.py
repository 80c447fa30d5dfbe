"""kritarunner entry (runs INSIDE Krita, offscreen): matte an image through the installed plug-in's code.

Usage: kritarunner -s kr_matte -f main <config.json>. Writes <out>/<depth>.{trimap,alpha,image}.raw and
<out>/result.json; the pytest side compares them with the daemon's direct answer.
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path


def _alpha_of(node, depth, w, h):
    data = bytes(node.pixelData(0, 0, w, h))
    if depth == "U8":
        return data[3::4]
    from array import array

    if depth == "U16":
        return bytes((v + 128) // 257 for v in array("H", data)[3::4])
    import struct

    vals = array("f", data)[3::4] if depth == "F32" else struct.unpack(f"={len(data) // 2}e", data)[3::4]
    return bytes(0 if v <= 0 else 255 if v >= 1 else int(v * 255 + 0.5) for v in vals)


def main(*args):
    argv = args[0] if args and isinstance(args[0], (list, tuple)) else args
    cfg = json.loads(Path(argv[0]).read_text())
    out = cfg["out"]
    report = {"cases": {}, "python": sys.version.split()[0]}
    try:
        sys.path.insert(0, cfg["pykrita"])
        import krita
        import semantic_matte  # bootstraps lib/ (plug-in core + client) exactly as Krita does
        from krita import Krita, Selection
        from semantic_matte import host

        from plugin.core import session
        from plugin.core.settings import Settings

        k = Krita.instance()
        report["krita"] = k.version()
        report["load_error"] = semantic_matte.LOAD_ERROR
        report["modules_numpy_torch"] = sorted(
            m for m in sys.modules if m.split(".")[0] in ("numpy", "torch")
        )
        sel_bytes = Path(cfg["selection"]).read_bytes()
        for depth in cfg["depths"]:
            t0 = time.time()
            doc = k.openDocument(cfg["image"])
            doc.setBatchmode(True)
            if depth != "U8":
                profile = "sRGB-elle-V2-g10.icc" if depth in ("F16", "F32") else ""
                doc.setColorSpace("RGBA", depth, profile)
                doc.waitForDone()
            node = doc.topLevelNodes()[-1]
            w, h = doc.width(), doc.height()
            sel = Selection()
            sel.setPixelData(sel_bytes, 0, 0, w, h)  # "select the subject"
            doc.setSelection(sel)
            s = Settings(server=cfg["server"], band=cfg["band"], output="layer", timeout_s=60.0)
            t = host.target(k, doc, node)
            job = host.read_inputs(t, s)
            res = session.run_matte(s.server, job, timeout=s.timeout_s)
            layer = host.add_cutout_layer(t, res, node.name() + " (cut-out)")
            alpha = _alpha_of(layer, depth, w, h)
            Path(out, depth + ".trimap.raw").write_bytes(job.trimap)
            Path(out, depth + ".alpha.raw").write_bytes(alpha)
            Path(out, depth + ".sent_alpha.raw").write_bytes(res.alpha)
            if depth == "U8":
                Path(out, "U8.image.raw").write_bytes(job.image)
            mask_kids = None
            if hasattr(doc, "createTransparencyMask"):  # Krita >= 5.2: the mask path works without a window
                # a first run with the inverted matte, then the real one: the re-run replaces the mask
                host.add_transparency_mask(k, krita, t, bytes(255 - v for v in res.alpha), "Semantic Matte")
                mask = host.add_transparency_mask(k, krita, t, res.alpha, "Semantic Matte")
                Path(out, depth + ".mask.raw").write_bytes(bytes(mask.pixelData(0, 0, w, h)))
                mask_kids = [[c.name(), c.type()] for c in node.childNodes()]
            report["cases"][depth] = {
                "w": w,
                "h": h,
                "image_dtype": job.image_dtype,
                "node": node.name(),
                "layers": [n.name() for n in doc.topLevelNodes()],
                "profile": node.colorProfile(),
                "seconds": round(time.time() - t0, 2),
                "class_shares": res.class_shares,
                "mask_children": mask_kids,
            }
            doc.close()
        # daemon down: a dead address must fail fast with the hint, not hang
        t0 = time.time()
        try:
            session.run_matte(f"tcp://127.0.0.1:{cfg['dead_port']}", job, timeout=2.0)
            report["down"] = {"error": None}
        except Exception as exc:  # noqa: BLE001 - any failure is the result here
            report["down"] = {
                "error": session.describe_error(exc, "dead"),
                "type": type(exc).__name__,
                "seconds": round(time.time() - t0, 2),
            }
    except Exception:  # noqa: BLE001 - reported to the pytest side
        report["error"] = traceback.format_exc()
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0
