"""Fast-path pieces: exact EDT on tensors, BN folding, channels-last, device pre-processing, memory model."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from backend import processing as P
from backend.accel import fold_batchnorm, inference_copy, sim_inference_forward, sim_layer4
from backend.models.registry import build_model
from backend.predictor import MattingPredictor
from tests.conftest import make_example, randomise_bn

REPO = Path(__file__).resolve().parents[2]


def _random_masks(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    masks = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        m = rng.random((h, w)) < rng.choice([0.002, 0.02, 0.2, 0.7])
        if not m.any():
            m[rng.integers(h), rng.integers(w)] = True
        masks.append(m)
    return masks


def _assert_edt_matches_opencv(mask: np.ndarray, d2: np.ndarray) -> None:
    ref = cv2.distanceTransform((~mask).astype(np.uint8) * 255, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # Our d² is the exact integer; OpenCV's float distance squared rounds back to it (it is within 1 ulp).
    np.testing.assert_array_equal(np.rint(ref.astype(np.float64) ** 2).astype(np.int64), d2)
    np.testing.assert_array_less(np.abs(np.sqrt(d2.astype(np.float32)) - ref), np.spacing(ref) * 1.01 + 1e-30)


def test_edt_equals_opencv_on_random_masks(rng: np.random.Generator) -> None:
    for m in _random_masks(rng, 25):
        _assert_edt_matches_opencv(m, P.edt_sq(torch.from_numpy(m), method="torch").numpy())
    # batched form = per-mask form
    ms = np.stack([rng.random((40, 50)) < 0.05 for _ in range(3)])
    ms[:, 0, 0] = True
    batched = P.edt_sq(torch.from_numpy(ms), method="torch").numpy()
    for i in range(3):
        _assert_edt_matches_opencv(ms[i], batched[i])


def test_edt_radius_bound_is_exact_inside() -> None:
    m = np.zeros((30, 200), bool)
    m[:, 0] = True
    d2 = P.edt_sq(torch.from_numpy(m), radius=50, method="torch").numpy()
    x = np.arange(200)
    np.testing.assert_array_equal(d2[:, :51], np.broadcast_to(x[:51] ** 2, (30, 51)))
    assert (d2[:, 51:] == 51 ** 2).all()  # beyond the radius: saturated at (radius+1)²


def test_triton_edt_kernel_in_interpreter() -> None:
    """The CUDA kernel's code, run by Triton's CPU interpreter (skipped where Triton is not installed)."""
    pytest.importorskip("triton")
    code = (
        "import numpy as np, torch, cv2\n"
        "from backend import processing as P\n"
        "rng = np.random.default_rng(5)\n"
        "for h, w, p in [(37, 70, 0.01), (64, 129, 0.2), (5, 200, 0.003)]:\n"
        "    m = rng.random((h, w)) < p\n"
        "    m[0, 0] = True\n"
        "    d2 = P.edt_sq(torch.from_numpy(m), method='triton').numpy()\n"
        "    ref = cv2.distanceTransform((~m).astype(np.uint8) * 255, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)\n"
        "    assert np.array_equal(np.rint(ref.astype(np.float64) ** 2).astype(np.int64), d2), (h, w)\n"
        "    for r in (20, 740):  # the FP32 kernel variant (radius-clamped) against the torch path\n"
        "        t = torch.from_numpy(m)\n"
        "        assert torch.equal(P.edt_sq(t, radius=r, method='triton'), P.edt_sq(t, radius=r, method='torch'))\n"
        "print('ok')\n")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_gaussian_encoding_torch_equals_opencv_path() -> None:
    tri = np.full((120, 160), 128, np.uint8)
    tri[:, :20] = 0
    tri[40:90, 120:] = 255
    t2 = P.trimap_two_channel(tri)
    ref = P.trimap_gaussian(t2)
    got = P.trimap_gaussian_torch(torch.from_numpy(t2.transpose(2, 0, 1).copy())[None], method="torch")
    np.testing.assert_allclose(got[0].numpy().transpose(1, 2, 0), ref, rtol=2e-5, atol=1e-7)
    empty = P.trimap_gaussian_torch(torch.zeros(1, 2, 8, 8), method="torch")
    assert not empty.any()


def _sim_args(h: int = 64, w: int = 96, c: int = 20) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    return (torch.rand(1, 3, h, w, generator=g), torch.randn(1, 3, h, w, generator=g), torch.rand(1, 2, h, w, generator=g),
            torch.rand(1, 6, h, w, generator=g), torch.rand(1, c, h, w, generator=g))


def _with_random_bn(name: str, seed: int, bn_seed: int) -> torch.nn.Module:
    """A registry model in eval mode with non-trivial BN statistics (so folding has something to fold)."""
    torch.manual_seed(seed)
    model = build_model(name)
    randomise_bn(model, bn_seed)
    return model.eval()


@pytest.mark.parametrize("name", ["sim_tiny", "sim_lite"])
def test_bn_folding_is_exact_algebra(name: str) -> None:
    model = _with_random_bn(name, 0, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = inference_copy(model, fold_bn=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched
    args = _sim_args()
    with torch.no_grad():
        ref64 = model.double()(*(a.double() for a in args), aux=True)
        got64 = inference_copy(model, fold_bn=True)(*(a.double() for a in args), aux=True)
        model.float()
        ref32, got32 = model(*args, aux=True), folded(*args, aux=True)
    for k in ref64:
        assert (ref64[k] - got64[k]).abs().max() < 1e-9, k  # folding itself is exact
    assert (ref32["alpha"] - got32["alpha"]).abs().max() < 1e-4


def test_bn_folding_classifier_and_channels_last() -> None:
    clf = _with_random_bn("classifier_lite", 0, 2)
    fast = inference_copy(clf, fold_bn=True, channels_last=True)
    assert fold_batchnorm(build_model("classifier_tiny")) > 0
    x = torch.randn(2, 4, 96, 96)
    with torch.no_grad():
        ref = clf(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-4)


def test_low_precision_weights_equal_autocast_casts() -> None:
    """inference_copy(dtype=) stores what autocast would cast each weight to: the same outputs, no per-call
    weight copies (bf16 on the CPU here; the predictor does this for fp16/bf16 on CUDA)."""
    clf = _with_random_bn("classifier_tiny", 1, 5)
    wide = inference_copy(clf)
    low = inference_copy(clf, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in low.parameters())
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref, got = wide(x), low(x)
    torch.testing.assert_close(got[1].float(), ref[1].float(), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["classifier_tiny", "classifier_r50"])
def test_fused_blocks_equal_plain(name: str) -> None:
    """fuse_relu swaps every folded ResNet block's forward (cuDNN-fused on CUDA; the plain ops here)."""
    clf = _with_random_bn(name, 3, 6)
    plain = inference_copy(clf)
    fused = inference_copy(clf, fuse_relu=True)
    blocks = sum(type(m).__name__ in ("Bottleneck", "BasicBlock") for m in clf.modules())
    assert blocks > 0 and sum(type(m).__name__.startswith("Fused") for m in fused.modules()) == blocks
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x)[1], plain(x)[1], rtol=1e-5, atol=1e-5)


