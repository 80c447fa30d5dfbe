import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.models.registry import build_model
from backend.semantic_trimap import class_shares, override_semantic_trimap, semantic_trimap, window_starts


def test_window_positions_match_official_rule() -> None:
    # 0, s/2, 2·s/2, … while < L−s, then L−s (ref §2.3)
    assert window_starts(1000, 320) == (320, [0, 160, 320, 480, 640, 680])
    assert window_starts(1000, 800) == (800, [0, 200])
    assert window_starts(960, 320) == (320, [0, 160, 320, 480, 640])
    assert window_starts(800, 800) == (800, [0])
    # Shorter than the window: one window over the whole side (the official code would use a negative offset).
    assert window_starts(504, 800) == (504, [0])


def test_semantic_trimap_range_and_gating() -> None:
    torch.manual_seed(0)
    clf = build_model("classifier_tiny", num_classes=5).eval()
    image_n = torch.randn(1, 3, 120, 200)
    trimap = torch.zeros(1, 1, 120, 200)
    trimap[..., 40:80, 50:150] = 128
    trimap[..., 80:, :] = 255
    smap = semantic_trimap(clf, image_n, trimap, window_sizes=(64, 160))
    assert smap.shape == (1, 5, 120, 200)
    assert smap.min() >= 0 and smap.max() <= 1
    assert (smap[..., trimap[0, 0] != 128] == 0).all()
    assert smap[..., 40:80, 50:150].max() > 0


def test_semantic_trimap_equals_manual_stitching() -> None:
    torch.manual_seed(1)
    clf = build_model("classifier_tiny", num_classes=3).eval()
    image_n = torch.randn(1, 3, 64, 96)
    trimap = torch.full((1, 1, 64, 96), 128.0)
    got = semantic_trimap(clf, image_n, trimap, window_sizes=(32,), batch_size=3)
    x = torch.cat([image_n, trimap / 255], 1)
    total = torch.zeros(1, 3, 64, 96)
    count = torch.zeros(1, 1, 64, 96)
    for y in [0, 16, 32]:
        for x0 in [0, 16, 32, 48, 64]:
            with torch.no_grad():
                cam = clf(x[..., y:y + 32, x0:x0 + 32])[1]
            total[..., y:y + 32, x0:x0 + 32] += torch.nn.functional.interpolate(cam, size=(32, 32), mode="bilinear")
            count[..., y:y + 32, x0:x0 + 32] += 1
    ref = total / count
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_override_and_shares() -> None:
    trimap = torch.zeros(1, 1, 4, 4)
    trimap[..., :2, :] = 128
    smap = override_semantic_trimap([2], trimap, 4)
    assert smap[0, 2, :2].eq(1).all() and smap[0, 2, 2:].eq(0).all() and smap[0, [0, 1, 3]].eq(0).all()
    assert class_shares(smap, ["a", "b", "c", "d"]) == {"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.0}
    # a tie goes to the first class; pixels where no class fires are not counted
    tied = torch.zeros(1, 3, 1, 4)
    tied[0, 1:, 0, :2] = 0.5
    tied[0, 0, 0, 2] = 0.2
    assert class_shares(tied, ["a", "b", "c"]) == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 0.0}, abs=1e-4)


def test_window_batches_match_one_window_at_a_time() -> None:
    torch.manual_seed(2)
    clf = build_model("classifier_tiny", num_classes=4).eval()
    image_n = torch.randn(2, 3, 100, 170)
    trimap = torch.full((2, 1, 100, 170), 128.0)
    trimap[1, :, :, :60] = 0
    single = semantic_trimap(clf, image_n, trimap, window_sizes=(48, 96), batch_size=1)
    batched = semantic_trimap(clf, image_n, trimap, window_sizes=(48, 96), batch_size=3)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_triton_stitching_equals_torch_path_in_interpreter() -> None:
    """The CUDA default's window-stitching kernel, run by Triton's CPU interpreter (skipped without Triton):
    the same map as the separable torch path, including two images, windows cut to a short side,
    and two window sizes that both become the whole image (the same shape group)."""
    pytest.importorskip("triton")
    code = (
        "import torch\n"
        "from backend.models.registry import build_model\n"
        "from backend.semantic_trimap import semantic_trimap\n"
        "torch.manual_seed(0)\n"
        "clf = build_model('classifier_tiny', num_classes=5).eval()\n"
        "for n, h, w, sizes in [(1, 120, 200, (64, 160)), (2, 60, 60, (64, 160))]:\n"
        "    image_n = torch.randn(n, 3, h, w)\n"
        "    trimap = torch.zeros(n, 1, h, w)\n"
        "    trimap[..., h // 4: 3 * h // 4, w // 5: 4 * w // 5] = 128\n"
        "    trimap[..., 3 * h // 4:, :] = 255\n"
        "    a = semantic_trimap(clf, image_n, trimap, window_sizes=sizes, stitch='rows')\n"
        "    b = semantic_trimap(clf, image_n, trimap, window_sizes=sizes, stitch='triton')\n"
        "    assert a.amax() > 0.5 and torch.allclose(a, b, rtol=0, atol=1e-6), float((a - b).abs().max())\n"
        "print('ok')\n")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_row_stitching_in_column_chunks_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vertical pass of the separable path runs in column chunks (a bounded temporary at 8192²)."""
    import backend.semantic_trimap as st

    torch.manual_seed(3)
    clf = build_model("classifier_tiny", num_classes=4).eval()
    image_n = torch.randn(1, 3, 90, 150)
    trimap = torch.full((1, 1, 90, 150), 128.0)
    whole = semantic_trimap(clf, image_n, trimap, window_sizes=(48, 96))
    monkeypatch.setattr(st, "ROW_CHUNK", 17)
    chunked = semantic_trimap(clf, image_n, trimap, window_sizes=(48, 96))
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
