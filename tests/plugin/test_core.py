"""Pure tests of plugin.core (no editor, no daemon)."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from backend.protocol import TRIMAP_BG, TRIMAP_FG, TRIMAP_UNKNOWN
from plugin.core import pixels, session, settings, trimap

ROOT = Path(__file__).resolve().parents[2]


def _dilate_ref(m: bytes, w: int, h: int, r: int) -> bytes:
    return bytes(
        int(
            any(
                m[yy * w + xx]
                for yy in range(max(0, y - r), min(h, y + r + 1))
                for xx in range(max(0, x - r), min(w, x + r + 1))
            )
        )
        for y in range(h)
        for x in range(w)
    )


@pytest.mark.parametrize("r", [0, 1, 2, 3, 5, 9])
def test_dilate_matches_brute_force(r: int) -> None:
    rng = random.Random(r)
    w, h = 17, 11
    m = bytes(rng.random() < 0.08 for _ in range(w * h))
    assert trimap.dilate(m, w, h, r) == _dilate_ref(m, w, h, r)


def test_trimap_from_hard_selection_band() -> None:
    w, h, band = 40, 30, 3
    sel = bytearray(w * h)
    for y in range(10, 20):
        sel[y * w + 10 : y * w + 30] = b"\xff" * 20
    tri = trimap.trimap_from_selection(bytes(sel), w, h, band)
    assert set(tri) <= {TRIMAP_BG, TRIMAP_UNKNOWN, TRIMAP_FG}
    at = lambda x, y: tri[y * w + x]
    assert at(0, 0) == TRIMAP_BG and at(20, 15) == TRIMAP_FG
    # edge at x=10 (first selected column): unknown from x=7 (bg side, 3 px) to x=12 (fg side, 3 px)
    assert [at(x, 15) for x in range(5, 15)] == [0, 0, 128, 128, 128, 128, 128, 128, 255, 255]
    assert trimap.trimap_stats(tri)["unknown"] > 0


def test_band_zero_and_feathered_selection() -> None:
    w, h = 20, 4
    row = bytes([0] * 5 + [60, 120, 200] + [255] * 12)
    tri = trimap.trimap_from_selection(row * h, w, h, 0)
    assert tri[:w] == bytes([0] * 5 + [128] * 3 + [255] * 12)
    tri2 = trimap.trimap_from_selection(row * h, w, h, 2)
    assert tri2[:w] == bytes([0] * 3 + [128] * 7 + [255] * 10)


def test_rows_do_not_leak_through_padding() -> None:
    # a selected last column must not mark the first column of the next row
    w, h = 8, 3
    sel = bytearray(w * h)
    sel[w - 1] = 255
    tri = trimap.trimap_from_selection(bytes(sel), w, h, 1)
    assert tri[2 * w] == TRIMAP_BG  # row 2 col 0: 2 rows away
    assert tri[w] == TRIMAP_BG  # row 1 col 0 is 7 columns away from the selected pixel


def test_trimap_from_grey_layer() -> None:
    grey = bytes([0, 5, 128, 250, 255, 255])
    alpha = bytes([255, 255, 255, 255, 255, 0])
    assert trimap.trimap_from_grey(grey, 6, 1, alpha) == bytes([0, 0, 128, 255, 255, 0])


def test_trimap_large_image_is_fast() -> None:
    import time

    w, h = 2000, 1500
    sel = bytearray(w * h)
    for y in range(300, 1200):
        sel[y * w + 500 : y * w + 1500] = b"\xff" * 1000
    t0 = time.perf_counter()
    tri = trimap.trimap_from_selection(bytes(sel), w, h, 25)
    assert time.perf_counter() - t0 < 5.0
    assert abs(trimap.trimap_stats(tri)["unknown"] - (2 * (1000 + 900) * 50) / (w * h)) < 0.002


def test_pixels_u8_bgra_to_rgb_and_back() -> None:
    data = bytes([10, 20, 30, 255, 1, 2, 3, 128])
    rgb, dtype, shape = pixels.image_from_host(data, 2, 1, "U8", "BGRA")
    assert (rgb, dtype, shape) == (bytes([30, 20, 10, 3, 2, 1]), "|u1", (1, 2, 3))
    out = pixels.foreground_to_bgra_u8(rgb, "|u1", bytes([7, 9]))
    assert out == bytes([10, 20, 30, 7, 1, 2, 3, 9])


def test_pixels_u16_and_float() -> None:
    px = array("H", [100, 200, 300, 65535]).tobytes()
    rgb, dtype, _ = pixels.image_from_host(px, 1, 1, "U16", "BGRA")
    assert dtype == "<u2" and list(array("H", rgb)) == [300, 200, 100]
    f16 = struct.pack("=4e", 0.25, 0.5, 1.0, 1.0)
    rgb, dtype, _ = pixels.image_from_host(f16, 1, 1, "F16", "RGBA")
    assert dtype == "<f4" and [round(v, 3) for v in array("f", rgb)] == [0.25, 0.5, 1.0]
    f32 = array("f", [0.5, 0.0, 2.0, 1.0]).tobytes()
    rgb, _, _ = pixels.image_from_host(f32, 1, 1, "F32", "RGBA", linear=True)
    r, g, b = array("f", rgb)
    assert abs(r - 0.7354) < 1e-3 and g == 0.0 and b == 1.0  # sRGB-encoded, clipped


def test_alpha_conversions() -> None:
    assert pixels.alpha_to_u8(array("f", [0.0, 0.5, 1.2]).tobytes(), "<f4") == bytes([0, 128, 255])
    assert pixels.alpha_to_u8(array("H", [0, 65535]).tobytes(), "<u2") == bytes([0, 255])
    assert list(array("H", pixels.u8_to_depth(bytes([0, 255]), "U16"))) == [0, 65535]


def test_settings_roundtrip_and_fallbacks() -> None:
    s = settings.Settings(server="tcp://127.0.0.1:1", band=7, output="layer")
    assert settings.Settings.from_json(s.to_json()) == s
    bad = json.dumps({"band": -4, "output": "nope", "server": 12, "timeout_s": "x", "refine_edges": "yes",
                      "nonlocal_edges": 1, "extra": 1})
    s2 = settings.Settings.from_json(bad)
    d = settings.Settings()
    assert (s2.band, s2.output, s2.server, s2.timeout_s, s2.refine_edges, s2.nonlocal_edges) == (
        d.band, d.output, d.server, d.timeout_s, d.refine_edges, d.nonlocal_edges)
    assert settings.Settings.from_json("not json") == d
    # a typed address is read as the protocol reads it; one that is none falls back to the default
    assert settings.Settings(server=" localhost:5557 ").validated().server == "tcp://localhost:5557"
    assert settings.Settings(server="tcp://127.0.0.1").validated().server == d.server


def test_settings_stored_before_a_default_changed_take_the_new_default() -> None:
    """Settings stored by an older plug-in hold every field, so an untouched old default looks like a choice:
    fields whose default changed since the stored version are dropped on load; the rest are kept."""
    old = {"band": 23, "refine_edges": True, "nonlocal_edges": False}  # version 1: no "schema" field
    s = settings.Settings.from_json(json.dumps(old))
    assert (s.band, s.nonlocal_edges, s.schema) == (23, True, settings.SCHEMA)
    assert s.refine_mode() == "nonlocal"
    chosen = settings.Settings(nonlocal_edges=False)  # chosen under the current version: kept
    assert settings.Settings.from_json(chosen.to_json()).nonlocal_edges is False
    assert settings.Settings.from_json(json.dumps({**old, "schema": "x"})).nonlocal_edges is False


def test_status_lines_give_a_hint() -> None:
    st = session.ServerStatus(session.ConnectionState.NOT_RUNNING, "x")
    assert "semantic-matte serve" in st.line
    assert session.format_shares({"fur": 0.2, "hair_easy": 0.7, "net": 0.1}, 2) == "hair_easy 70%, fur 20%"


def test_core_and_client_import_without_numpy_or_torch() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "import plugin.core.trimap, plugin.core.pixels, plugin.core.session, plugin.core.settings\n"
        "import backend.client, backend.protocol\n"
        "s = plugin.core.session.probe('tcp://127.0.0.1:9', timeout=0.3)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch', 'PyQt5', 'gi'))\n"
        "print('BAD', bad); print('STATE', s.state.value)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "BAD []" in out.stdout, out.stdout
    assert "STATE not running" in out.stdout, out.stdout
