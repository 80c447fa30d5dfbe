"""Predictor, checkpoint loading (ours and official layouts) and the official inference path."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from backend.classes import SIMD_CLASSES
from backend.cli import main
from backend.models.registry import build_model
from backend.models.weights import WeightsError, load_weights, save_checkpoint
from backend.predictor import PRECISIONS, MattingPredictor, cpu_has_native_bf16, resolve_precision
from backend.protocol import PRECISION_AUTO, PRECISION_MODES
from tests.conftest import make_example, randomise_bn


@pytest.fixture
def tiny_predictor() -> MattingPredictor:
    torch.manual_seed(0)
    return MattingPredictor(build_model("sim_tiny"), build_model("classifier_tiny"), device="cpu")


def test_predict_outputs(tiny_predictor: MattingPredictor) -> None:
    image, trimap, _ = make_example()
    r = tiny_predictor.predict(image, trimap, want_foreground=True, want_semantic=True)
    assert r.alpha.shape == trimap.shape and r.alpha.dtype == np.float32
    assert (r.alpha[trimap == 0] == 0).all() and (r.alpha[trimap == 255] == 1).all()
    assert r.foreground.shape == (*trimap.shape, 3) and 0 <= r.foreground.min() <= r.foreground.max() <= 1
    assert r.semantic.shape == (20, *trimap.shape) and (r.semantic[:, trimap != 128] == 0).all()
    assert abs(sum(r.class_shares.values()) - 1) < 1e-3
    assert {"preprocess", "classifier", "matting", "total"} <= set(r.timings)


def test_predict_input_kinds_agree(tiny_predictor: MattingPredictor) -> None:
    image, trimap, _ = make_example()
    a8 = tiny_predictor.predict(image, trimap).alpha
    a16 = tiny_predictor.predict(image.astype(np.uint16) * 257, trimap).alpha
    af = tiny_predictor.predict(image.astype(np.float32) / 255, trimap).alpha
    np.testing.assert_allclose(a8, a16, atol=1e-5)
    np.testing.assert_allclose(a8, af, atol=1e-5)
    grey = tiny_predictor.predict(image[..., 0], trimap).alpha
    assert grey.shape == trimap.shape


def test_predict_errors(tiny_predictor: MattingPredictor) -> None:
    image, trimap, _ = make_example()
    with pytest.raises(ValueError, match="trimap is"):
        tiny_predictor.predict(image, trimap[:-1])
    with pytest.raises(ValueError, match="no unknown"):
        tiny_predictor.predict(image, np.where(trimap == 128, 255, trimap).astype(np.uint8))
    with pytest.raises(ValueError, match="unknown class"):
        tiny_predictor.predict(image, trimap, classes=["unicorn"])
    t127 = np.where(trimap == 128, 127, trimap).astype(np.uint8)
    with pytest.raises(ValueError, match="tolerant"):
        tiny_predictor.predict(image, t127)
    np.testing.assert_array_equal(tiny_predictor.predict(image, t127, trimap_mode="tolerant").alpha,
                                  tiny_predictor.predict(image, trimap).alpha)
    # float input outside [0, 1] or not finite is refused, not clipped into a wrong matte
    with pytest.raises(ValueError, match=r"\[0, 1\], got \[0, 2\d\d\] \(8-bit data\? divide by 255\)"):
        tiny_predictor.predict(image.astype(np.float32), trimap)
    with pytest.raises(ValueError, match="NaN"):
        tiny_predictor.predict(np.where(image > 100, np.nan, image / 255.0), trimap)
    with pytest.raises(ValueError, match=r"got \[-0\.5"):
        tiny_predictor.predict(image / 255.0 - 0.5, trimap)
    with pytest.raises(ValueError, match="tile must be None"):
        tiny_predictor.predict(image, trimap, tile=-5)  # was taken as "never"
    ringing = np.clip(image / 255.0 * 1.2 - 0.1, -0.1, 1.1)  # bicubic / Lanczos overshoot: clipped, not refused
    assert tiny_predictor.predict(ringing, trimap).alpha.shape == trimap.shape


def test_class_override_changes_result(tiny_predictor: MattingPredictor) -> None:
    image, trimap, _ = make_example()
    a = tiny_predictor.predict(image, trimap, classes=["fur"]).alpha
    b = tiny_predictor.predict(image, trimap, classes=["glass_ice"]).alpha
    assert not np.array_equal(a, b)


def test_semantic_off_equals_no_classifier(tiny_predictor: MattingPredictor) -> None:
    image, trimap, _ = make_example()
    off = tiny_predictor.predict(image, trimap, semantic=False).alpha
    bare = MattingPredictor(tiny_predictor.model, None, device="cpu").predict(image, trimap).alpha
    np.testing.assert_array_equal(off, bare)
    assert not np.array_equal(off, tiny_predictor.predict(image, trimap).alpha)


def test_tiled_matches_untiled_on_small_net(tiny_predictor: MattingPredictor) -> None:
    image, trimap, _ = make_example(320, 400)
    full = tiny_predictor.predict(image, trimap, tile=0)
    tiled = tiny_predictor.predict(image, trimap, tile=192)
    assert tiled.tiles > 1
    unknown = trimap == 128
    assert np.abs(full.alpha - tiled.alpha)[unknown].mean() < 2 / 255


def test_predict_batch_equals_one_at_a_time(tiny_predictor: MattingPredictor) -> None:
    image, trimap, _ = make_example(96, 128)
    rng = np.random.default_rng(1)
    images = [image, image[::-1].copy(), rng.integers(0, 256, image.shape, dtype=np.uint8)]
    trimaps = [trimap, trimap[::-1].copy(), trimap]
    batch = tiny_predictor.predict_batch(images, trimaps, want_foreground=True, want_semantic=True)
    assert [r.batch for r in batch] == [3, 3, 3]
    for img, tri, got in zip(images, trimaps, batch):
        alone = tiny_predictor.predict(img, tri, want_foreground=True, want_semantic=True)
        np.testing.assert_allclose(got.alpha, alone.alpha, atol=1e-6)
        np.testing.assert_allclose(got.foreground, alone.foreground, atol=1e-5)
        np.testing.assert_allclose(got.semantic, alone.semantic, atol=1e-6)  # scaled per image, not per batch
        assert got.class_shares == alone.class_shares
    over = tiny_predictor.predict_batch(images[:2], trimaps[:2], classes=["fur"])
    np.testing.assert_allclose(over[1].alpha, tiny_predictor.predict(images[1], trimaps[1], classes=["fur"]).alpha,
                               atol=1e-6)
    # the device pre/post-processing path (exact EDT in torch; runs on CPU too) batches the uploads, the
    # encodings and the finalisation; a batch mixing uint8 and uint16 is converted on the host
    dev = MattingPredictor(tiny_predictor.model, tiny_predictor.classifier, device="cpu", gpu_preprocess=True)
    mixed = [images[0], images[1].astype(np.uint16) * 257, images[2]]
    for img, tri, got in zip(mixed, trimaps, dev.predict_batch(mixed, trimaps)):
        np.testing.assert_allclose(got.alpha, dev.predict(img, tri).alpha, atol=1e-6)
    with pytest.raises(ValueError, match="one size"):
        tiny_predictor.predict_batch([image, image[:64]], [trimap, trimap[:64]])
    with pytest.raises(ValueError, match="as many trimaps"):
        tiny_predictor.predict_batch([image, image], [trimap])


def test_own_checkpoint_roundtrip_fp16(tmp_path: Path) -> None:
    m = build_model("sim_tiny", num_classes=3)
    path = save_checkpoint(tmp_path / "m.pt", m, kind="matting", classes=["a", "b", "c"],
                           meta={"foreground_head": True}, half=True)
    lw = load_weights(path, "matting")
    assert lw.arch == "sim_tiny" and lw.classes == ("a", "b", "c") and lw.meta["foreground_head"]
    assert next(lw.model.parameters()).dtype == torch.float32
    with pytest.raises(WeightsError, match="expected classifier"):
        load_weights(path, "classifier")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_weights(bad, "matting")
    # a pickle that needs code to load is refused, and the message does not advise weights_only=False
    torch.save({"state_dict": {}, "hook": print}, bad)
    with pytest.raises(WeightsError, match="files that need code to load are refused") as info:
        load_weights(bad, "matting")
    assert "weights_only" not in str(info.value)


def _official_files(tmp_path: Path) -> tuple[Path, Path, torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(3)
    sim, clf = build_model("sim_r50"), build_model("classifier_r50")
    randomise_bn(sim, 1)
    randomise_bn(clf, 2)
    wpath, cpath = tmp_path / "ckpt_best.pth", tmp_path / "classifier_resnet50_best.pth.tar"
    torch.save({"epoch": 30, "state_dict": sim.state_dict(), "best_sad": 27.7}, wpath)
    torch.save({"state_dict": {f"module.{k}": v for k, v in clf.state_dict().items()}}, cpath)
    return wpath, cpath, sim.eval(), clf.eval()


def _official_reference(image_u8: np.ndarray, trimap: np.ndarray, sim: torch.nn.Module,
                        clf: torch.nn.Module) -> np.ndarray:
    """The official inference path written out from the reference notes (§5.1, §2.3, §1.1, §5.2)."""
    h, w = trimap.shape
    ph, pw = (h // 8 + 1) * 8 - h, (w // 8 + 1) * 8 - w
    img = cv2.copyMakeBorder(image_u8, 0, ph, 0, pw, cv2.BORDER_REFLECT).astype(np.float32) / 255
    tri = cv2.copyMakeBorder(trimap, 0, ph, 0, pw, cv2.BORDER_REFLECT)
    t2 = np.stack([tri == 0, tri == 255], -1).astype(np.float32)
    clicks = np.zeros((*tri.shape, 6), np.float32)
    for k in range(2):
        if t2[..., k].any():
            d = cv2.distanceTransform(((1 - t2[..., k]) * 255).astype(np.uint8), cv2.DIST_L2, 0) ** 2
            for j, s in enumerate((0.02, 0.08, 0.16)):
                clicks[..., 3 * k + j] = np.exp(-d / (2 * (s * 320) ** 2))
    T = lambda a: torch.from_numpy(a.transpose(2, 0, 1).copy())[None]
    image = T(img)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    image_n = (image - mean) / std
    tri_t = torch.from_numpy(tri.astype(np.float32))[None, None]
    H, W = tri.shape
    S, C = torch.zeros(1, 20, H, W), torch.zeros(1, 1, H, W)
    with torch.no_grad():
        for s in (320, 800):
            ys = list(range(0, H - s, s // 2)) + [H - s]
            xs = list(range(0, W - s, s // 2)) + [W - s]
            for y in ys:
                for x in xs:
                    win = tri_t[..., y:y + s, x:x + s]
                    if not (win == 128).any():
                        continue
                    inp = torch.cat([image_n[..., y:y + s, x:x + s], win / 255], 1)
                    cam = torch.nn.functional.interpolate(clf(inp)[1], size=(s, s), mode="bilinear")
                    S[..., y:y + s, x:x + s] += cam
                    C[..., y:y + s, x:x + s] += 1
        smap = S / C.clamp(min=1)
        smap = (smap - smap.min()) / (smap.max() - smap.min()) * (tri_t == 128)
        alpha = sim(image, image_n, T(t2), T(clicks), smap, aux=False)["alpha"][0, 0].numpy()
    alpha = np.clip(alpha, 0, 1)
    alpha[tri == 0], alpha[tri == 255] = 0, 1
    return alpha[:h, :w]


@pytest.mark.slow
def test_official_checkpoints_reproduce_official_path(tmp_path: Path) -> None:
    """Official-format files load strictly and `semantic-matte matte` matches the official path within 1/255."""
    wpath, cpath, sim, clf = _official_files(tmp_path)
    image, trimap, _ = make_example(808, 830, seed=5)  # both sides ≥ 800: the official windows apply unchanged
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(trimap).save(tmp_path / "tri.png")
    out = tmp_path / "alpha.png"
    rc = main(["matte", str(tmp_path / "img.png"), str(tmp_path / "tri.png"), "-o", str(out), "--weights", str(wpath),
               "--classifier", str(cpath), "--device", "cpu", "--tile", "off", "--refine", "off"])
    assert rc == 0
    got = np.asarray(Image.open(out), np.float32) / 255
    ref = _official_reference(image, trimap, sim, clf)
    assert np.abs(got - ref).max() <= 1 / 255 + 1e-6


def test_semantic_windows_come_from_the_checkpoint(tmp_path: Path) -> None:
    """Official checkpoints slide the official 320 / 800 windows; ours name theirs in the meta; an argument
    overrides both; a malformed entry is a clear weights error, not a crash at the first request."""
    wpath, cpath, _, _ = _official_files(tmp_path)
    assert MattingPredictor.from_pretrained(wpath, cpath, device="cpu").window_sizes == (320, 800)
    m = build_model("sim_tiny")
    ours = save_checkpoint(tmp_path / "m.pt", m, kind="matting", classes=SIMD_CLASSES,
                           meta={"semantic_windows": [256]})
    assert MattingPredictor.from_pretrained(ours, device="cpu").window_sizes == (256,)
    assert MattingPredictor.from_pretrained(ours, device="cpu", window_sizes=(320, 800)).window_sizes == (320, 800)
    plain = save_checkpoint(tmp_path / "plain.pt", m, kind="matting", classes=SIMD_CLASSES)
    assert MattingPredictor.from_pretrained(plain, device="cpu").window_sizes == (320, 800)
    for bad in ([], [0], "320", [320.5], [True]):
        path = save_checkpoint(tmp_path / "bad.pt", m, kind="matting", classes=SIMD_CLASSES,
                               meta={"semantic_windows": bad})
        with pytest.raises(WeightsError, match="semantic_windows"):
            MattingPredictor.from_pretrained(path, device="cpu")


def test_official_layout_loads_strictly(tmp_path: Path) -> None:
    wpath, cpath, sim, _ = _official_files(tmp_path)
    lw = load_weights(wpath, "matting")
    assert lw.arch == "sim_r50" and lw.source == "official" and lw.classes == SIMD_CLASSES
    lc = load_weights(cpath, "classifier")
    assert lc.arch == "classifier_r50"
    bare = tmp_path / "bare.pth"
    sd = sim.state_dict()
    torch.save(sd, bare)
    assert load_weights(bare, "matting").arch == "sim_r50"
    del sd["decoder.conv_up4_attn.4.weight"]  # strict: a missing key is an error, not a silent partial load
    torch.save(sd, bare)
    with pytest.raises(WeightsError):
        load_weights(bare, "matting")


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, trimap, _ = make_example()
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(trimap).save(tmp_path / "tri.png")
    Image.fromarray(trimap[:-2]).save(tmp_path / "small.png")
    Image.fromarray(np.where(trimap == 128, 255, trimap).astype(np.uint8)).save(tmp_path / "nounknown.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
    w = save_checkpoint(tmp_path / "m.pt", build_model("sim_tiny"), kind="matting", classes=SIMD_CLASSES)
    c = save_checkpoint(tmp_path / "c.pt", build_model("classifier_tiny"), kind="classifier", classes=SIMD_CLASSES)
    base = ["--weights", str(w), "--classifier", str(c), "--device", "cpu"]
    out = str(tmp_path / "a.png")
    cases = {
        0: ["matte", str(tmp_path / "img.png"), str(tmp_path / "tri.png"), "-o", out, *base],
        3: ["matte", str(tmp_path / "missing.png"), str(tmp_path / "tri.png"), "-o", out, *base],
        4: ["matte", str(tmp_path / "corrupt.png"), str(tmp_path / "tri.png"), "-o", out, *base],
        5: ["matte", str(tmp_path / "img.png"), str(tmp_path / "small.png"), "-o", out, *base],
        6: ["matte", str(tmp_path / "img.png"), str(tmp_path / "nounknown.png"), "-o", out, *base],
        7: ["matte", str(tmp_path / "img.png"), str(tmp_path / "tri.png"), "-o", out, "--weights", str(tmp_path / "no.pt")],
    }
    # an output format that cannot be written fails before the matting, and nothing is written
    for bad in (["--cutout", str(tmp_path / "cut.jpg")], ["--bits", "16", "-o", str(tmp_path / "a16.jpg")],
                ["-o", str(tmp_path / "a.xyz")], ["--cutout", str(tmp_path / "img.png")],  # an input
                ["--cutout", str(tmp_path / "tri.png" / "cut.png")]):  # a file where its folder would go
        assert main(["matte", str(tmp_path / "img.png"), str(tmp_path / "tri.png"), "-o", out, *bad, *base]) == 2
        assert not Path(out).exists() and capsys.readouterr().err.count("\n") == 1
    for code, argv in cases.items():
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and (code == 0 or err.count("\n") == 1), err
    # 16-bit outputs, cut-out and semantic map
    rc = main(["matte", str(tmp_path / "img.png"), str(tmp_path / "tri.png"), "-o", out, "--bits", "16",
               "--cutout", str(tmp_path / "cut.png"), "--semantic-map", str(tmp_path / "sem.png"), *base])
    assert rc == 0
    assert np.asarray(Image.open(out)).dtype in (np.uint16, np.int32)
    assert Image.open(tmp_path / "cut.png").mode in ("RGBA", "RGBA;16")
    assert Image.open(tmp_path / "sem.png").size == (image.shape[1], image.shape[0])
    # mask + band instead of a trimap
    mask = tmp_path / "mask.png"
    Image.fromarray(((trimap > 0) * 255).astype(np.uint8)).save(mask)
    assert main(["matte", str(tmp_path / "img.png"), str(mask), "--band", "6", "-o", out, *base]) == 0


@pytest.mark.parametrize(("argv", "shortened"), [
    (["matte", "img.png", "--trimap", "tri.png", "-o", "a.png"], "--trimap"),  # not taken for --trimap-mode
    (["train", "matting", "--resum"], "--resum"),  # nested subcommands too
])
def test_cli_refuses_shortened_options(argv: list[str], shortened: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {shortened}" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["matte", "i.png", "m.png", "-o", "a.png", "--band", "-3"],
                                  ["batch", "in", "out", "--band", "x"], ["eval", "data", "--limit", "0"]])
def test_cli_counts_and_widths_are_positive(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and f"argument {argv[-2]}: expected a whole number ≥ 1" in capsys.readouterr().err


def test_cli_eval_report_path_checked_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").touch()
    assert main(["eval", str(tmp_path / "no-data"), "--report", str(tmp_path / "taken")]) == 2
    assert "a file is in the way of the report folder" in capsys.readouterr().err


def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16() -> None:
    native = cpu_has_native_bf16()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    assert native == any(f in flags for f in ("avx512_bf16", "amx_bf16"))
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"  # bf16 misses the GPU max-error goal
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"
    assert PRECISION_MODES == (PRECISION_AUTO, *PRECISIONS)  # the wire/CLI list and the predictor's dtypes agree
    with pytest.raises(ValueError, match="precision must be one of auto, fp32"):
        MattingPredictor(build_model("sim_tiny"), device="cpu", precision="fp8")
    pred = MattingPredictor(build_model("sim_tiny"), device="cpu")
    assert pred.info()["precision"] == resolve_precision("auto", torch.device("cpu"))
