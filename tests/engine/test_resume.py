"""Exact resume: n iterations in one go == n/2 iterations, SIGKILL, resume to n (bit-identical on CPU).

Each run is a child process (same thread count, same code path as a real run). The interrupted child
wraps ``CheckpointManager.save`` so that it kills itself with SIGKILL (no cleanup, no atexit, no
flush) right after the checkpoint of iteration n/2 is on disk. The model uses dropout and the run
validates mid-way, so restoring the RNG states and the sample stream is exercised, not just weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ccnet.checkpoint import CheckpointError, load_checkpoint
from ccnet.engine import train
from ccnet.engine.checkpoint_manager import CheckpointManager
from ccnet.engine.resume import resume_path

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    from hydra import compose, initialize_config_dir
    from ccnet.engine import train
    from ccnet.engine.checkpoint_manager import CheckpointManager

    torch.set_num_threads(1)
    configs, kill_at, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    save = CheckpointManager.save

    def save_then_die(self, state, iteration):
        save(self, state, iteration)
        if iteration == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    CheckpointManager.save = save_then_die
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    train(cfg)
""")


def run_child(configs_dir: Path, kill_at: int, overrides: list) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(configs_dir), str(kill_at), json.dumps(overrides)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow  # child processes: 10-70 s on the shared 2-core development machine, by load
def test_sigkill_then_resume_gives_identical_weights(configs_dir, tiny_overrides, tmp_path):
    n = 8
    common = tiny_overrides + [
        f"train.max_iters={n}",
        "train.batch_size=2",
        "train.lr=0.05",
        "train.checkpoint_interval=4",
        "train.eval_interval=4",
        "train.log_interval=2",
        "model.dropout=0.2",
    ]

    full = run_child(configs_dir, -1, common + [f"work_dir={tmp_path / 'full'}"])
    assert full.returncode == 0, full.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    # The interrupted run loads data with 2 worker processes, the reference with none: the sample
    # stream must not depend on that either.
    killed = run_child(configs_dir, n // 2, common + [f"work_dir={killed_dir}", "train.num_workers=2"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert load_checkpoint(killed_dir / "checkpoints" / "last.pth")["iteration"] == n // 2
    assert not (killed_dir / "checkpoints" / f"iter_{n}.pth").exists()

    resumed = run_child(configs_dir, -1, common + [f"work_dir={killed_dir}", "resume=true", "train.num_workers=2"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (killed_dir / "train.log").read_text()
    assert f"resumed from {killed_dir / 'checkpoints' / 'last.pth'} at iteration {n // 2}" in log

    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pth")
    b = load_checkpoint(killed_dir / "checkpoints" / "last.pth")
    assert a["iteration"] == b["iteration"] == n
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert a["sampler"] == b["sampler"] and a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == n
    # metrics.jsonl of the resumed run holds each validation once, with the uninterrupted run's numbers.
    rec_a = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    rec_b = [json.loads(line) for line in open(killed_dir / "metrics.jsonl")]
    assert [r["iteration"] for r in rec_b] == [4, 8]
    assert [r["val/mIoU"] for r in rec_a] == [r["val/mIoU"] for r in rec_b]


def test_resume_of_finished_run_is_refused(tiny_cfg):
    cfg = tiny_cfg("train.max_iters=2", "train.eval_interval=0")
    train(cfg)
    with pytest.raises(ValueError, match="iteration 2, train.max_iters=2: nothing left to train"):
        # the checkpoint holds every weight: the config's backbone file is never read (it does not exist)
        train(tiny_cfg("train.max_iters=2", "resume=true", "model.weights=/nonexistent/in1k.pth"))


def test_resume_path(tmp_path):
    def state(iteration):
        return {"model": {"w": torch.full((3,), float(iteration))}, "iteration": iteration}

    assert resume_path(False, tmp_path) is None and resume_path(None, tmp_path) is None
    assert resume_path("auto", tmp_path) is None  # nothing to continue: start
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        resume_path(True, tmp_path)
    with pytest.raises(CheckpointError, match="resume=/nope.pth: no such checkpoint file"):
        resume_path("/nope.pth", tmp_path)
    CheckpointManager(tmp_path / "checkpoints").save(state(3), 3)
    assert resume_path(True, tmp_path) == tmp_path / "checkpoints" / "last.pth"
    assert resume_path("auto", tmp_path) == tmp_path / "checkpoints" / "last.pth"
    assert resume_path(str(tmp_path / "checkpoints" / "iter_3.pth"), tmp_path).name == "iter_3.pth"
