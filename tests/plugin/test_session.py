"""plugin.core.session against the real test daemon (no editor)."""

from __future__ import annotations

from plugin.core import session, settings, trimap


def test_refine_edges_setting_reaches_the_worker(daemon: str, case: dict) -> None:
    from PIL import Image

    w, h = case["width"], case["height"]
    rgb = Image.open(case["image"]).convert("RGB").tobytes()
    with open(case["selection"], "rb") as fh:
        tri = trimap.trimap_from_selection(fh.read(), w, h, 6)
    assert settings.Settings().refine_edges is True
    timings = {}
    for refine in (True, False):
        job = session.MatteInput(w, h, rgb, "|u1", tri, refine=refine)
        out = session.run_matte(daemon, job, timeout=120)
        assert len(out.alpha) == w * h
        timings[refine] = out.meta["timings"]
    assert "refine" in timings[True] and "refine" not in timings[False]
