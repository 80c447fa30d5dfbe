#!/usr/bin/env python3
"""Semantic Matte for GIMP 3: Filters > Semantic Matte…  (procedure ``plug-in-semantic-matte``).

Selection (or a painted trimap layer) -> trimap -> daemon -> alpha as a layer mask or a new cut-out layer.
The plug-in is its own process, so GIMP's UI never waits on the daemon. Non-interactive use:

    pdb = Gimp.get_pdb(); proc = pdb.lookup_procedure("plug-in-semantic-matte")
    cfg = proc.create_config(); cfg.set_property("image", img); cfg.set_core_object_array("drawables", [layer])
    cfg.set_property("server", "tcp://127.0.0.1:5555"); cfg.set_property("band", 10); proc.run(cfg)
"""

from __future__ import annotations

import os
import sys
import threading
import time


def _setup_paths() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    lib = os.path.join(here, "lib")
    repo = os.path.abspath(os.path.join(here, "..", "..", ".."))
    paths = (
        [lib]
        if os.path.isdir(lib)
        else [repo]
        if os.path.isfile(os.path.join(repo, "backend", "client.py"))
        else []
    )
    try:
        import msgpack  # noqa: F401
        import zmq  # noqa: F401
    except ImportError:
        tag = "{}-cp{}{}".format(sys.platform, *sys.version_info[:2])
        for name in (tag, f"{sys.platform}-abi3" if sys.version_info >= (3, 12) else "", "common"):
            p = os.path.join(here, "vendor", name)
            if name and os.path.isdir(p):
                paths.append(p)
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)


_setup_paths()

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib, GObject

PROC = "plug-in-semantic-matte"
OUTPUTS = (("mask", "Layer mask"), ("layer", "Cut-out layer (decontaminated colours)"))
SOURCES = (("selection", "Selection + band"), ("layer", "Trimap layer (by name)"))

try:  # the shared code; a broken install must still register and report itself
    from plugin.core import pixels, preview, session, trimap
    from plugin.core.logs import setup_log
    from plugin.core.settings import Settings, parse_server

    LOAD_ERROR = ""
except ImportError as _exc:
    LOAD_ERROR = (
        f"Semantic Matte cannot load its libraries ({_exc}); re-run install_plugins.py or install "
        f"python3-zmq / python3-msgpack for GIMP's Python {sys.version.split()[0]}"
    )

try:
    from backend.classes import SIMD_CLASSES
except ImportError:
    SIMD_CLASSES = ()


def _fail(procedure, msg: str, status=Gimp.PDBStatusType.EXECUTION_ERROR):
    return procedure.new_return_values(status, GLib.Error(msg))


def _choice(pairs) -> Gimp.Choice:
    c = Gimp.Choice.new()
    for i, (nick, label) in enumerate(pairs):
        c.add(nick, i, label, "")
    return c


def _format_for(image) -> tuple[str, str]:
    """babl format to read the layer with, and the protocol dtype (babl does the depth conversion)."""
    p = image.get_precision()
    name = p.value_nick if hasattr(p, "value_nick") else str(p)
    if name.startswith("u8"):
        return "R'G'B' u8", pixels.U8
    if name.startswith("u16"):
        return "R'G'B' u16", pixels.U16
    return "R'G'B' float", pixels.F32  # u32 / half / float / double; "'" = perceptual (sRGB TRC)


