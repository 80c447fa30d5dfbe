"""Datasets: fixed dict contract, determinism, layouts, held-out split, mixtures, config front end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from backend.classes import SIMD_CLASSES
from backend.evaluation import ALPHAMATTING_VALIDATION
from trainer.data import datasets as D
from trainer.data.backgrounds import BackgroundSource
from trainer.data.synthetic import write_dataset
from trainer.data.transforms import unknown_mask

S = 64
GEN = BackgroundSource(None)  # generated backgrounds only: no files needed


def _check_item(item: dict[str, torch.Tensor], size: int = S) -> None:
    assert tuple(item) == D.SAMPLE_KEYS
    for k in ("image", "fg", "bg"):
        assert item[k].shape == (3, size, size) and item[k].dtype == torch.float32, k
        assert 0 <= float(item[k].min()) and float(item[k].max()) <= 1, k
    assert item["alpha"].shape == (1, size, size) and item["alpha"].dtype == torch.float32
    assert 0 <= float(item["alpha"].min()) and float(item["alpha"].max()) <= 1
    tri = item["trimap"]
    assert tri.shape == (1, size, size) and tri.dtype == torch.float32
    assert set(torch.unique(tri).tolist()) <= {0.0, 128.0, 255.0}
    assert (tri[0][torch.from_numpy(unknown_mask(item["alpha"][0].numpy()))] == 128).all()
    assert item["class_id"].dtype == torch.int64 and item["class_id"].shape == ()


def _synthetic(**kw) -> D.SyntheticDataset:
    kw.setdefault("length", 40)
    return D.SyntheticDataset(out_size=S, crop_sizes=(96, 128), gen_size=128, backgrounds=GEN, **kw)


@pytest.mark.parametrize("view", D.VIEWS)
def test_synthetic_items(view: str) -> None:
    ds = _synthetic(view=view)
    assert len(ds) == 40
    for i in (0, 7, 13, 39):
        item = ds[i]
        _check_item(item)
        assert int(item["class_id"]) == i % 20
    with pytest.raises(ValueError):
        _synthetic(view="segmentation")


def test_synthetic_deterministic_and_epochs() -> None:
    ds = _synthetic(seed=3)
    a, b = ds[5], ds[5]
    assert all(torch.equal(a[k], b[k]) for k in D.SAMPLE_KEYS)
    ds.set_epoch(1)
    c = ds[5]
    assert not torch.equal(a["alpha"], c["alpha"])
    other = _synthetic(seed=4)
    assert not torch.equal(a["image"], other[5]["image"])


def test_synthetic_class_subset_keeps_official_ids() -> None:
    ds = _synthetic(classes=["net", "fire"], length=4)
    ids = [int(ds[i]["class_id"]) for i in range(4)]
    assert ids == [SIMD_CLASSES.index("net"), SIMD_CLASSES.index("fire")] * 2
    with pytest.raises(ValueError):
        _synthetic(classes=["logo"])


def test_dataloader_batches() -> None:
    ds = _synthetic(length=8)
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch["image"].shape == (4, 3, S, S) and batch["class_id"].shape == (4,)


def test_composition_dataset_class_layout(tmp_path) -> None:
    write_dataset(tmp_path, per_class=2, size=96, seed=0, layout="train", classes=["net", "plant_leaf"])
    ds = D.CompositionDataset(tmp_path, out_size=S, crop_sizes=(64, 96), backgrounds=GEN)
    assert len(ds) == 4
    ids = sorted(int(ds[i]["class_id"]) for i in range(4))
    assert ids == sorted([SIMD_CLASSES.index("net")] * 2 + [SIMD_CLASSES.index("plant_leaf")] * 2)
    _check_item(ds[0])
    only = D.CompositionDataset(tmp_path, classes=["net"], out_size=S, backgrounds=GEN)
    assert len(only) == 2
    custom = D.CompositionDataset(tmp_path, out_size=S, backgrounds=GEN, class_list=["plant_leaf", "net"])
    assert {int(custom[i]["class_id"]) for i in range(4)} == {0, 1}
    with pytest.raises(ValueError):
        D.CompositionDataset(tmp_path, out_size=S, backgrounds=GEN, class_list=["net"])


def test_composition_dataset_dim_layout(tmp_path) -> None:
    write_dataset(tmp_path / "src", per_class=2, size=80, seed=0, layout="train", classes=["fur"])
    (tmp_path / "dim").mkdir()
    (tmp_path / "src" / "fur" / "fg").rename(tmp_path / "dim" / "fg")
    (tmp_path / "src" / "fur" / "alpha").rename(tmp_path / "dim" / "alpha")
    ds = D.CompositionDataset(tmp_path / "dim", out_size=S, backgrounds=GEN, length=5)
    assert len(ds) == 5
    item = ds[4]
    _check_item(item)
    assert int(item["class_id"]) == -1
    with pytest.raises(FileNotFoundError):
        D.CompositionDataset(tmp_path / "missing", backgrounds=GEN)


def test_held_out_split_is_enforced() -> None:
    assert len(D.ALPHAMATTING_HELD_OUT) == 9 and len(D.ALPHAMATTING_TRAIN) == 18
    assert not set(D.ALPHAMATTING_HELD_OUT) & set(D.ALPHAMATTING_TRAIN)
    # the model-selection photos are training photos a run may leave out, never held-out ones
    assert set(ALPHAMATTING_VALIDATION) < set(D.ALPHAMATTING_TRAIN)
    D.check_trainable(["GT01", "GT27"])
    with pytest.raises(D.HeldOutError, match="GT02"):
        D.check_trainable(["GT01", "GT02"])
    with pytest.raises(D.HeldOutError):
        D.check_trainable(["some/dir/GT26.png"])
    # Refused before any file is touched, so this holds on machines without the data too.
    with pytest.raises(D.HeldOutError):
        D.AlphamattingDataset("/nonexistent", split="train", names=["GT03", "GT14"], backgrounds=GEN)
    with pytest.raises(D.HeldOutError):
        D.build_dataset({"kind": "alphamatting", "names": ["GT05"]}, backgrounds=GEN)


@pytest.mark.slow  # the first pymatting call JIT-compiles (~2 s)
def test_alphamatting_dataset(alphamatting) -> None:
    ds = D.AlphamattingDataset(
        alphamatting, names=["GT01"], out_size=S, crop_sizes=(320,), backgrounds=GEN, length=2
    )
    item = ds[1]
    _check_item(item)
    assert int(item["class_id"]) == -1
    real = D.AlphamattingDataset(
        alphamatting,
        names=["GT01"],
        mode="real",
        out_size=S,
        crop_sizes=(320,),
        backgrounds=GEN,
        augment=False,
    )
    r = real.sample_numpy(0)
    # Real mode: the photo is the image and it is reproduced by the estimated F, B and the GT alpha.
    a = r["alpha"][..., None]
    recon = r["fg"] * a + r["bg"] * (1 - a)
    assert np.abs(recon - r["image"]).mean() < 0.01
    aug = D.AlphamattingDataset(
        alphamatting, names=["GT01"], mode="real", out_size=S, crop_sizes=(320,), backgrounds=GEN, length=3
    )
    _check_item(aug[2])
    test = D.AlphamattingDataset(alphamatting, split="test", names=["GT02"], out_size=S, backgrounds=GEN)
    _check_item(test[0])


def test_estimate_foreground_reconstructs() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    alpha = np.clip((20 - np.hypot(yy - 24, xx - 24)) / 6, 0, 1).astype(np.float32)
    fg = np.broadcast_to(np.array([0.9, 0.2, 0.1], np.float32), (48, 48, 3))
    bg = rng.uniform(0.3, 0.5, (48, 48, 3)).astype(np.float32)
    img = fg * alpha[..., None] + bg * (1 - alpha[..., None])
    f, b = D.estimate_foreground(img, alpha)
    assert f.shape == b.shape == (48, 48, 3) and f.dtype == np.float32
    m = (alpha > 0.2) & (alpha < 0.8)
    assert np.abs(f[m] - fg[m]).mean() < 0.1


def test_mixed_dataset() -> None:
    a, b = _synthetic(classes=["net"], length=5), _synthetic(classes=["fire"], length=5)
    only_a = D.MixedDataset([a, b], weights=[1, 0], length=6)
    assert {int(only_a[i]["class_id"]) for i in range(6)} == {SIMD_CLASSES.index("net")}
    mix = D.MixedDataset([a, b], weights=[1, 1], length=30, seed=1)
    members = [mix.locate(i)[0] for i in range(30)]
    assert 0 < sum(members) < 30
    assert torch.equal(mix[3]["alpha"], mix[3]["alpha"])
    mix.set_epoch(2)
    assert a.epoch == b.epoch == 2
    with pytest.raises(ValueError):
        D.MixedDataset([a], weights=[1, 2])


def test_crops_per_item_share_one_preparation_and_stay_deterministic(monkeypatch) -> None:
    k = 4
    ds = _synthetic(length=10, seed=2, crops_per_item=k)
    assert len(ds) == 10 * k and ds.num_prepared() == 10
    calls: list[int] = []
    load = ds.load
    monkeypatch.setattr(ds, "load", lambda i, rng: calls.append(i) or load(i, rng))
    items = [ds[i] for i in range(8, 16)]  # two groups, as a batch of 8 would take them
    assert calls == [2, 3]  # one preparation (generation, affine, two-fg) per group
    for item in items:
        _check_item(item)
    # The crops of a group come from one foreground but are different crops.
    assert len({int(it["class_id"]) for it in items[:k]}) == 1
    assert not torch.equal(items[0]["image"], items[1]["image"])
    # Item i is a pure function of (seed, epoch, i): the cache never changes a result.
    fresh = _synthetic(length=10, seed=2, crops_per_item=k)
    for i in (15, 8, 13):
        assert all(torch.equal(fresh[i][key], items[i - 8][key]) for key in D.SAMPLE_KEYS), i
    ds.set_epoch(1)
    assert not torch.equal(ds[8]["alpha"], items[0]["alpha"])
    # Grouped mixtures: the items of a group map to one group of one member.
    a, b = _synthetic(classes=["net"], length=4, crops_per_item=2), _synthetic(classes=["fire"], length=4, crops_per_item=2)
    mix = D.MixedDataset([a, b], weights=[1, 1], length=6, seed=1, crops_per_item=2)
    assert len(mix) == 12
    for g in range(6):
        (d0, j0), (d1, j1) = mix.locate(2 * g), mix.locate(2 * g + 1)
        assert d0 == d1 and j0 % 2 == 0 and j1 == j0 + 1
    with pytest.raises(ValueError, match="crops_per_item = 2"):
        D.MixedDataset([a, _synthetic(length=4)], crops_per_item=2)
    built = D.build_dataset(
        {"kind": "mixed", "datasets": [{"kind": "synthetic", "count": 4}], "length": 3},
        out_size=S, backgrounds=GEN, crops_per_item=2,
    )
    assert len(built) == 6 and built.datasets[0].crops_per_item == 2


def test_build_dataset_specs(tmp_path) -> None:
    syn = D.build_dataset(
        {"kind": "synthetic", "count": 6, "classes": ["net"], "gen_size": 96, "crop_sizes": [64]},
        out_size=S,
        backgrounds=GEN,
    )
    assert isinstance(syn, D.SyntheticDataset) and len(syn) == 6
    _check_item(syn[0])
    write_dataset(tmp_path, per_class=1, size=80, layout="train", classes=["sharp"])
    mixed = D.build_dataset(
        {
            "kind": "mixed",
            "length": 4,
            "weights": [1, 1],
            "datasets": [
                {"kind": "synthetic", "count": 4, "gen_size": 96},
                {"kind": "composition", "root": str(tmp_path)},
            ],
        },
        out_size=S,
        backgrounds=GEN,
    )
    assert len(mixed) == 4
    _check_item(mixed[1])
    with pytest.raises(ValueError):
        D.build_dataset({"kind": "coco"})
    # The engine's calling convention: classes= (model class list), size=, split=.
    val = D.build_dataset(
        {"kind": "synthetic", "count": 2, "gen_size": 96, "crop_sizes": [64]},
        classes=("fire", "my_custom_class"),
        size=S,
        split="val",
        seed=1,
        backgrounds=GEN,
    )
    assert (
        val.classes == ("fire",) and not val.fresh_per_epoch and val.class_list == ("fire", "my_custom_class")
    )
    assert int(val[1]["class_id"]) == 0
    with pytest.raises(ValueError, match="procedural"):
        D.build_dataset({"kind": "synthetic"}, classes=("cat",), backgrounds=GEN)


def test_works_without_shared_data(tmp_path) -> None:
    bgs = D.default_backgrounds(tmp_path / "no_data_here")
    assert len(bgs) == 0 and bgs.generated_fraction == 1.0
    ds = D.SyntheticDataset(length=2, out_size=S, gen_size=96, crop_sizes=(64,), backgrounds=bgs)
    _check_item(ds[1])


def test_spawned_loader_reads_a_foreground_cache_filled_once(tmp_path) -> None:
    """With ``cache_dir``, the loader's preparation (``warm_up`` before spawned workers) writes each photo's
    F / B estimate once in the parent; a run that finds the cache complete never imports pymatting (whose
    numba kernels take ≈ 30 s to compile on a fresh machine)."""
    import subprocess
    import sys

    import cv2

    from tests.conftest import make_example
    from trainer.config import load_config
    from trainer.engine import build_dataset, prepare_for_loader

    root = tmp_path / "am"
    for sub in ("image", "alpha"):
        (root / sub).mkdir(parents=True)
    image, _, alpha = make_example(64, 80)
    cv2.imwrite(str(root / "image" / "GT03.png"), image[..., ::-1])
    cv2.imwrite(str(root / "alpha" / "GT03.png"), np.round(alpha * 255).astype(np.uint8))
    cache = tmp_path / "fg"
    spec = f"{{kind='alphamatting', root='{root}', names=['GT03'], cache_dir='{cache}'}}"
    cfg = load_config(None, [f"data.train=[{spec}]", "data.num_workers=2", "data.worker_start=spawn"])
    prepare_for_loader(build_dataset(cfg.data.train, cfg, "train"), cfg)
    assert sorted(p.name for p in cache.iterdir()) == ["GT03_bg.png", "GT03_fg.png"]
    fg = cv2.imread(str(cache / "GT03_fg.png"))[..., ::-1].astype(np.float32) / 255
    alpha8 = cv2.imread(str(root / "alpha" / "GT03.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    want, _ = D.estimate_foreground(image.astype(np.float32) / 255, alpha8)  # what the dataset sees
    assert np.abs(fg - want).max() <= 0.5 / 255 + 1e-6
    code = (f"import sys; from trainer.data import datasets as D; "
            f"D.AlphamattingDataset({str(root)!r}, names=['GT03'], cache_dir={str(cache)!r}).warm_up(); "
            f"assert 'pymatting' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
