"""Batching of small queued requests: the broker keeps several jobs on a worker that announces slots, the
worker runs same-size ones through one ``predict_batch``, and every reply equals the one-at-a-time result."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import sample

from backend.client import BadRequest, Cancelled, Client

pytestmark = pytest.mark.timeout(180)


def in_process_predictor():
    import torch

    from backend.models.registry import build_model
    from backend.predictor import MattingPredictor

    torch.manual_seed(0)  # same seed and build order as the worker (--seed 0)
    return MattingPredictor(build_model("sim_tiny"), build_model("classifier_tiny"), device="cpu")


def test_queued_small_requests_run_batched_and_equal_single_results(daemon):
    d = daemon("--model", "sim_tiny", "--classifier", "classifier_tiny", "--seed", "0", "--max-batch", "4",
               handler=None)
    predictor = in_process_predictor()
    same = [sample(64, 80, seed=s) for s in range(8)]
    other = [sample(48, 64, seed=s) for s in range(2)]  # another size: never in a batch with the others
    bad_image, bad_trimap = sample(64, 80, seed=99)
    bad_trimap = bad_trimap.copy()
    bad_trimap[0, 0] = 77  # invalid trimap value: only this request may fail
    with Client(d.endpoint, timeout=120) as c:
        info = c.info()
        assert info["workers"][0]["slots"] == 8
        ids = [c.submit("matte", {"image": i, "trimap": t}, {"outputs": ["alpha", "semantic"]}) for i, t in same]
        ids += [c.submit("matte", {"image": i, "trimap": t}) for i, t in other]
        bad = c.submit("matte", {"image": bad_image, "trimap": bad_trimap})
        replies = {rid: c.result(rid, timeout=120) for rid in ids}
        with pytest.raises(BadRequest, match="trimap"):
            c.result(bad, timeout=120)
    batches = [replies[rid].meta["batch"] for rid in ids]
    assert max(batches[:8]) > 1, batches  # they queued behind each other, so some ran together
    assert all(b <= 2 for b in batches[8:]), batches  # the other size only ever batches with itself
    for (image, trimap), rid in zip(same, ids[:8]):
        local = predictor.predict(image, trimap, want_semantic=True)
        np.testing.assert_array_equal(replies[rid]["alpha"], local.alpha)
        np.testing.assert_array_equal(replies[rid]["semantic"], local.semantic)
        assert replies[rid].meta["class_shares"] == pytest.approx(local.class_shares)
    for (image, trimap), rid in zip(other, ids[8:]):
        np.testing.assert_array_equal(replies[rid]["alpha"], predictor.predict(image, trimap).alpha)


def test_cancel_one_queued_job_in_a_batch_worker(daemon, monkeypatch):
    monkeypatch.setenv("SLOW_MS", "400")
    d = daemon("--max-batch", "2", handler="daemon_handlers:slow_batch")
    image, trimap = sample()
    with Client(d.endpoint, timeout=30) as c:
        ids = [c.submit("matte", {"image": image, "trimap": trimap}) for _ in range(4)]
        c.cancel(ids[2])
        done = {rid: c.result(rid, timeout=30) for rid in ids if rid != ids[2]}
        with pytest.raises(Cancelled):
            c.result(ids[2], timeout=30)
    assert len(done) == 3 and max(r.meta["batch"] for r in done.values()) == 2


def test_sigkill_batch_worker_requeues_every_held_job(daemon):
    import os
    import signal
    import time

    d = daemon("--max-batch", "4", handler="daemon_handlers:slow_batch")
    image, trimap = sample()
    with Client(d.endpoint, timeout=60) as c:
        pid = c.info()["workers"][0]["pid"]
        ids = [c.submit("matte", {"image": image, "trimap": trimap}) for _ in range(6)]
        time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)  # the worker held several of them: all are re-run on its replacement
        replies = [c.result(rid, timeout=60) for rid in ids]
    assert all(r.meta.get("attempt", 1) in (1, 2) for r in replies)
    assert any(r.meta.get("attempt") == 2 for r in replies)


def test_burst_of_instant_batched_replies_is_never_dropped(daemon, monkeypatch):
    # 16 held jobs finishing at once send ~48 messages; progress may be dropped at the HWM, replies never.
    monkeypatch.setenv("SLOW_MS", "0")
    d = daemon("--max-batch", "8", handler="daemon_handlers:slow_batch")
    image, trimap = sample()
    with Client(d.endpoint, timeout=30) as c:
        for _ in range(3):
            ids = [c.submit("matte", {"image": image, "trimap": trimap}, priority="batch") for _ in range(100)]
            replies = [c.result(rid, timeout=30) for rid in ids]
            assert all(r["alpha"].shape == trimap.shape for r in replies)
        assert max(r.meta["batch"] for r in replies) > 1
        health = c.health()
    assert health["running"] == 0 and health["workers"] == 1  # nothing stuck, the worker never "vanished"


def test_handler_splits_a_batch_by_its_pixel_budget():
    import time

    from backend.worker import Job, PredictorHandler

    handler = PredictorHandler(in_process_predictor(), batch_total_pixels=2 * 64 * 80)
    jobs = []
    for s in range(3):
        image, trimap = sample(64, 80, seed=s)
        jobs.append(Job(f"j{s}", "matte", {"image": image, "trimap": trimap}, {}, time.monotonic() + 60))
    assert len({handler.batch_key(j) for j in jobs}) == 1
    outcomes = handler.run_batch(jobs)
    assert [meta["batch"] for _, meta in outcomes] == [2, 2, 1]
    for job, (arrays, _) in zip(jobs, outcomes):
        np.testing.assert_array_equal(arrays["alpha"], handler(job)[0]["alpha"])
