"""Krita <-> bytes: layer pixels and selection in, transparency mask or cut-out layer out.

GUI thread only (Krita's API is not thread-safe). Measured facts this relies on (Krita 5.1.5 / 5.2.9):
U8/U16 layers are B,G,R,A in memory, F16/F32 are R,G,B,A; ``Selection.pixelData`` is 1 byte per pixel at
every depth; 5.1 has no ``createTransparencyMask`` and ``createNode(.., "transparencymask")`` gives a mask
without pixel storage, so on 5.1 the mask is made by the built-in action from a temporary selection.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

from plugin.core import pixels, preview, trimap
from plugin.core.session import MatteInput, MatteOutput
from plugin.core.settings import Settings

from .qt import QApplication

SUPPORTED_DEPTHS = ("U8", "U16", "F16", "F32")


class HostError(ValueError):
    """A user-facing problem with the document (no layer, no selection, colour model...)."""


@dataclass
class Target:
    doc: Any
    node: Any
    width: int
    height: int
    depth: str


def _is_linear(node: Any) -> bool:
    name = (node.colorProfile() or "").lower()
    return "g10" in name or "linear" in name


def target(krita: Any, doc: Any = None, node: Any = None) -> Target:
    """The document and layer to matte (default: the active ones), validated."""
    doc = doc or krita.activeDocument()
    if doc is None:
        raise HostError("Open an image first.")
    node = node or doc.activeNode()
    if node is None or node.type() != "paintlayer":
        raise HostError("Make a paint layer active (the layer to matte).")
    if node.colorModel() != "RGBA":
        raise HostError(f"Colour model {node.colorModel()} is not supported: convert the image to RGB/Alpha.")
    depth = node.colorDepth()
    if depth not in SUPPORTED_DEPTHS:
        raise HostError(f"Channel depth {depth} is not supported.")
    return Target(doc, node, doc.width(), doc.height(), depth)


def _trimap_layer_grey(t: Target, name: str) -> tuple[bytes, bytes]:
    layer = t.doc.nodeByName(name)
    if layer is None:
        raise HostError(
            f"No layer named '{name}' for the trimap (paint white = fg, black = bg, grey = unknown)."
        )
    w, h = t.width, t.height
    data = bytes(layer.pixelData(0, 0, w, h))
    depth = layer.colorDepth()
    if depth == "U8":
        return data[1::4], data[3::4]  # G channel as grey (paint is neutral), A
    rgb, dtype, _ = pixels.image_from_host(data, w, h, depth, "BGRA" if depth == "U16" else "RGBA")
    # alpha: 4th channel, same conversion path through a fake RGB image of (a, a, a)
    size = {"U16": 2, "F16": 2, "F32": 4}[depth]
    a_only = bytearray(len(data))
    for b in range(size):
        for c in range(4):
            a_only[c * size + b :: 4 * size] = data[3 * size + b :: 4 * size]
    a_rgb, _, _ = pixels.image_from_host(bytes(a_only), w, h, depth, "RGBA")
    to8 = lambda buf, dt: pixels.alpha_to_u8(buf, dt)
    grey = to8(pixels.split_channels(rgb, 3, (1,), 4 if dtype == pixels.F32 else 2), dtype)
    alpha = to8(pixels.split_channels(a_rgb, 3, (0,), 4 if dtype == pixels.F32 else 2), dtype)
    return grey, alpha


def read_inputs(t: Target, s: Settings, num_classes: int = 20) -> MatteInput:
    """Layer pixels + trimap (from the selection or a trimap layer) for one request."""
    w, h = t.width, t.height
    data = bytes(t.node.pixelData(0, 0, w, h))
    order = "BGRA" if t.depth in ("U8", "U16") else "RGBA"
    image, dtype, _ = pixels.image_from_host(data, w, h, t.depth, order, linear=_is_linear(t.node))
    if s.trimap_source == "layer":
        grey, alpha = _trimap_layer_grey(t, s.trimap_layer)
        tri = trimap.trimap_from_grey(grey, w, h, alpha)
    else:
        sel = t.doc.selection()
        if sel is None or sel.width() == 0:
            raise HostError("Select the subject first (any selection tool), or paint a trimap layer.")
        tri = trimap.trimap_from_selection(bytes(sel.pixelData(0, 0, w, h)), w, h, s.band)
    stats = trimap.trimap_stats(tri)
    if stats["unknown"] == 0:
        raise HostError("The trimap has no unknown region: increase the band width.")
    return MatteInput(
        w,
        h,
        image,
        dtype,
        tri,
        s.class_override,
        want_foreground=s.output == "layer",
        want_semantic=s.semantic_preview and preview.semantic_fits(w, h, num_classes),
        refine=s.refine_mode(),
    )


def _selection_from_alpha(krita_mod: Any, alpha: bytes, w: int, h: int) -> Any:
    sel = krita_mod.Selection()
    sel.setPixelData(alpha, 0, 0, w, h)
    return sel


def add_transparency_mask(krita: Any, krita_mod: Any, t: Target, alpha: bytes, name: str) -> Any:
    """Alpha -> a new transparency mask on the layer; one undo step removes it. A mask of the same name
    from an earlier run is removed first: stacked transparency masks multiply, so a re-run must replace."""
    w, h = t.width, t.height
    doc = t.doc
    for old in [c for c in t.node.childNodes() if c.type() == "transparencymask" and c.name() == name]:
        old.remove()
    if hasattr(doc, "createTransparencyMask"):  # Krita >= 5.2
        mask = doc.createTransparencyMask(name)
        t.node.addChildNode(mask, None)
        mask.setPixelData(alpha, 0, 0, w, h)
    else:  # Krita 5.1: the built-in action builds a real mask from the current selection
        action = krita.action("add_new_transparency_mask")
        if action is None:
            raise HostError(
                "Krita < 5.2 without a window cannot create transparency masks; use output 'layer'."
            )
        old_sel = doc.selection()
        before = {id_(c) for c in t.node.childNodes()}
        doc.setSelection(_selection_from_alpha(krita_mod, alpha, w, h))
        doc.waitForDone()
        action.trigger()
        doc.waitForDone()
        masks = [c for c in t.node.childNodes() if c.type() == "transparencymask" and id_(c) not in before]
        if not masks:
            raise HostError("Krita did not create the transparency mask (is the layer still active?).")
        mask = masks[-1]
        mask.setName(name)
        mask.setPixelData(alpha, 0, 0, w, h)  # exact values (the selection path may quantise)
        if old_sel is not None:
            doc.setSelection(old_sel)
        else:
            deselect = krita.action("deselect")
            if deselect is not None:
                deselect.trigger()
    doc.refreshProjection()
    doc.waitForDone()
    return mask


def id_(node: Any) -> str:
    return node.uniqueId().toString() if hasattr(node, "uniqueId") else str(id(node))


def add_cutout_layer(t: Target, out: MatteOutput, name: str, krita: Any = None) -> Any:
    """A new paint layer above the source: decontaminated colours (when the daemon sent them) + alpha."""
    w, h = t.width, t.height
    order = "BGRA" if t.depth in ("U8", "U16") else "RGBA"
    if out.foreground is not None:
        px8 = pixels.foreground_to_bgra_u8(out.foreground, out.foreground_dtype, out.alpha, order=order)
    else:  # no decontaminated colours: original colours, new alpha
        src = bytes(t.node.pixelData(0, 0, w, h))
        rgb, dtype, _ = pixels.image_from_host(src, w, h, t.depth, order)
        px8 = pixels.foreground_to_bgra_u8(rgb, dtype, out.alpha, order=order)
    if t.depth == "U8":
        data = px8
    else:
        linear = _is_linear(t.node)
        data = _u8_pixels_to_depth(px8, t.depth, linear)
    # Hide the source (the cut-out is only visible as such without it). Through the action when there is
    # a window, because that is an undo step and Node.setVisible is not; the source is the active layer.
    toggle = krita.action("toggle_layer_visibility") if krita is not None else None
    if toggle is not None and t.doc.activeNode() is not None and t.doc.activeNode().name() == t.node.name():
        toggle.trigger()
        t.doc.waitForDone()
    if t.node.visible():
        t.node.setVisible(False)
    layer = t.doc.createNode(name, "paintlayer")
    parent = t.node.parentNode()
    parent.addChildNode(layer, t.node)  # directly above the source layer
    layer.setPixelData(data, 0, 0, w, h)
    t.doc.refreshProjection()
    t.doc.waitForDone()
    return layer


def add_semantic_preview(t: Target, out: MatteOutput, above: Any = None, name: str = "Semantic map") -> Any:
    """A half-transparent layer colouring the dominant semantic class of the unknown region."""
    order = "BGRA" if t.depth in ("U8", "U16") else "RGBA"
    px8 = preview.preview_pixels(out.semantic, out.semantic_shape, order=order)
    data = px8 if t.depth == "U8" else _u8_pixels_to_depth(px8, t.depth, _is_linear(t.node))
    layer = t.doc.createNode(name, "paintlayer")
    above = above if above is not None and above.type() == "paintlayer" else t.node
    above.parentNode().addChildNode(layer, above)  # on top of what we created
    layer.setPixelData(data, 0, 0, t.width, t.height)
    t.doc.refreshProjection()
    return layer


def _u8_pixels_to_depth(px8: bytes, depth: str, linear: bool) -> bytes:
    """Interleaved 4-channel 8-bit pixels -> the layer's depth (colour channels linearised if needed)."""
    if depth == "U16":
        return array("H", [v * 257 for v in px8]).tobytes()
    import struct

    def dec(v: int) -> float:
        c = v / 255.0
        if not linear:
            return c
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    col = [dec(v) for v in range(256)]
    lin = [v / 255.0 for v in range(256)]
    vals = [col[v] for v in px8]
    vals[3::4] = [lin[v] for v in px8[3::4]]  # alpha stays linear
    if depth == "F16":
        return struct.pack(f"={len(vals)}e", *vals)
    return array("f", vals).tobytes()


def process_events() -> None:
    QApplication.processEvents()
