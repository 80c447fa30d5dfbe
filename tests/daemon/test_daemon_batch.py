"""Batch client: trimap discovery, K in flight, manifest resume, per-file error report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, child_env, sample
from PIL import Image

from backend.batch import discover, run_batch

pytestmark = pytest.mark.timeout(90)


def make_folder(root, n=6):
    imgs, tris, masks = root / "in", root / "trimaps", root / "masks"
    for d in (imgs / "sub", tris / "sub", masks / "sub"):
        d.mkdir(parents=True)
    for i in range(n):
        image, trimap = sample(40, 56, seed=i)
        sub = "sub/" if i % 2 else ""
        Image.fromarray(image).save(imgs / f"{sub}img{i}.png")
        if i != 3:  # img3 has no trimap
            Image.fromarray(trimap).save(tris / f"{sub}img{i}.png")
        Image.fromarray(((trimap > 0) * 255).astype(np.uint8)).save(masks / f"{sub}img{i}.png")
    (imgs / "broken.png").write_bytes(b"not a png")
    Image.fromarray(sample(40, 56)[1]).save(tris / "broken.png")
    return imgs, tris, masks


def test_discovery_rules(tmp_path):
    imgs, tris, masks = make_folder(tmp_path)
    items = {str(i.rel): i for i in discover(imgs)}  # ../trimaps found automatically
    assert set(items) == {"img0", "sub/img1", "img2", "sub/img3", "img4", "sub/img5", "broken"}
    assert items["sub/img1"].trimap == tris / "sub" / "img1.png" and items["sub/img3"].trimap is None
    with_masks = {str(i.rel): i for i in discover(imgs, masks=masks)}
    assert with_masks["img2"].mask == masks / "img2.png"
    assert {str(i.rel) for i in discover(imgs, out_dir=tmp_path)} == set(items)  # IN_DIR inside OUT_DIR
    # an output folder inside the input folder is not read back as input on the next run
    (imgs / "out" / "sub").mkdir(parents=True)
    (imgs / "out" / "sub" / "img1.png").write_bytes((imgs / "sub" / "img1.png").read_bytes())
    assert {str(i.rel) for i in discover(imgs, out_dir=imgs / "out")} == set(items)
    with pytest.raises(ValueError, match="must differ from the input folder"):
        run_batch(imgs, imgs / "sub" / "..", progress=False)  # the mattes would overwrite the images


def test_batch_resume_and_error_report(daemon, tmp_path):
    d = daemon(workers=2)
    imgs, tris, _ = make_folder(tmp_path)
    out = tmp_path / "out"
    counts = run_batch(imgs, out, server=d.endpoint, inflight=3, progress=False)
    assert counts == {"ok": 5, "skipped": 0, "failed": 2, "total": 7}
    alpha = np.asarray(Image.open(out / "sub" / "img1.png"))
    np.testing.assert_array_equal(alpha, np.asarray(Image.open(tris / "sub" / "img1.png")))  # echo handler
    errors = {e["input"].rsplit("/", 1)[-1]: e["code"] for e in json.loads((out / "errors.json").read_text())}
    assert errors == {"img3.png": "no_trimap", "broken.png": "input"}
    # second run: finished files are skipped, failed ones retried
    again = run_batch(imgs, out, server=d.endpoint, inflight=3, progress=False)
    assert again == {"ok": 0, "skipped": 5, "failed": 2, "total": 7}
    (out / "img0.png").unlink()  # a missing output is redone
    cli = subprocess.run([sys.executable, "-m", "backend.daemon", "batch", str(imgs), str(out), "--server",
                          d.endpoint, "--quiet"], env=child_env(), cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=False)
    assert cli.returncode == 1 and "1 matted, 4 already done, 2 failed" in cli.stderr


def test_batch_names_that_would_write_one_output(daemon, tmp_path):
    d = daemon()
    imgs, _, _ = make_folder(tmp_path, n=2)
    (imgs / "broken.png").unlink()
    Image.open(imgs / "img0.png").save(imgs / "img0.jpg")  # would write img0.png too
    counts = run_batch(imgs, tmp_path / "out", server=d.endpoint, progress=False)
    assert counts == {"ok": 2, "skipped": 0, "failed": 1, "total": 3}
    [error] = json.loads((tmp_path / "out" / "errors.json").read_text())
    assert error["message"] == "img0.png and img0.jpg would both write img0.png: rename one"
    # the clash leaves no manifest record standing for img0: it is not redone
    assert run_batch(imgs, tmp_path / "out", server=d.endpoint, progress=False)["skipped"] == 2
    (imgs / "img0.jpg").unlink()
    Image.open(imgs / "img0.png").save(imgs / "img0_cutout.png")  # its alpha is img0.png's cut-out
    counts = run_batch(imgs, tmp_path / "out2", server=d.endpoint, cutout=True, progress=False)
    assert counts["failed"] == 1 and "would both write img0_cutout.png" in (tmp_path / "out2" / "errors.json").read_text()


def test_batch_trimap_mode_reaches_the_daemon_and_the_manifest(daemon, tmp_path):
    d = daemon()
    imgs, _, _ = make_folder(tmp_path, n=2)
    (imgs / "broken.png").unlink()
    assert run_batch(imgs, tmp_path / "out", server=d.endpoint, progress=False)["ok"] == 2
    # a different trimap mode is a different result: the files are matted again, and the daemon accepts it
    again = run_batch(imgs, tmp_path / "out", server=d.endpoint, trimap_mode="tolerant", progress=False)
    assert again == {"ok": 2, "skipped": 0, "failed": 0, "total": 2}


def test_batch_masks_and_cutout(daemon, tmp_path):
    d = daemon()
    imgs, _, masks = make_folder(tmp_path, n=2)
    (imgs / "broken.png").unlink()
    out = tmp_path / "out"
    counts = run_batch(imgs, out, server=d.endpoint, masks=masks, band=4, cutout=True, bits=16, progress=False)
    assert counts["ok"] == 2 and counts["failed"] == 0
    rgba = np.asarray(Image.open(out / "img0_cutout.png"))
    assert rgba.shape[2] == 4


def test_cluster_row_function_without_an_engine(tmp_path):
    from backend.cluster import MatteRows

    image, trimap = sample(40, 48)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(trimap).save(tmp_path / "a_tri.png")
    fn = MatteRows(model="sim_tiny", classifier="classifier_tiny", device="cpu", seed=0)
    out = fn({"image": [str(tmp_path / "a.png"), str(tmp_path / "missing.png")],
              "trimap": [str(tmp_path / "a_tri.png")] * 2, "output": [str(tmp_path / "o" / "a.png"), str(tmp_path / "b.png")]})
    assert out["status"][0] == "ok" and out["status"][1].startswith("error")
    assert np.asarray(Image.open(tmp_path / "o" / "a.png")).shape == trimap.shape
