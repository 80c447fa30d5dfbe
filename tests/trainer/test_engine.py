"""Training loop: loss goes down, resume is bit-identical, configs, snapshots, AMP, non-finite guard."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_data import ToyMattingDataset

from backend.errors import WeightsError
from backend.models.registry import build_model
from backend.models.weights import load_weights, save_checkpoint
from trainer import checkpoint as ckpt
from trainer.config import ConfigError, load_config
from trainer.engine import ResumableSampler, Trainer, average_snapshots, export_snapshot, lr_factor
from trainer.tasks import MattingCollate

NUM_CLASSES = 3


def _cfg(tmp: Path, name: str, task: str = "matting", *extra: str):
    base = [
        f"run.out_dir={tmp}",
        f"run.name={name}",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.crop_size=64",
        "run.progress=false",
        "run.log_every=1",
        "run.deterministic=true",
        "run.tensorboard=false",
        "data.classes=a,b,c",
        "optim.lr=1e-3",
        "schedule.policy=constant",
    ]
    base.append("model.arch=" + ("sim_tiny" if task == "matting" else "classifier_tiny"))
    return load_config(None, base + list(extra), task=task)


@pytest.fixture(scope="module")
def helpers(tmp_path_factory) -> dict[str, str]:
    """Random-weight frozen helpers: enough to exercise the semantic trimap and L_c / L_f paths."""
    d = tmp_path_factory.mktemp("helpers")
    torch.manual_seed(1)
    cls = save_checkpoint(
        d / "classifier.pt",
        build_model("classifier_tiny", num_classes=NUM_CLASSES),
        kind="classifier",
        classes=["a", "b", "c"],
    )
    disc = save_checkpoint(
        d / "discriminator.pt",
        build_model("classifier_tiny", num_classes=NUM_CLASSES),
        kind="discriminator",
        classes=["a", "b", "c"],
        meta={"disc_input": "fg_alpha"},
    )
    return {"classifier": str(cls), "discriminator": str(disc)}


def _fixed_batch(ds, n: int = 4) -> dict[str, torch.Tensor]:
    np.random.seed(0)
    return MattingCollate()([ds[i] for i in range(n)])


def _loss_on(trainer: Trainer, batch: dict) -> float:
    with torch.no_grad():
        b = {k: v.to(trainer.device) for k, v in batch.items()}
        return float(trainer.task.step(trainer.model, b)["total"])


def test_tiny_matting_run_lowers_loss_on_fixed_batch(tmp_path, helpers):
    ds = ToyMattingDataset(4, 64, NUM_CLASSES)
    cfg = _cfg(
        tmp_path,
        "fit",
        "matting",
        "schedule.steps=25",
        f"model.classifier={helpers['classifier']}",
        f"model.discriminator={helpers['discriminator']}",
    )
    tr = Trainer(cfg, train_dataset=ds)
    batch = _fixed_batch(ds)
    before = _loss_on(tr, batch)
    history = tr.train()
    after = _loss_on(tr, batch)
    assert after < 0.75 * before, (before, after)
    assert history[-1]["total"] < history[0]["total"]
    for key in ("alpha_l1", "comp", "lap", "l_fb", "grad", "excl", "cls", "feat", "lr", "samples_per_s"):
        assert key in history[-1]
    # Export: backend format, classifier copied beside it, the predictor loads both.
    from backend.predictor import MattingPredictor

    weights = tmp_path / "fit" / "matting.pt"
    lw = load_weights(weights, "matting")
    assert lw.meta["foreground_head"] is True and lw.meta["classifier"] == "classifier.pt"
    # its maps came from one window per training crop: inference slides windows of that size
    assert lw.meta["semantic_windows"] == [tr.cfg.data.crop_size]
    p = MattingPredictor.from_pretrained(weights=weights, device="cpu")
    assert p.classifier is not None and p.window_sizes == (tr.cfg.data.crop_size,)
    res = p.predict(
        batch["image"][0].permute(1, 2, 0).numpy(), batch["trimap"][0, 0].numpy().astype(np.uint8)
    )
    assert res.alpha.shape == (64, 64)


def test_channels_last_steps_match_nchw_and_export_plain_weights(tmp_path, helpers):
    """run.channels_last changes the layout, not the maths: the same steps give the same losses (dropout off:
    its masks are drawn in memory order, so they differ between layouts), and the exported file is an
    ordinary NCHW state dict."""
    ds = ToyMattingDataset(8, 64, NUM_CLASSES)
    extra = ("schedule.steps=3", f"model.classifier={helpers['classifier']}")
    losses, exported = {}, {}
    for cl in (False, True):
        tr = Trainer(_cfg(tmp_path, f"cl{cl}", "matting", *extra, f"run.channels_last={str(cl).lower()}"),
                     train_dataset=ds)
        for m in tr.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        losses[cl] = [h["total"] for h in tr.train()]
        exported[cl] = torch.load(tr.exported, weights_only=True)["state_dict"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert exported[True].keys() == exported[False].keys()
    assert all(v.is_contiguous() for v in exported[True].values())  # NCHW on disk
    load_weights(tr.exported, "matting")


def test_trimap_encoded_on_device_matches_worker_encoding(tmp_path, helpers):
    """On a GPU the loader skips the EDT and the step encodes the batch with build_inputs_torch: same
    network inputs (to ~1e-7), so the same losses as the CPU workers' scipy encoding."""
    ds = ToyMattingDataset(4, 64, NUM_CLASSES)
    cfg = _cfg(tmp_path, "enc", "matting", f"model.classifier={helpers['classifier']}")
    tr = Trainer(cfg, train_dataset=ds)
    assert tr.task.collate.on_device is False  # CPU run: the workers encode
    samples = [ds[i] for i in range(4)]
    in_workers = MattingCollate()(samples)
    on_device = MattingCollate(on_device=True)(samples)
    assert "trimap_gauss" not in on_device and "trimap_gauss" in in_workers
    torch.manual_seed(0)
    a = tr.task.step(tr.model, in_workers)
    torch.manual_seed(0)
    b = tr.task.step(tr.model, on_device)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_tiny_classifier_run_lowers_loss(tmp_path):
    ds = ToyMattingDataset(6, 64, NUM_CLASSES)
    cfg = _cfg(tmp_path, "cls", "classifier", "schedule.steps=30")
    tr = Trainer(cfg, train_dataset=ds, val_dataset=ds)
    batch = _fixed_batch(ds, 6)
    tr.model.eval()
    before = _loss_on(tr, batch)
    tr.train()
    tr.model.eval()
    after = _loss_on(tr, batch)
    assert after < 0.6 * before, (before, after)
    with open(tmp_path / "cls" / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["acc"]) >= 0.5
    assert load_weights(tmp_path / "cls" / "classifier.pt", "classifier").arch == "classifier_tiny"


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in ckpt.unwrap(trainer.model).state_dict().items()}
    for i, (pid, st) in enumerate(trainer.optimizer.state_dict()["state"].items()):
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                out[f"optim.{pid}.{k}"] = v
    return out


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_is_bit_identical(tmp_path, helpers, workers):
    """N steps in one go == k steps, a fresh process-like restart with --resume, then N − k steps."""
    ds = ToyMattingDataset(10, 64, NUM_CLASSES)  # 10 samples, batch 4: batches straddle epochs
    extra = (
        "schedule.steps=6",
        "schedule.policy=cosine",
        "schedule.warmup_steps=2",
        "run.ckpt_every=100",
        f"data.num_workers={workers}",
        f"model.classifier={helpers['classifier']}",
        f"model.discriminator={helpers['discriminator']}",
    )
    full = Trainer(_cfg(tmp_path, "full", "matting", *extra), train_dataset=ds)
    full.train()

    part = Trainer(_cfg(tmp_path, "split", "matting", *extra), train_dataset=ds)
    part.train(stop_after=4)
    assert part.step == 4 and ckpt.find_last(tmp_path / "split").name == "step_00000004.pt"
    torch.manual_seed(12345)  # a restarted process would have a different RNG: resume must restore it
    np.random.seed(999)
    resumed = Trainer(_cfg(tmp_path, "split", "matting", *extra), resume=True, train_dataset=ds)
    assert resumed.step == 4
    resumed.train()
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:5]}"
    assert full.scheduler.state_dict()["last_epoch"] == resumed.scheduler.state_dict()["last_epoch"] == 6
    # The resumed CSV has each step once.
    with open(tmp_path / "split" / "train.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, 7))


def test_snapshot_contents_and_last_pointer(tmp_path):
    ds = ToyMattingDataset(8, 64, NUM_CLASSES)
    cfg = _cfg(tmp_path, "snap", "classifier", "schedule.steps=6", "run.ckpt_every=2", "run.keep_ckpts=2")
    Trainer(cfg, train_dataset=ds).train()
    cdir = tmp_path / "snap" / "checkpoints"
    assert sorted(p.name for p in cdir.glob("step_*.pt")) == ["step_00000004.pt", "step_00000006.pt"]
    assert (cdir / "last").read_text().strip() == "step_00000006.pt"
    snap = ckpt.load_snapshot(ckpt.find_last(tmp_path / "snap"))
    assert snap["step"] == 6 and snap["data"]["position"] == 24
    assert {"models", "optimizer", "scheduler", "scaler", "rng", "config"} <= set(snap)
    assert set(snap["rng"][0]) >= {"python", "numpy", "torch"}
    assert snap["config"]["model"]["arch"] == "classifier_tiny"
    saved = json.loads((tmp_path / "snap" / "config.json").read_text())
    assert saved == snap["config"]


def test_exported_snapshot_equals_the_finished_runs_weights(tmp_path, helpers, monkeypatch):
    """`semantic-matte train export` turns the last snapshot into the same network the run exports, with the
    classifier it was trained with beside it, loadable by the backend, from any working directory."""
    ds = ToyMattingDataset(8, 64, NUM_CLASSES)
    monkeypatch.chdir(Path(helpers["classifier"]).parent)  # the run names its classifier relative to here
    cfg = _cfg(tmp_path, "exp", "matting", "schedule.steps=3", "run.ckpt_every=3",
               f"model.classifier={Path(helpers['classifier']).name}")
    run = Trainer(cfg, train_dataset=ds)
    run.train()
    assert run.cfg.model.classifier == str(Path(helpers["classifier"]).resolve())
    monkeypatch.chdir(tmp_path)
    out = export_snapshot(ckpt.find_last(tmp_path / "exp"), tmp_path / "out" / "snap.pt")
    got, want = load_weights(out, "matting"), load_weights(run.exported, "matting")
    assert got.meta["trained_steps"] == 3 and got.meta["classifier"] == "classifier.pt"
    assert (tmp_path / "out" / "classifier.pt").is_file()
    a, b = got.model.state_dict(), want.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    small = export_snapshot(ckpt.find_last(tmp_path / "exp"), tmp_path / "out" / "half.pt", half=True)
    assert small.stat().st_size < 0.6 * out.stat().st_size
    c = load_weights(small, "matting").model.state_dict()
    assert all(torch.allclose(c[k].float(), a[k].float(), rtol=1e-3, atol=1e-4) for k in a)


def test_average_of_snapshots_is_their_mean_and_re_estimates_batchnorm(tmp_path, helpers):
    """`semantic-matte train average`: the mean of a run's snapshots as loadable weights; with --bn-batches the
    BatchNorm statistics are re-estimated on the run's own training data and the weights stay the mean."""
    cfg = _cfg(tmp_path, "swa", "matting", "schedule.steps=4", "run.ckpt_every=2", "run.keep_ckpts=5",
               f"model.classifier={helpers['classifier']}",
               "data.train=[{kind='synthetic', count=8, gen_size=96, crop_sizes=[64], classes=['net']}]")
    Trainer(cfg).train()
    snaps = [ckpt.snapshot_path(tmp_path / "swa", s) for s in (2, 4)]
    states = [ckpt.load_snapshot(p)["models"]["matting"] for p in snaps]
    avg = load_weights(average_snapshots(snaps, tmp_path / "avg.pt"), "matting")
    assert avg.meta["averaged_steps"] == [2, 4] and avg.meta["classifier"] == "classifier.pt"
    got = avg.model.state_dict()
    for k, v in got.items():
        want = (states[0][k] + states[1][k]) / 2 if v.is_floating_point() else states[1][k]
        assert torch.allclose(v, want, atol=1e-6), k
    one = load_weights(average_snapshots(snaps[1:], tmp_path / "one.pt"), "matting").model.state_dict()
    last = load_weights(export_snapshot(snaps[1], tmp_path / "last.pt"), "matting").model.state_dict()
    assert all(torch.equal(one[k], last[k]) for k in one)

    bn = load_weights(average_snapshots(snaps, tmp_path / "bn.pt", bn_batches=2), "matting")
    assert bn.meta["bn_batches"] == 2
    re = bn.model.state_dict()
    stats = [k for k in re if k.endswith(("running_mean", "running_var"))]
    assert stats and any(not torch.allclose(re[k], got[k]) for k in stats)
    assert all(torch.equal(re[k], got[k]) for k in re if k not in stats and not k.endswith("num_batches_tracked"))
    assert all(bool((re[k] > 0).all()) for k in stats if k.endswith("running_var"))
    momenta = {m.momentum for m in bn.model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert None not in momenta

    # Exported weights files (what a device session brings back) average the same, given the run's config.
    files = [export_snapshot(p, tmp_path / f"w{i}.pt") for i, p in enumerate(snaps)]
    with pytest.raises(ValueError, match="config"):
        average_snapshots(files, tmp_path / "nocfg.pt")
    from_files = load_weights(
        average_snapshots(files, tmp_path / "files.pt", config=tmp_path / "swa" / "config.json"), "matting")
    assert from_files.meta["averaged_steps"] == [2, 4]
    assert all(torch.allclose(from_files.model.state_dict()[k], got[k], atol=1e-6) for k in got)
    # A shipped file's trained_steps is a description: kept as it is, not parsed.
    shipped = torch.load(files[1], weights_only=True)
    shipped["meta"]["trained_steps"] = "640 (GPU) + 420 (CPU), averaged"
    torch.save(shipped, tmp_path / "shipped.pt")
    alone = load_weights(average_snapshots([tmp_path / "shipped.pt"], tmp_path / "alone.pt",
                                           config=tmp_path / "swa" / "config.json"), "matting")
    assert alone.meta["trained_steps"] == "640 (GPU) + 420 (CPU), averaged"
    assert all(torch.equal(alone.model.state_dict()[k], last[k]) for k in last)


def test_snapshot_that_needs_code_to_load_is_refused(tmp_path):
    bad = tmp_path / "step_00000001.pt"
    torch.save({"step": 1, "hook": print}, bad)
    with pytest.raises(WeightsError, match="cannot read training snapshot .* files that need code to load are refused"):
        export_snapshot(bad, tmp_path / "out.pt")


def test_average_refuses_snapshots_of_different_architectures(tmp_path):
    from trainer.engine import average_state_dicts

    a = build_model("sim_tiny", num_classes=NUM_CLASSES).state_dict()
    b = build_model("sim_tiny", num_classes=NUM_CLASSES + 1).state_dict()
    with pytest.raises(ValueError, match="different architectures"):
        average_state_dicts([a, b])
    with pytest.raises(ValueError, match="nothing to average"):
        average_state_dicts([])


def test_deterministic_gaussian_trimap_matches_backend_encoding():
    from backend.processing import trimap_gaussian, trimap_two_channel

    tri = ToyMattingDataset(1, 64, 1)[0]["trimap"][0].numpy().astype(np.uint8)
    two = trimap_two_channel(tri)
    ours = trimap_gaussian(two, distance="scipy")
    np.testing.assert_allclose(ours, trimap_gaussian(two), atol=1e-5)
    assert np.array_equal(ours, trimap_gaussian(two, distance="scipy"))


def test_sampler_keeps_crop_groups_together():
    seq = list(itertools.islice(iter(ResumableSampler(12, seed=5, group=3)), 24))
    idx = [i for i, _, _ in seq]
    for g in range(0, 24, 3):  # runs of 3 consecutive indices starting at a multiple of 3
        assert idx[g] % 3 == 0 and idx[g : g + 3] == [idx[g], idx[g] + 1, idx[g] + 2]
    assert sorted(idx[:12]) == list(range(12)) and len({s for _, s, _ in seq}) == 24
    resumed = iter(ResumableSampler(12, seed=5, group=3, start=9))
    assert [next(resumed) for _ in range(15)] == seq[9:]
    shards = [set(itertools.islice((i for i, _, _ in ResumableSampler(12, seed=5, group=3, rank=r, world=2)), 6)) for r in (0, 1)]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 12
    # group=1 is the plain stream
    assert list(itertools.islice(iter(ResumableSampler(12, seed=5, group=1)), 12)) == list(
        itertools.islice(iter(ResumableSampler(12, seed=5)), 12)
    )
    with pytest.raises(ValueError, match="whole groups"):
        ResumableSampler(10, seed=0, group=3)


def test_crops_per_item_config(tmp_path):
    with pytest.raises(ConfigError, match="divide data.batch_size"):
        _cfg(tmp_path, "bad", "matting", "data.crops_per_item=3")
    cfg = _cfg(tmp_path, "grouped", "matting", "data.crops_per_item=2", "schedule.steps=2",
               "model.smap=none",
               "data.train=[{kind='synthetic', count=4, gen_size=96, crop_sizes=[64], classes=['net']}]")
    tr = Trainer(cfg)
    assert len(tr.train_dataset) == 8 and tr.train_dataset.crops_per_item == 2
    history = tr.train()
    assert len(history) == 2 and all(np.isfinite(h["total"]) for h in history)


def test_sampler_resumes_and_shards():
    full = ResumableSampler(10, seed=3)
    it = iter(full)
    seq = [next(it) for _ in range(25)]
    resumed = iter(ResumableSampler(10, seed=3, start=13))
    assert [next(resumed) for _ in range(12)] == seq[13:]
    assert sorted(k[0] for k in seq[:10]) == list(range(10))  # epoch 0 is a permutation
    r0 = iter(ResumableSampler(10, seed=3, rank=0, world=2))
    r1 = iter(ResumableSampler(10, seed=3, rank=1, world=2))
    a, b = {next(r0)[0] for _ in range(5)}, {next(r1)[0] for _ in range(5)}
    assert [k[2] for k in seq] == [0] * 10 + [1] * 10 + [2] * 5  # epochs ride along
    assert not a & b and len(a | b) == 10


def test_config_overrides_files_and_errors(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text(
        'task = "matting"\n[optim]\nlr = 0.01\n[data]\nbatch_size = 2\n'
        'train = [{kind = "synthetic", count = 8}]\n'
    )
    child = tmp_path / "child.toml"
    child.write_text('base = "base.toml"\n[optim]\nname = "adamw"\n')
    cfg = load_config(child, ["data.batch_size=3", "run.precision=bf16", "loss.grad=0.5"])
    assert (cfg.optim.lr, cfg.optim.name, cfg.data.batch_size, cfg.run.precision) == (
        0.01,
        "adamw",
        3,
        "bf16",
    )
    assert cfg.loss.grad == 0.5 and cfg.model.arch == "sim_lite" and cfg.data.train[0]["count"] == 8
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="integer"):
        load_config(None, ["data.batch_size=1.5"])
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, ["run.precision=fp8"])
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_config(None, ["data.crop_size=100"])
    # an unknown or wrong-kind architecture is a config error, not a crash when the model is built
    with pytest.raises(ConfigError, match="model.arch must be one of sim_lite"):
        load_config(None, ["model.arch=sim_huge"])
    with pytest.raises(ConfigError, match="model.arch"):
        load_config(None, ["model.arch=classifier_lite"])  # the task is matting
    assert load_config(None, ["task=discriminator", "model.arch=classifier_r18"]).model.arch == "classifier_r18"


@pytest.mark.parametrize("name", ["tiny_cpu_smoke.toml", "default_sim_lite.toml", "full_sim_r50.toml"])
def test_shipped_configs_parse(name):
    path = Path(__file__).resolve().parents[2] / "trainer" / "configs" / name
    cfg = load_config(path)
    assert cfg.task == "matting"


def _recipe_script():
    """models/train_default.py as a module (it is a script, not part of a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "models" / "train_default.py"
    spec = importlib.util.spec_from_file_location("train_default", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def test_default_recipe_script_builds_on_the_toml_configs():
    recipe = _recipe_script()
    clf = recipe.classifier_config(["schedule.steps=200"])
    assert (clf.task, clf.model.arch, clf.data.batch_size, clf.data.val) == ("classifier", "classifier_lite", 64, [])
    gpu = recipe.matting_config(["data.batch_size=32"])
    assert gpu.model.arch == "sim_lite" and gpu.model.discriminator == "" and gpu.data.train[0]["weights"] == [0.6, 0.4]
    # --discriminator passes its override after the recipe's "" (L_c / L_f off): it wins
    assert recipe.matting_config(["model.discriminator=d.pt"]).model.discriminator == "d.pt"
    cpu = recipe.matting_config([], (0.3, 0.7))
    assert cpu.data.train[0]["weights"] == [0.3, 0.7] and cpu.optim.weight_decay == gpu.optim.weight_decay
    held = recipe.matting_config([], hold=("GT01", "GT10", "GT19")).data.train[0]
    photos = held["datasets"][1]["names"]
    assert held["weights"] == [0.6, 0.4] and len(photos) == 15 and not {"GT01", "GT10", "GT19"} & set(photos)
    wide = recipe.matting_config([], hold=("GT01", "GT03", "GT10", "GT19")).data.train[0]["datasets"][1]["names"]
    assert len(wide) == 14 and "GT03" not in wide
    with pytest.raises(ValueError, match="GT02"):  # a held-out evaluation photo is not a training photo to hold
        recipe.matting_config([], hold=("GT01", "GT02"))


def test_ship_writes_the_network_and_the_classifier_it_was_trained_with(tmp_path):
    recipe = _recipe_script()
    run, dest = tmp_path / "run", tmp_path / "weights"
    classes = ["a", "b", "c"]
    save_checkpoint(run / "clf.pt", build_model("classifier_tiny", num_classes=3), kind="classifier", classes=classes,
                    meta={"arch": "classifier_tiny", "run": str(run)})
    net = build_model("sim_tiny", num_classes=3)
    save_checkpoint(run / "matting.pt", net, kind="matting", classes=classes,
                    meta={"arch": "sim_tiny", "classifier": "clf.pt", "run": str(run)})
    written = recipe.ship(run / "matting.pt", "12 steps", dest)
    assert [p.name for p in written] == [recipe.MATTING_FILE, recipe.CLASSIFIER_FILE]
    m, c = load_weights(dest / recipe.MATTING_FILE, "matting"), load_weights(dest / recipe.CLASSIFIER_FILE, "classifier")
    assert m.meta == {"arch": "sim_tiny", "classifier": recipe.CLASSIFIER_FILE, "foreground_head": True,
                      "trained_steps": "12 steps"}
    assert "run" not in c.meta and list(c.classes) == classes
    raw = torch.load(dest / recipe.MATTING_FILE, weights_only=False)["state_dict"]
    assert all(v.dtype == torch.float16 for v in raw.values() if v.is_floating_point())
    for k, v in net.state_dict().items():
        torch.testing.assert_close(m.model.state_dict()[k].float(), v.half().float())
    # Already shipped (same bytes): only the network is rewritten.
    (run / "clf.pt").write_bytes((dest / recipe.CLASSIFIER_FILE).read_bytes())
    assert [p.name for p in recipe.ship(run / "matting.pt", "", dest)] == [recipe.MATTING_FILE]
    (run / "clf.pt").unlink()
    with pytest.raises(SystemExit, match="not beside it"):
        recipe.ship(run / "matting.pt", "", dest)


def test_lr_schedule_shapes():
    cfg = load_config(
        None,
        [
            "schedule.steps=100",
            "schedule.warmup_steps=10",
            "schedule.policy=step",
            "schedule.decay_every=30",
            "optim.lr=1e-3",
        ],
    )
    f = lr_factor(cfg.schedule, cfg.optim.lr)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == 1.0 and f(40) == pytest.approx(0.1) and f(70) == pytest.approx(0.01)
    cfg = load_config(
        None, ["schedule.steps=100", "schedule.policy=cosine", "optim.lr=1e-3", "schedule.min_lr=1e-5"]
    )
    f = lr_factor(cfg.schedule, cfg.optim.lr)
    assert f(0) == 1.0 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.01)


def test_bf16_autocast_step_is_finite(tmp_path):
    ds = ToyMattingDataset(4, 64, NUM_CLASSES)
    cfg = _cfg(tmp_path, "bf16", "matting", "schedule.steps=2", "run.precision=bf16", "model.smap=label")
    history = Trainer(cfg, train_dataset=ds).train()
    assert all(np.isfinite(r["total"]) for r in history)


# every step here is skipped, so the schedule advances before any optimizer step: PyTorch's order check warns
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
def test_nonfinite_loss_skips_then_aborts(tmp_path, monkeypatch):
    ds = ToyMattingDataset(4, 64, NUM_CLASSES)
    cfg = _cfg(tmp_path, "nonfinite", "classifier", "schedule.steps=10", "run.max_nonfinite=3")
    tr = Trainer(cfg, train_dataset=ds)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    orig = tr.task.step
    monkeypatch.setattr(tr.task, "step", lambda m, b: {**orig(m, b), "total": torch.tensor(float("nan"))})
    with pytest.raises(FloatingPointError, match="3 consecutive"):
        tr.train()
    after = tr.model.state_dict()
    assert all(
        torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k
    )


def test_tensorboard_scalars_written(tmp_path):
    pytest.importorskip("tensorboard")
    ds = ToyMattingDataset(4, 64, NUM_CLASSES)
    cfg = _cfg(tmp_path, "tb", "classifier", "schedule.steps=2", "run.tensorboard=true")
    Trainer(cfg, train_dataset=ds).train()
    assert list((tmp_path / "tb" / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("sig,workers", [(signal.SIGTERM, 0), pytest.param(signal.SIGINT, 2, marks=pytest.mark.slow)])
def test_signal_stops_after_the_step_with_a_snapshot_and_resume_finishes(tmp_path, sig, workers):
    """`timeout`'s SIGTERM, or Ctrl-C sent to the whole process group (loader workers included), ends the run
    after the current step with a snapshot of it and exit status 128 + N; --resume then finishes the run."""
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "trainer.cli", "train", "matting", "--config",
           str(repo / "trainer" / "configs" / "tiny_cpu_smoke.toml"), "--resume",
           f"run.out_dir={tmp_path}", "run.name=sig", "run.log_every=1", "run.eval_every=0", "data.val=[]",
           "run.ckpt_every=1000", "run.progress=false", "run.tensorboard=false", "run.threads=1",
           f"data.num_workers={workers}", "schedule.steps=40"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    csv_path = tmp_path / "sig" / "train.csv"
    deadline = time.monotonic() + 120
    while (not csv_path.is_file() or len(csv_path.read_text().splitlines()) < 4) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C does: every process of the group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "continue with --resume" in err
    step = int(ckpt.load_snapshot(ckpt.find_last(tmp_path / "sig"))["step"])
    logged = [int(r["step"]) for r in csv.DictReader(csv_path.open())]
    assert 3 <= step < 40 and logged[-1] == step
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [int(r["step"]) for r in csv.DictReader(csv_path.open())] == list(range(1, 41))
    assert (tmp_path / "sig" / "matting.pt").is_file()