def _read_inputs(image, layer, s: Settings) -> session.MatteInput:
    w, h = layer.get_width(), layer.get_height()
    ox, oy = layer.get_offsets()[1:]
    rect = Gegl.Rectangle.new(0, 0, w, h)
    fmt, dtype = _format_for(image)
    data = bytes(layer.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP))
    if s.trimap_source == "layer":
        tl = image.get_layer_by_name(s.trimap_layer)
        if tl is None:
            raise ValueError(
                f"No layer named '{s.trimap_layer}' (white = foreground, black = background, grey = unknown)"
            )
        tox, toy = tl.get_offsets()[1:]
        ya = bytes(
            tl.get_buffer().get(
                Gegl.Rectangle.new(ox - tox, oy - toy, w, h), 1.0, "Y'A u8", Gegl.AbyssPolicy.NONE
            )
        )
        tri = trimap.trimap_from_grey(ya[0::2], w, h, ya[1::2])
    else:
        bounds = Gimp.Selection.bounds(image)
        if not bounds[1]:
            raise ValueError("Select the subject first (any selection tool), or use a trimap layer")
        sel = bytes(
            image.get_selection()
            .get_buffer()
            .get(Gegl.Rectangle.new(ox, oy, w, h), 1.0, "Y u8", Gegl.AbyssPolicy.NONE)
        )
        tri = trimap.trimap_from_selection(sel, w, h, s.band)
    if trimap.trimap_stats(tri)["unknown"] == 0:
        raise ValueError("The trimap has no unknown region: increase the band width")
    return session.MatteInput(
        w,
        h,
        data,
        dtype,
        tri,
        s.class_override,
        want_foreground=s.output == "layer",
        want_semantic=s.semantic_preview and preview.semantic_fits(w, h, len(SIMD_CLASSES)),
        refine=s.refine_mode(),
    )


def _write_result(image, layer, out: session.MatteOutput, s: Settings, fmt_src: bytes | None = None):
    w, h = layer.get_width(), layer.get_height()
    rect = Gegl.Rectangle.new(0, 0, w, h)
    image.undo_group_start()
    try:
        if s.output == "layer":
            if out.foreground is not None:
                rgba = pixels.foreground_to_bgra_u8(
                    out.foreground, out.foreground_dtype, out.alpha, order="RGBA"
                )
            else:
                rgb = bytes(layer.get_buffer().get(rect, 1.0, "R'G'B' u8", Gegl.AbyssPolicy.CLAMP))
                rgba = pixels.foreground_to_bgra_u8(rgb, pixels.U8, out.alpha, order="RGBA")
            new = Gimp.Layer.new(
                image,
                layer.get_name() + " (cut-out)",
                w,
                h,
                Gimp.ImageType.RGBA_IMAGE,
                100.0,
                Gimp.LayerMode.NORMAL,
            )
            image.insert_layer(new, layer.get_parent(), image.get_item_position(layer))
            new.set_offsets(*layer.get_offsets()[1:])
            buf = new.get_buffer()
            buf.set(rect, "R'G'B'A u8", rgba)
            buf.flush()
            new.update(0, 0, w, h)
            layer.set_visible(False)
            result = new
        else:
            # Replace rather than overwrite an existing mask: removing and adding masks are undo steps,
            # a direct buffer write is not (and merge_shadow would clip the write to the selection).
            if layer.get_mask() is not None:
                layer.remove_mask(Gimp.MaskApplyMode.DISCARD)
            mask = layer.create_mask(Gimp.AddMaskType.WHITE)
            layer.add_mask(mask)
            buf = mask.get_buffer()
            buf.set(rect, "Y u8", out.alpha)
            buf.flush()
            mask.update(0, 0, w, h)
            result = mask
        if out.semantic is not None:
            sem = Gimp.Layer.new(
                image, "Semantic map", w, h, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL
            )
            top = result if isinstance(result, Gimp.Layer) else layer  # preview on top of everything we made
            image.insert_layer(sem, top.get_parent(), image.get_item_position(top))
            sem.set_offsets(*layer.get_offsets()[1:])
            sbuf = sem.get_buffer()
            sbuf.set(
                rect, "R'G'B'A u8", preview.preview_pixels(out.semantic, out.semantic_shape, order="RGBA")
            )
            sbuf.flush()
            sem.update(0, 0, w, h)
    finally:
        image.undo_group_end()
    Gimp.displays_flush()
    return result