def _tiny_models_with_random_bn() -> tuple[torch.nn.Module, torch.nn.Module]:
    """sim_tiny + classifier_tiny with non-trivial BN statistics (so BN folding has something to fold)."""
    torch.manual_seed(0)
    sim, clf = build_model("sim_tiny"), build_model("classifier_tiny")
    randomise_bn(sim, 3)
    randomise_bn(clf, 4)
    return sim, clf


def test_optimised_predictor_equals_plain_and_device_path() -> None:
    sim, clf = _tiny_models_with_random_bn()
    image, trimap, _ = make_example(100, 140)
    kw = {"device": "cpu", "precision": "fp32"}  # the same function: compared to 1e-4
    plain = MattingPredictor(sim, clf, optimize=False, **kw).predict(image, trimap, want_semantic=True)
    fast = MattingPredictor(sim, clf, **kw).predict(image, trimap, want_semantic=True)
    dev = MattingPredictor(sim, clf, gpu_preprocess=True, **kw).predict(image, trimap, want_semantic=True)
    # The CUDA default of fused blocks (their CPU fallback here: the same ops, the same forward structure).
    fused_pred = MattingPredictor(sim, clf, gpu_preprocess=True, fuse_relu=True, **kw)
    fused = fused_pred.predict(image, trimap, want_semantic=True)
    assert any(type(m).__name__.startswith("Fused") for m in fused_pred._networks()[0].modules())
    for r in (fast, dev, fused):
        assert np.abs(r.alpha - plain.alpha).max() < 1e-4
        assert np.abs(r.semantic - plain.semantic).max() < 1e-4
    u16 = MattingPredictor(sim, clf, gpu_preprocess=True, **kw).predict(image.astype(np.uint16) * 257, trimap)
    assert np.abs(u16.alpha - plain.alpha).max() < 1e-4


