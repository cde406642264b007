"""Data-parallel training is plain large-batch training: 2 gloo processes with batch b per process
reach the same weights as 1 process with batch 2b.

The 2-process run goes through the real entry point (``scripts/dist_train.sh 2``, i.e. torchrun
``tools/train.py``). Why the weights
agree: the sampler hands the two ranks the two halves of exactly the block of samples the single
process uses in the same step; DDP averages the two ranks' gradients, and each rank's loss is the
mean over its images, so with equally many labelled pixels per image (the synthetic set has no void
pixels) the average equals the gradient of the mean loss over all 2b images. Two things would break
this and are switched off: BatchNorm statistics depend on the per-process batch (SyncBatchNorm, which
would fix it, runs on GPUs only), so the model uses ``frozen_bn``; and dropout draws a different
mask per process, so ``dropout=0``. What remains is float32 summation order (gradients summed in a
different order by the all-reduce), hence a tolerance of 1e-5 relative + 1e-6 absolute after 3 SGD
steps; the largest difference measured was 7e-9.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ccnet.checkpoint import load_checkpoint
from ccnet.engine import train
from ccnet.engine.rng import seed_everything
from ccnet.models import build_model

EXACT = [
    "model.norm=frozen_bn",
    "model.dropout=0",
    "train.max_iters=3",
    "train.lr=0.05",
    "train.eval_interval=0",
    "train.log_interval=1",
]


@pytest.mark.slow  # child processes: 10-70 s on the shared 2-core development machine, by load
def test_two_gloo_processes_equal_one_process_with_double_batch(repo_root, tiny_cfg, tiny_overrides, tmp_path):
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    proc = subprocess.run(
        [
            "bash",
            str(repo_root / "scripts" / "dist_train.sh"),
            "2",
            *tiny_overrides,
            *EXACT,
            "train.batch_size=2",
            f"work_dir={two}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    one = tiny_cfg(*EXACT, "train.batch_size=4", work_dir="one")
    train(one)

    a = load_checkpoint(two / "checkpoints" / "last.pth")
    b = load_checkpoint(f"{one.work_dir}/checkpoints/last.pth")
    assert a["iteration"] == b["iteration"] == 3
    assert a["sampler"] == b["sampler"]  # both consumed 12 samples of the same stream
    assert len(a["rng"]) == 2 and len(b["rng"]) == 1  # one RNG snapshot per process
    seed_everything(int(one.train.seed))  # the trainer's initialisation, to see that training moved
    init = dict(build_model(one.model).named_parameters())
    for key, value in b["model"].items():
        torch.testing.assert_close(a["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    moved = [k for k, p in init.items() if not torch.equal(p.detach(), b["model"][k])]
    assert len(moved) == len(init)
    # Only rank 0 wrote files; the log names the world size.
    log = (two / "train.log").read_text()
    assert "batch 2 per process x 2 processes" in log
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["best.pth", "iter_3.pth", "last.pth"]