def _interactive(procedure, config) -> bool:
    """Options dialog with a live connection line; True = run."""
    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gtk", "3.0")
    from gi.repository import GimpUi, Gtk

    GimpUi.init(PROC)
    dlg = GimpUi.ProcedureDialog.new(procedure, config, "Semantic Matte")
    status = Gtk.Label(label="Checking the daemon…", xalign=0.0)
    status.set_line_wrap(True)
    dlg.get_content_area().pack_start(status, False, False, 6)
    status.show()
    dlg.fill(None)
    box: dict = {}

    def probe():
        box["st"] = session.probe(config.get_property("server"), 3.0)

    threading.Thread(target=probe, daemon=True).start()

    def poll():
        if "st" not in box:
            return True
        st = box["st"]
        status.set_markup(
            GLib.markup_escape_text(
                ("● " if st.state == session.ConnectionState.CONNECTED else "○ ") + st.line
            )
        )
        return False

    GLib.timeout_add(100, poll)
    if os.environ.get("SEMANTIC_MATTE_GIMP_SCREENSHOT"):  # test hook: screenshot, then press OK
        from gi.repository import Gdk

        def snap():
            if "st" not in box:
                return True
            poll()
            while Gtk.events_pending():
                Gtk.main_iteration()
            root = Gdk.get_default_root_window()
            pb = Gdk.pixbuf_get_from_window(root, 0, 0, root.get_width(), root.get_height())
            pb.savev(os.environ["SEMANTIC_MATTE_GIMP_SCREENSHOT"], "png", [], [])
            dlg.response(Gtk.ResponseType.OK)
            return False

        GLib.timeout_add(1500, snap)
    ok = dlg.run()
    dlg.destroy()
    return bool(ok)


def _run_with_progress(server: str, job, timeout: float, connect_timeout: float, interactive: bool):
    """Run the job; interactive runs get a small progress window with Cancel."""
    cancel = threading.Event()
    box: dict = {}

    def work(progress):
        try:
            box["out"] = session.run_matte(
                server,
                job,
                timeout=timeout,
                progress=progress,
                cancel=cancel,
                connect_timeout=connect_timeout,
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            box["err"] = exc

    if not interactive:

        def progress(stage, done):
            if done is not None:
                Gimp.progress_update(float(done))

        work(progress)
    else:
        gi.require_version("Gtk", "3.0")
        from gi.repository import Gtk

        win = Gtk.Dialog(title="Semantic Matte")
        bar = Gtk.ProgressBar(show_text=True)
        bar.set_text("sending")
        win.get_content_area().pack_start(bar, True, True, 12)
        win.add_button("_Cancel", Gtk.ResponseType.CANCEL)
        win.set_default_size(360, 80)
        state = {"stage": "sending", "done": None}
        t = threading.Thread(target=work, args=(lambda st, d: state.update(stage=st, done=d),), daemon=True)

        def tick():
            if not t.is_alive():
                win.response(Gtk.ResponseType.OK)
                return False
            bar.set_text(str(state["stage"]))
            if state["done"] is None:
                bar.pulse()
            else:
                bar.set_fraction(float(state["done"]))
            return True

        t.start()
        GLib.timeout_add(100, tick)
        win.show_all()
        if win.run() == Gtk.ResponseType.CANCEL:
            cancel.set()
        t.join()
        win.destroy()
    if "err" in box:
        raise box["err"]
    return box["out"]


def run(procedure, run_mode, image, drawables, config, data):
    if LOAD_ERROR:
        return _fail(procedure, LOAD_ERROR)
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
        return _fail(procedure, "Select exactly one layer", Gimp.PDBStatusType.CALLING_ERROR)
    layer = drawables[0]
    if run_mode == Gimp.RunMode.INTERACTIVE and not _interactive(procedure, config):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
    cls = config.get_property("custom-class").strip() or config.get_property("class-override")
    try:  # a typed address that is none fails here, rather than silently becoming the default socket
        server = parse_server(config.get_property("server"))
    except ValueError as exc:
        return _fail(procedure, str(exc), Gimp.PDBStatusType.CALLING_ERROR)
    s = Settings(
        server=server,
        band=config.get_property("band"),
        trimap_source=config.get_property("trimap-source"),
        trimap_layer=config.get_property("trimap-layer"),
        class_override="" if cls in ("", "auto") else cls,
        output=config.get_property("output"),
        semantic_preview=config.get_property("semantic-preview"),
        refine_edges=config.get_property("refine-edges"),
        nonlocal_edges=config.get_property("nonlocal-edges"),
        timeout_s=config.get_property("timeout"),
    ).validated()
    Gimp.progress_init("Semantic Matte")
    t0 = time.monotonic()
    log = setup_log(os.path.join(Gimp.directory(), "semantic-matte.log"))
    log.info(
        "run %s on %s (%dx%d) -> %s",
        run_mode.value_nick,
        layer.get_name(),
        layer.get_width(),
        layer.get_height(),
        s.server,
    )
    try:
        job = _read_inputs(image, layer, s)
        out = _run_with_progress(
            s.server, job, s.timeout_s, s.connect_timeout_s, run_mode == Gimp.RunMode.INTERACTIVE
        )
        _write_result(image, layer, out, s)
    except session.JobCancelled:
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
    except Exception as exc:  # every failure becomes a readable PDB error (and a log entry), never a hang
        log.warning("failed: %s", session.describe_error(exc, s.server), exc_info=True)
        return _fail(procedure, session.describe_error(exc, s.server))
    log.info("done in %.2f s", time.monotonic() - t0)
    Gimp.progress_update(1.0)
    if out.class_shares and s.semantic_preview:
        Gimp.message(
            "Semantic Matte classes: "
            + session.format_shares(out.class_shares, 5)
            + "; colours: "
            + preview.legend(SIMD_CLASSES, out.class_shares)
        )
    if os.environ.get("SEMANTIC_MATTE_DEBUG"):
        Gimp.message(f"semantic-matte: done in {time.monotonic() - t0:.2f} s")
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)


