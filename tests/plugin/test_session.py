"""plugin.core.session against the real test daemon (no editor)."""

from __future__ import annotations

from backend import protocol as P
from plugin.core import session, settings, trimap


def test_refine_settings_reach_the_worker(daemon: str, case: dict) -> None:
    from PIL import Image

    w, h = case["width"], case["height"]
    rgb = Image.open(case["image"]).convert("RGB").tobytes()
    with open(case["selection"], "rb") as fh:
        tri = trimap.trimap_from_selection(fh.read(), w, h, 6)
    default = settings.Settings()
    assert (default.refine_edges, default.nonlocal_edges, default.refine_mode()) == (True, True, P.REFINE_DEFAULT)
    modes = {(True, True): P.REFINE_NONLOCAL, (True, False): P.REFINE_BAND,
             (False, True): P.REFINE_OFF, (False, False): P.REFINE_OFF}
    for (refine, nonlocal_edges), mode in modes.items():
        assert settings.Settings(refine_edges=refine, nonlocal_edges=nonlocal_edges).refine_mode() == mode
    timings = {}
    for mode in P.REFINE_MODES:
        job = session.MatteInput(w, h, rgb, "|u1", tri, refine=mode)
        out = session.run_matte(daemon, job, timeout=120)
        assert len(out.alpha) == w * h
        timings[mode] = out.meta["timings"]
    assert "refine" in timings[P.REFINE_BAND] and "refine" in timings[P.REFINE_NONLOCAL]
    assert "refine" not in timings[P.REFINE_OFF]
