"""DistributedDataParallel with 2 CPU processes on gloo, launched by torch.distributed.run (torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import find_last, load_snapshot

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable"),
]


def _torchrun(out: Path, name: str, steps: int, *extra: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(WORKER.parent)]),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(WORKER),
        str(out),
        name,
        str(steps),
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out / name / ("report_resumed.json" if "--resume" in extra else "report.json")
    return json.loads(report.read_text())


def test_ddp_gloo_two_processes_train_in_sync_and_resume_exactly(tmp_path):
    full = _torchrun(tmp_path, "full", 4)
    assert full["world"] == 2 and full["ddp"] == "DistributedDataParallel" and full["step"] == 4
    a, b = full["checksums"]
    assert a == b  # gradients are averaged: both replicas hold the same weights
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in full["history"])
    # CPU/gloo keeps BatchNorm2d (PyTorch's SyncBatchNorm has no CPU kernel); GPUs get SyncBatchNorm.
    assert full["bn"] == ["BatchNorm2d"]
    snap = load_snapshot(find_last(tmp_path / "full"))
    assert len(snap["rng"]) == 2 and snap["data"]["world"] == 2
    assert (tmp_path / "full" / "matting.pt").is_file()

    _torchrun(tmp_path, "split", 4, "--stop-after", "2")
    resumed = _torchrun(tmp_path, "split", 4, "--resume")
    assert resumed["step"] == 4
    assert resumed["checksums"] == full["checksums"]  # bit-identical continuation on every rank
