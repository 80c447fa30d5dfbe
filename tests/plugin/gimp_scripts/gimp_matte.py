# Runs INSIDE GIMP 3 (gimp-console-3.0 --batch-interpreter python-fu-eval -b - < this file).
# Config: $SEMANTIC_MATTE_TEST_CONFIG (json). Calls the installed plug-in non-interactively the way any
# script would and writes <out>/<case>.{alpha,trimap}.raw + <out>/result.json.
import json
import os
import time
import traceback

from gi.repository import Gegl, Gimp, Gio

cfg = json.loads(os.environ["SEMANTIC_MATTE_TEST_CONFIG"])
out = cfg["out"]
rep = {"gimp": Gimp.version(), "cases": {}}
PRECISIONS = {
    "u8": Gimp.Precision.U8_NON_LINEAR,
    "u16": Gimp.Precision.U16_NON_LINEAR,
    "float": Gimp.Precision.FLOAT_LINEAR,
}


def load(precision):
    img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(cfg["image"]))
    if precision != "u8":
        img.convert_precision(PRECISIONS[precision])
    layer = img.get_layers()[0]
    w, h = layer.get_width(), layer.get_height()
    sel = img.get_selection()  # "select the subject": write the selection channel directly
    buf = sel.get_buffer()
    with open(cfg["selection"], "rb") as f:
        buf.set(Gegl.Rectangle.new(0, 0, w, h), "Y u8", f.read())
    buf.flush()
    sel.update(0, 0, w, h)
    return img, layer, w, h


def run(img, layer, server, output="mask", timeout=60.0, preview=False, klass="", nonlocal_edges=True):
    proc = Gimp.get_pdb().lookup_procedure("plug-in-semantic-matte")
    c = proc.create_config()
    c.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    c.set_property("image", img)
    c.set_core_object_array("drawables", [layer])
    c.set_property("server", server)
    c.set_property("band", cfg["band"])
    c.set_property("output", output)
    c.set_property("timeout", timeout)
    c.set_property("semantic-preview", preview)
    c.set_property("custom-class", klass)
    c.set_property("nonlocal-edges", nonlocal_edges)
    t0 = time.time()
    res = proc.run(c)
    return res.index(0), time.time() - t0, Gimp.get_pdb().get_last_error()


try:
    rep["registered"] = Gimp.get_pdb().procedure_exists("plug-in-semantic-matte")
    cases = (
        ("u8", "u8", "mask", ""),
        ("u16", "u16", "mask", ""),
        ("float", "float", "layer", ""),
        ("fur", "u8", "mask", "fur"),
        ("band", "u8", "mask", "fur"),
    )
    for name, precision, output, klass in cases:
        img, layer, w, h = load(precision)
        if klass:  # a first run leaves a mask; the class run must replace it, not fail or blend
            run(img, layer, cfg["server"], output)
        status, secs, err = run(img, layer, cfg["server"], output, preview=output == "layer", klass=klass,
                                nonlocal_edges=name != "band")
        case = {
            "status": status.value_nick,
            "seconds": round(secs, 2),
            "error": err,
            "layers": [x.get_name() for x in img.get_layers()],
        }
        rect = Gegl.Rectangle.new(0, 0, w, h)
        if output == "mask" and layer.get_mask() is not None:
            alpha = layer.get_mask().get_buffer().get(rect, 1.0, "Y u8", Gegl.AbyssPolicy.NONE)
        else:
            cut = next(x for x in img.get_layers() if x.get_name().endswith("(cut-out)"))
            alpha = bytes(cut.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.NONE))[3::4]
            case["source_visible"] = layer.get_visible()
        with open(os.path.join(out, name + ".alpha.raw"), "wb") as f:
            f.write(bytes(alpha))
        rep["cases"][name] = case
        img.delete()
    # daemon down: the call must come back quickly with an error that says how to start the daemon
    img, layer, w, h = load("u8")
    status, secs, err = run(img, layer, f"tcp://127.0.0.1:{cfg['dead_port']}", timeout=2.0)
    rep["down"] = {
        "status": status.value_nick,
        "seconds": round(secs, 2),
        "error": err,
        "mask": layer.get_mask() is not None,
    }
    # a malformed address: a calling error that names the accepted forms
    status, secs, err = run(img, layer, "localhost", timeout=2.0)
    rep["bad_address"] = {"status": status.value_nick, "error": err}
except Exception:  # noqa: BLE001 - reported to the pytest side
    rep["error"] = traceback.format_exc()
with open(os.path.join(out, "result.json"), "w") as f:
    json.dump(rep, f, indent=1)
