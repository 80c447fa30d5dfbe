"""Tests for backend.evaluation on tiny synthetic datasets (alphamatting, SIM and Composition-1k layouts)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.evaluation import (
    DatasetError,
    evaluate,
    find_samples,
    format_table,
    validation_samples,
    write_report,
)
from backend.imageio import MissingFileError, SizeMismatchError

H, W = 12, 15  # columns 0-4 background, 5-9 unknown, 10-14 foreground


def _trimap() -> np.ndarray:
    t = np.zeros((H, W), np.uint8)
    t[:, 5:10] = 128
    t[:, 10:] = 255
    return t


def _alpha(kind: str, seed: int = 0) -> np.ndarray:
    a = np.zeros((H, W), np.uint8)
    a[:, 10:] = 255
    if kind == "ramp":
        a[:, 5:10] = np.random.default_rng(seed).integers(0, 256, (H, 5), dtype=np.uint8)
    return a  # kind "zero": unknown band all 0


def _write_triplet(
    img_dir: Path, tri_dir: Path, alpha_dir: Path | None, stem: str, alpha: np.ndarray
) -> None:
    for d in (img_dir, tri_dir, alpha_dir):
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)
    # the "photo" carries the GT in all three channels, so a predict_fn can return the GT
    Image.fromarray(np.dstack([alpha] * 3)).save(img_dir / f"{stem}.png")
    Image.fromarray(_trimap()).save(tri_dir / f"{stem}.png")
    if alpha_dir is not None:
        Image.fromarray(alpha).save(alpha_dir / f"{stem}.png")


def make_alphamatting(root: Path, kind: str = "ramp", n: int = 3) -> Path:
    for i in range(n):
        stem = f"GT{i + 1:02d}"
        _write_triplet(root / "image", root / "trimap1", root / "alpha", stem, _alpha(kind, i))
        (root / "trimap2").mkdir(exist_ok=True)
        Image.fromarray(_trimap()).save(root / "trimap2" / f"{stem}.png")
    (root / "README.md").write_text("not an image")
    (root / "image" / "notes.txt").write_text("ignored")
    return root


def make_sim(root: Path, kind: str = "ramp") -> Path:
    for c, stems in {"fur": ["a_bg1", "a_bg2"], "hair_easy": ["b_bg1"]}.items():
        for j, stem in enumerate(stems):
            _write_triplet(
                root / c / "merged", root / c / "trimap", root / c / "alpha", stem, _alpha(kind, j)
            )
    return root


def gt_predict(image, trimap, group):
    return image[:, :, 0]


def half_predict(image, trimap, group):
    return np.full(trimap.shape, 0.5, np.float32)


# ---------------------------------------------------------------- discovery


def test_find_samples_alphamatting(tmp_path):
    root = make_alphamatting(tmp_path / "am")
    s = find_samples(root)
    assert [x.name for x in s] == ["GT01", "GT02", "GT03"]
    assert {x.group for x in s} == {"trimap1"}
    assert s[0].image_path == root / "image/GT01.png" and s[0].alpha_path == root / "alpha/GT01.png"
    assert find_samples(root, "trimap2")[1].trimap_path == root / "trimap2/GT02.png"
    with pytest.raises(DatasetError, match="available: trimap1, trimap2"):
        find_samples(root, "trimap3")


def test_validation_samples_default_wider_and_never_held_out(tmp_path):
    s = find_samples(make_alphamatting(tmp_path / "am"))  # GT01, GT02, GT03
    assert [x.name for x in validation_samples(s)] == ["GT01"]
    assert [x.name for x in validation_samples(s, ["GT01", "GT03"])] == ["GT01", "GT03"]
    with pytest.raises(ValueError, match="GT02 belong to the held-out"):
        validation_samples(s, ["GT01", "GT02"])


def test_find_samples_sim_and_composition(tmp_path):
    s = find_samples(make_sim(tmp_path / "sim"))
    assert [(x.group, x.name) for x in s] == [("fur", "a_bg1"), ("fur", "a_bg2"), ("hair_easy", "b_bg1")]
    comp = tmp_path / "comp1k"
    _write_triplet(comp / "merged", comp / "trimap", comp / "alpha", "x", _alpha("ramp"))
    assert [(x.group, x.name) for x in find_samples(comp)] == [("comp1k", "x")]


def test_find_samples_errors(tmp_path):
    with pytest.raises(MissingFileError):
        find_samples(tmp_path / "nope")
    (tmp_path / "odd" / "pics").mkdir(parents=True)
    with pytest.raises(DatasetError, match="not recognised.*pics/"):
        find_samples(tmp_path / "odd")

    root = make_alphamatting(tmp_path / "am")
    (root / "trimap1" / "GT02.png").unlink()
    with pytest.raises(DatasetError, match="have no file in .*trimap1: GT02"):
        find_samples(root)
    with pytest.raises(DatasetError, match="no image"):  # extra alpha without image
        root2 = make_alphamatting(tmp_path / "am2")
        Image.fromarray(_alpha("ramp")).save(root2 / "alpha" / "GT99.png")
        find_samples(root2)
    root3 = make_alphamatting(tmp_path / "am3")
    Image.fromarray(_trimap()).save(root3 / "trimap1" / "GT01.jpg")
    with pytest.raises(DatasetError, match="two files with stem 'GT01'"):
        find_samples(root3)


def test_find_samples_without_ground_truth(tmp_path):
    root = tmp_path / "test"
    _write_triplet(root / "image", root / "trimap1", None, "T1", _alpha("ramp"))
    with pytest.raises(DatasetError, match="no ground-truth"):
        find_samples(root)
    s = find_samples(root, require_alpha=False)
    assert s[0].alpha_path is None
    with pytest.raises(DatasetError, match="no ground truth"):
        evaluate(gt_predict, s)


# ---------------------------------------------------------------- evaluate


def test_evaluate_perfect_prediction_is_zero(tmp_path):
    res = evaluate(gt_predict, find_samples(make_sim(tmp_path / "sim")))
    assert len(res.ok) == 3 and not res.failed
    for r in res.results:
        assert r.metrics == {"sad": 0.0, "mse": 0.0, "grad": 0.0, "conn": 0.0}
        assert r.time_s >= 0 and r.n_unknown == H * 5
    assert res.summary["overall"]["count"] == 3
    assert res.summary["groups"]["fur"]["count"] == 2
    assert set(res.summary["groups"]) == {"fur", "hair_easy"}


def test_evaluate_half_prediction_known_sad(tmp_path):
    samples = find_samples(make_alphamatting(tmp_path / "am", kind="zero"))
    calls = []
    res = evaluate(
        half_predict, samples, save_dir=tmp_path / "pred", progress=lambda i, n, r: calls.append((i, n))
    )
    # 0.5 -> 8-bit round(127.5) = 128; unknown GT = 0: SAD = 60 px * 128/255 / 1000 per image
    n = H * 5
    for r in res.results:
        assert r.metrics["sad"] == pytest.approx(n * 128 / 255 / 1000)
        assert r.metrics["mse"] == pytest.approx((128 / 255) ** 2 * 1e3)
    assert res.summary["overall"]["sad"] == pytest.approx(n * 128 / 255 / 1000)
    assert calls == [(0, 3), (1, 3), (2, 3)]
    # saved predictions: known regions forced, unknown band quantised to 128
    saved = np.asarray(Image.open(tmp_path / "pred" / "trimap1" / "GT01.png"))
    np.testing.assert_array_equal(saved[:, :5], 0)
    np.testing.assert_array_equal(saved[:, 5:10], 128)
    np.testing.assert_array_equal(saved[:, 10:], 255)
    assert res.results[0].pred_path == tmp_path / "pred" / "trimap1" / "GT01.png"


def test_quantize_and_force_switches(tmp_path):
    samples = find_samples(make_alphamatting(tmp_path / "am", kind="zero", n=1))
    pred = lambda im, tri, g: np.full(tri.shape, 0.31, np.float32)
    q = evaluate(pred, samples).results[0].metrics["sad"]
    f = evaluate(pred, samples, quantize=False).results[0].metrics["sad"]
    assert q == pytest.approx(H * 5 * 79 / 255 / 1000)  # 0.31 * 255 = 79.05 -> 79
    assert f == pytest.approx(H * 5 * 0.31 / 1000, rel=1e-6)
    # Grad sees the forced known regions: without forcing, the flat 0.31 map has no edges at all
    g_forced = evaluate(pred, samples).results[0].metrics["grad"]
    g_raw = evaluate(pred, samples, force_known=False).results[0].metrics["grad"]
    assert g_forced != g_raw


def test_evaluate_errors_raise_or_skip(tmp_path):
    samples = find_samples(make_sim(tmp_path / "sim"))

    def flaky(image, trimap, group):
        if group == "hair_easy":
            raise RuntimeError("model exploded")
        return image[:, :, 0]

    with pytest.raises(RuntimeError, match="exploded"):
        evaluate(flaky, samples)
    res = evaluate(flaky, samples, on_error="skip")
    assert [r.sample.name for r in res.failed] == ["b_bg1"]
    assert res.summary["overall"]["count"] == 2 and "hair_easy" not in res.summary["groups"]
    assert "RuntimeError: model exploded" in format_table(res)

    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda im, tri, g: np.zeros((3, 3)), samples)


def test_evaluate_size_mismatch(tmp_path):
    root = make_alphamatting(tmp_path / "am", n=1)
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(root / "alpha" / "GT01.png")
    with pytest.raises(SizeMismatchError):
        evaluate(gt_predict, find_samples(root))


# ---------------------------------------------------------------- table and report


def test_format_table(tmp_path):
    res = evaluate(half_predict, find_samples(make_sim(tmp_path / "sim")))
    table = format_table(res)
    lines = table.splitlines()
    assert lines[0] == "| group | images | SAD | MSE | Grad | Conn | time (s) |"
    assert lines[2].startswith("| **overall** | 3 | ")
    assert lines[3].startswith("| fur | 2 | ") and lines[4].startswith("| hair_easy | 1 | ")
    sad = res.summary["overall"]["sad"]
    assert f"| {sad:.2f} |" in lines[2]
    per = format_table(res, per_image=True)
    assert "| a_bg2 | fur |" in per
    json.dumps(res.to_dict())  # JSON-serialisable


def test_write_report(tmp_path):
    res = evaluate(half_predict, find_samples(make_alphamatting(tmp_path / "am")))
    md = write_report(
        res, tmp_path / "report", title="Tiny", max_rows=2, tile_size=(40, 30), extra={"model": "x"}
    )
    text = md.read_text()
    assert md.name == "report.md" and text.startswith("# Tiny")
    assert "- model: x" in text and "| **overall** | 3 |" in text and "contact_sheet.png" in text
    sheet = Image.open(tmp_path / "report" / "contact_sheet.png")
    assert sheet.mode == "RGB"
    assert sheet.width == 5 * (40 + 4) + 4 and sheet.height == 16 + 2 * (30 + 16 + 4) + 4


def test_first_call_costs_are_not_charged_to_the_first_image(tmp_path):
    samples = find_samples(make_sim(tmp_path / "sim"))
    calls = []

    def cold_start(image, trimap, group):  # a lazy import / kernel load on the first call only
        if not calls:
            time.sleep(0.3)
        calls.append(group)
        return image[:, :, 0]

    res = evaluate(cold_start, samples)
    assert len(calls) == len(samples) + 1 and res.results[0].time_s < 0.2
    calls.clear()
    assert evaluate(cold_start, samples, warm_up=False).results[0].time_s >= 0.3