def test_memory_estimate_monotone_and_calibrated() -> None:
    pred = MattingPredictor(build_model("sim_lite"), build_model("classifier_lite"), device="cpu")
    sizes = [128, 256, 512, 1024, 2048]
    act = [pred.estimate_memory_gb(s, s) for s in sizes]
    assert all(a < b for a, b in itertools.pairwise(act))
    peak = [pred.estimate_peak_gb(s, s, tile=0) for s in sizes]
    assert all(a < b for a, b in itertools.pairwise(peak))
    # Tiling bounds the prediction: a huge image with a small budget stays far below the untiled one.
    pred.memory_budget_gb = 0.5
    assert pred.estimate_peak_gb(4096, 4096) < pred.estimate_peak_gb(4096, 4096, tile=0) / 2
    pred.precision = "bf16"  # CPU autocast keeps fp32 activations: the same estimate
    assert pred.estimate_memory_gb(512, 512) == pytest.approx(act[2])


@pytest.mark.slow
def test_memory_estimate_within_2x_of_measured_rss() -> None:
    """Fresh process: VmHWM growth of one sim_lite forward at 512² vs the calibrated estimate."""
    code = (
        "import torch, json\n"
        "from pathlib import Path\n"
        "from backend.models.registry import build_model\n"
        "from backend.predictor import MattingPredictor\n"
        "def st(k):\n"
        "    return next(int(l.split()[1]) for l in Path('/proc/self/status').read_text().splitlines()"
        " if l.startswith(k)) / 2**20\n"
        "from backend.processing import NetworkInputs\n"
        "p = MattingPredictor(build_model('sim_lite'), device='cpu')\n"
        "net, _ = p._networks()\n"
        "s = 512\n"
        "x = NetworkInputs(torch.rand(1,3,s,s), torch.randn(1,3,s,s), torch.rand(1,2,s,s), torch.rand(1,6,s,s),"
        " torch.zeros(1,1,s,s))\n"
        "smap = torch.rand(1,20,s,s)\n"
        "base = st('VmRSS'); Path('/proc/self/clear_refs').write_text('5')\n"
        "with torch.no_grad(): p._forward(net, x, smap, False)\n"
        "print(json.dumps([st('VmHWM') - base, p.estimate_memory_gb(s, s)]))\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    measured, estimate = (float(v) for v in out.stdout.strip().splitlines()[-1].strip("[]").split(","))
    assert measured / 2 <= estimate <= measured * 2, (measured, estimate)


@pytest.mark.parametrize("aux", [False, True])
def test_lean_forward_is_bitwise_the_model_forward(aux: bool) -> None:
    """The predictor's memory-lean forward must stay the same function as SIMNet.forward (drift guard)."""
    torch.manual_seed(0)
    model = build_model("sim_tiny")
    randomise_bn(model, 5)
    model.eval()
    args = _sim_args()
    with torch.no_grad():
        ref = model(*args, aux=aux)
        got = sim_inference_forward(model, *args, aux=aux)
        fast = inference_copy(model, channels_last=True)
        ref_fast = fast(*args, aux=aux)
        got_fast = sim_inference_forward(fast, *args, aux=aux)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
        torch.testing.assert_close(got_fast[k], ref_fast[k], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 8"):
        sim_inference_forward(model, *(a[..., :60, :90] for a in args))


def test_tile_cores_partition_the_image() -> None:
    for h, w, tile, ov in [(328, 408, 192, 64), (1032, 776, 512, 128), (200, 200, 256, 64)]:
        tiles = P.tile_grid(h, w, tile, ov)
        cover = np.zeros((h, w), np.int32)
        for t, c in zip(tiles, P.tile_cores(tiles, h, w)):
            assert t.y0 <= c.y0 < c.y1 <= t.y1 and t.x0 <= c.x0 < c.x1 <= t.x1
            assert c.y0 % 8 == 0 and c.x0 % 8 == 0
            cover[c.y0:c.y1, c.x0:c.x1] += 1
        assert (cover == 1).all()


def test_whole_image_context_for_tiles() -> None:
    torch.manual_seed(0)
    sim = build_model("sim_tiny")
    randomise_bn(sim, 6)
    sim.eval()
    aspp = sim.decoder.global_module
    x = torch.randn(1, 32, 12, 17)
    with torch.no_grad():
        assert torch.equal(aspp(x), aspp(x, x.mean((2, 3), keepdim=True)))
    pred = MattingPredictor(sim, device="cpu", precision="fp32")  # the layer4 reference runs outside autocast
    net, _ = pred._networks()
    args = _sim_args(328, 408)
    inputs = P.NetworkInputs(*args[:4], torch.zeros(1, 1, 328, 408))
    with torch.no_grad():
        true = sim_layer4(net, inputs.image_n, inputs.trimap2, inputs.trimap_gauss, args[4]).mean((2, 3), keepdim=True)
        est = pred._global_context(net, inputs, args[4], P.tile_grid(328, 408, 192, 64))
    assert est is not None and float((est - true).norm() / true.norm()) < 0.05
    with pytest.raises(ValueError, match="tile_context"):
        MattingPredictor(sim, device="cpu", tile_context="global")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_gpu_edt_triton_equals_opencv(rng: np.random.Generator) -> None:
    for m in _random_masks(rng, 8):
        _assert_edt_matches_opencv(m, P.edt_sq(torch.from_numpy(m).cuda(), method="triton").cpu().numpy())


@pytest.mark.gpu
@cuda
def test_gpu_fast_paths_match_eager() -> None:
    sim, clf = _tiny_models_with_random_bn()
    image, trimap, _ = make_example(136, 200)
    ref = MattingPredictor(sim, clf, device="cpu", optimize=False).predict(image, trimap).alpha
    for kw in ({}, {"cuda_graphs": True}, {"gpu_preprocess": False}, {"channels_last": False}):
        pred = MattingPredictor(sim, clf, device="cuda", **kw)
        for _ in range(2):  # the second call replays the captured graphs
            got = pred.predict(image, trimap).alpha
            assert np.abs(got - ref).max() < 1e-2, kw  # TF32 convolutions on the GPU


def test_compile_failure_falls_back_to_eager() -> None:
    from backend.accel import _CompiledOrEager

    class Broken(torch.nn.Module):
        def forward(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("no C++ compiler")

    clf = build_model("classifier_tiny").eval()
    wrapped = _CompiledOrEager(clf, Broken())
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        got = wrapped(x)
        assert wrapped.failed and torch.equal(got[1], clf(x)[1])
    assert wrapped.fc is clf.fc