class SemanticMatte(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROC]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        p = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        p.set_image_types("RGB*, GRAY*")
        p.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        p.set_menu_label("Semantic Matte…")
        p.add_menu_path("<Image>/Filters")
        p.set_documentation(
            "Semantic image matting (SIM) through the Semantic Matte daemon",
            "Builds a trimap from the selection (band around its edge; feathered parts are "
            "unknown) or from a painted trimap layer, sends it with the active layer to the "
            "daemon and adds the alpha matte as a layer mask or a new cut-out layer.",
            name,
        )
        p.set_attribution("Semantic Matte", "Semantic Matte", "2025")
        rw = GObject.ParamFlags.READWRITE
        default_server = Settings().server if not LOAD_ERROR else "tcp://127.0.0.1:5557"
        p.add_string_argument(
            "server", "_Server", "Daemon address (ipc://… or tcp://host:port)", default_server, rw
        )
        p.add_choice_argument(
            "trimap-source", "_Trimap from", "Where the trimap comes from", _choice(SOURCES), "selection", rw
        )
        p.add_int_argument(
            "band", "_Band width (px)", "Unknown band on each side of the selection edge", 0, 1000, 10, rw
        )
        p.add_string_argument(
            "trimap-layer", "Trimap _layer", "Name of the painted trimap layer", "trimap", rw
        )
        p.add_choice_argument(
            "class-override",
            "_Class",
            "Semantic class override (auto = classifier)",
            _choice([("auto", "Automatic (classifier)")] + [(c, c) for c in SIMD_CLASSES]),
            "auto",
            rw,
        )
        p.add_string_argument(
            "custom-class",
            "Custom c_lass",
            "Class name of a custom model (listed by the daemon's info); overrides Class when set",
            "",
            rw,
        )
        p.add_choice_argument(
            "output", "_Output", "Layer mask or new cut-out layer", _choice(OUTPUTS), "mask", rw
        )
        p.add_boolean_argument(
            "semantic-preview",
            "Semantic _preview",
            "Add a layer colouring the dominant semantic class and report the class shares",
            False,
            rw,
        )
        p.add_boolean_argument(
            "refine-edges",
            "_Refine fine edges",
            "Re-solve alpha with closed-form matting where the network is unsure (strands, holes)",
            True,
            rw,
        )
        p.add_boolean_argument(
            "nonlocal-edges",
            "_Nonlocal edges",
            "Refine with a nonlocal colour term too: better hair and fur (off: about 0.8x the time)",
            True,
            rw,
        )
        p.add_double_argument(
            "timeout", "_Timeout (s)", "Request deadline in seconds", 1.0, 3600.0, 120.0, rw
        )
        return p


Gimp.main(SemanticMatte.__gtype__, sys.argv)
