"""End to end: a matte through the daemon equals the in-process MattingPredictor result."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import sample

from backend import protocol as P
from backend.client import Client, ServerError, matte_via_server

pytestmark = pytest.mark.timeout(120)


def in_process_predictor():
    import torch

    from backend.models.registry import build_model
    from backend.predictor import MattingPredictor

    torch.manual_seed(0)  # same seed and build order as the worker (--seed 0)
    return MattingPredictor(build_model("sim_tiny"), build_model("classifier_tiny"), device="cpu")


def test_daemon_matte_equals_in_process(daemon):
    from backend.processing import trimap_from_mask

    d = daemon("--model", "sim_tiny", "--classifier", "classifier_tiny", "--seed", "0", handler=None)
    image, trimap = sample(72, 96, seed=3)
    predictor = in_process_predictor()
    local = predictor.predict(image, trimap, want_foreground=True, want_semantic=True)
    remote = matte_via_server(d.endpoint, image, trimap, want_foreground=True, want_semantic=True, timeout=60)
    np.testing.assert_array_equal(remote["alpha"], local.alpha)
    np.testing.assert_array_equal(remote["foreground"], local.foreground)
    np.testing.assert_array_equal(remote["semantic"], local.semantic)
    assert remote["class_shares"] == pytest.approx(local.class_shares)
    assert remote["meta"]["device"] == "cpu" and remote["meta"]["model"]
    assert remote["meta"]["precision"] == predictor.precision  # both "auto": bf16 on CPUs with native bf16
    with Client(d.endpoint) as c:
        info = c.info()
        assert info["classes"] and len(info["classes"]) == local.semantic.shape[0]
        # mask + band goes through backend.processing.trimap_from_mask on the worker
        mask = (trimap == 255).astype(np.uint8) * 255
        via_mask = c.matte(image, mask=mask, band=5, timeout=60)
        expected = predictor.predict(image, trimap_from_mask(mask, 5)).alpha
        np.testing.assert_array_equal(via_mask["alpha"], expected)
        cls = c.classify(image, trimap, timeout=60)
        np.testing.assert_array_equal(cls["semantic"], local.semantic)
        assert set(cls.arrays) == {"semantic"} and cls.meta["class_shares"] == pytest.approx(local.class_shares)
        u8 = c.matte(image, trimap, alpha_dtype="u1", timeout=60)["alpha"]
        np.testing.assert_array_equal(u8, np.rint(local.alpha * 255).astype(np.uint8))
        # the refinement is the worker's default; refine="off" returns the network's alpha
        raw = c.matte(image, trimap, refine="off", timeout=60)
        np.testing.assert_array_equal(raw["alpha"], predictor.predict(image, trimap, refine="off").alpha)
        assert "refine" in remote["meta"]["timings"] and "refine" not in raw.meta["timings"]
        knn = c.matte(image, trimap, refine="nonlocal", timeout=60)
        np.testing.assert_array_equal(knn["alpha"], predictor.predict(image, trimap, refine="nonlocal").alpha)
        # a 127-valued trimap (another tool's) is refused as it is, and snapped on the worker when asked
        t127 = np.where(trimap == 128, 127, trimap).astype(np.uint8)
        with pytest.raises(ServerError, match="tolerant") as refused:
            c.matte(image, t127, timeout=60)
        assert refused.value.code == P.E_BAD_REQUEST
        snapped = c.matte(image, t127, trimap_mode=P.TRIMAP_TOLERANT, timeout=60)
        np.testing.assert_array_equal(snapped["alpha"], local.alpha)
