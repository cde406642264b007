"""scripts/slurm_train.sh without a cluster: stand-in ``srun``/``scontrol`` run the per-node command
locally (one node), so the real torchrun c10d rendezvous, the quoting of overrides and the 2-process
training run are exercised; scripts/dist_train.sh (through scripts/launch.py) ends a job stopped by
a signal with status 3 and a wrong setting with 2. (tests/engine/test_distributed.py trains with it.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from ccnet.checkpoint import load_checkpoint

FAKE_SRUN = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do echo "$1" >> "$SRUN_LOG"; shift; done
export SLURM_NNODES=1 SLURM_JOB_ID=4242 SLURM_JOB_NODELIST=node-a
exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2 $3" == "show hostnames node-a" ]] && echo localhost
"""
TINY = [
    "dataset.image_size=64",
    "dataset.min_gap=16",
    "dataset.num_train=16",
    "dataset.num_val=2",
    "model.tiny_widths=[8,16,32]",
    "model.head_channels=16",
    "model.bottleneck_channels=16",
    "model.aux_channels=8",
    "train.batch_size=1",
    "train.num_workers=0",
    "eval.num_workers=0",
    "train.device=cpu",
    "train.max_iters=1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # child processes: 10-70 s on the shared 2-core development machine, by load
def test_slurm_script_runs_torchrun_with_c10d_rendezvous(repo_root, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "run with space"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SRUN_LOG": str(tmp_path / "srun.log"),
        "PYTHON": sys.executable,
        "NODES": "1",
        "GPUS_PER_NODE": "2",
        "PORT": str(free_port()),
        "PARTITION": "debug",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", str(repo_root / "scripts" / "slurm_train.sh"), *TINY, f"work_dir={work}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    srun_opts = (tmp_path / "srun.log").read_text().split()
    assert {"--nodes=1", "--ntasks-per-node=1", "--gres=gpu:2", "--partition=debug"} <= set(srun_opts)
    assert OmegaConf.load(work / "config.yaml").work_dir == str(work)  # the space survived the quoting
    assert "batch 1 per process x 2 processes" in (work / "train.log").read_text()
    assert (work / "checkpoints" / "last.pth").is_file()


def test_dist_train_usage_error(repo_root):
    proc = subprocess.run(
        ["bash", str(repo_root / "scripts" / "dist_train.sh"), "experiment=x"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "usage:" in proc.stderr


def _dist_train(repo_root, *overrides, restarts="0"):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MAX_RESTARTS": restarts}
    return subprocess.Popen(
        ["bash", str(repo_root / "scripts" / "dist_train.sh"), "2", *TINY, *overrides],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # its own process group, as Slurm's job step or a terminal


@pytest.mark.slow  # two torchrun jobs of 2 processes: ~25 s on 2 cores
def test_a_stop_signal_to_the_whole_job_saves_and_exits_3_and_a_wrong_setting_exits_2(repo_root, tmp_path):
    """Slurm's --signal and a terminal's Ctrl-C reach every process of the job: torchrun passes the signal on,
    so each worker gets it twice at once, and must still save; the job ends with 3, without a traceback."""
    work = tmp_path / "run"
    job = _dist_train(
        repo_root, "train.max_iters=100000", "train.eval_interval=0", "train.log_interval=5", f"work_dir={work}"
    )
    deadline = time.time() + 120
    while "iter 10/" not in ((work / "train.log").read_text() if (work / "train.log").exists() else ""):
        assert job.poll() is None and time.time() < deadline, job.communicate()[0][-3000:]
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGTERM)
    output = job.communicate(timeout=120)[0]
    assert job.returncode == 3, output[-3000:]
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM after iteration ") and str(work / "checkpoints" / "last.pth") in last
    iteration = int(last.split("after iteration ")[1].split(";")[0])
    assert load_checkpoint(work / "checkpoints" / "last.pth")["iteration"] == iteration

    wrong = _dist_train(repo_root, "train.lr=abc", f"work_dir={tmp_path / 'wrong'}")
    output = wrong.communicate(timeout=120)[0]
    assert wrong.returncode == 2, output[-3000:]
    assert "train.lr must be a finite number > 0, got 'abc' (a string)" in output
    assert "Traceback" not in output and "ChildFailedError" not in output
