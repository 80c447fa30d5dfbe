"""`semantic-matte train custom`: 3 user classes → classifier + discriminator + matting weights that the
predictor (and `semantic-matte matte --weights … --classifier …`) loads."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest
from toy_data import toy_alpha

from backend.models.weights import load_weights
from trainer.cli import add_cli

CLASSES = ("disc_thing", "stripes", "cloud")


def _write_class_layout(root: Path, per_class: int = 3, size: int = 128) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        for k in range(per_class):
            alpha = toy_alpha(c, size, rng)
            fg = np.ones((size, size, 3), np.float32) * rng.random(3) * 255
            for sub, img in (("fg", fg.astype(np.uint8)), ("alpha", (alpha * 255).astype(np.uint8))):
                (root / name / sub).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / name / sub / f"{k:02d}.png"), img)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.slow
def test_custom_three_classes_end_to_end(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    _write_class_layout(data)
    bgs = tmp_path / "bg"
    bgs.mkdir()
    cv2.imwrite(str(bgs / "bg.png"), (np.random.default_rng(1).random((96, 96, 3)) * 255).astype(np.uint8))
    args = _parse(
        [
            "train",
            "custom",
            "--classes",
            ",".join(CLASSES),
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "3",
            "--preset",
            "tiny",
            "--backgrounds",
            str(bgs),
            "data.num_workers=0",
            "run.progress=false",
            "run.tensorboard=false",
        ]
    )
    assert args.func(args) == 0
    for stage in ("classifier", "discriminator", "matting"):
        lw = load_weights(out / f"{stage}.pt", stage)
        assert lw.classes == CLASSES
    meta = load_weights(out / "matting.pt", "matting").meta
    assert meta["classifier"] == "classifier.pt" and meta["foreground_head"] is True

    from backend.predictor import MattingPredictor

    pred = MattingPredictor.from_pretrained(
        weights=out / "matting.pt", classifier=out / "classifier.pt", device="cpu"
    )
    assert pred.classes == CLASSES and pred.classifier is not None
    alpha = toy_alpha(1, 96, np.random.default_rng(5))
    image = (np.random.default_rng(2).random((96, 96, 3)) * 255).astype(np.uint8)
    trimap = np.where(alpha > 0, 128, 0).astype(np.uint8)
    trimap[alpha >= 1] = 255
    trimap[40:56, 40:56] = 128
    res = pred.predict(image, trimap, want_semantic=True)
    assert res.alpha.shape == (96, 96) and np.isfinite(res.alpha).all()
    assert set(res.class_shares) == set(CLASSES)

    # The backend CLI loads the same files (`semantic-matte matte --weights … --classifier …`).
    from backend.cli import main as matte_main

    cv2.imwrite(str(tmp_path / "img.png"), image[..., ::-1])
    cv2.imwrite(str(tmp_path / "tri.png"), trimap)
    rc = matte_main(
        [
            "matte",
            str(tmp_path / "img.png"),
            str(tmp_path / "tri.png"),
            "-o",
            str(tmp_path / "a.png"),
            "--weights",
            str(out / "matting.pt"),
            "--classifier",
            str(out / "classifier.pt"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0 and (tmp_path / "a.png").is_file()


def test_custom_rejects_bad_layout(tmp_path, capsys):
    (tmp_path / "data" / "a" / "fg").mkdir(parents=True)
    args = _parse(
        [
            "train",
            "custom",
            "--classes",
            "a,b",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
            "--preset",
            "tiny",
        ]
    )
    assert args.func(args) == 10
    assert "layout <data>/<class>/{fg,alpha}" in capsys.readouterr().err


def test_train_cli_print_config_and_config_error(capsys):
    args = _parse(["train", "matting", "--print-config", "optim.lr=2e-4", "model.smap=label"])
    assert args.func(args) == 0
    assert '"lr": 0.0002' in capsys.readouterr().out
    args = _parse(["train", "matting", "--print-config", "optim.nope=1"])
    assert args.func(args) == 6
    assert "optim.nope" in capsys.readouterr().err


def test_semantic_matte_cli_has_train_commands(capsys):
    from backend.cli import main

    assert main(["train", "classifier", "--print-config", "data.batch_size=3"]) == 0
    out = capsys.readouterr().out
    assert '"task": "classifier"' in out and '"arch": "classifier_lite"' in out
