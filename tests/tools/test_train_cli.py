"""tools/train.py through its command line: Hydra errors for bad keys/groups, multirun sweeps with one
work dir per job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

TINY = [
    "dataset.image_size=64",
    "dataset.min_gap=16",
    "dataset.num_train=64",
    "dataset.num_val=4",
    "model.tiny_widths=[8,16,32]",
    "model.head_channels=16",
    "model.bottleneck_channels=16",
    "model.aux_channels=8",
    "train.batch_size=2",
    "train.num_workers=0",
    "eval.num_workers=0",
    "train.device=cpu",
    "train.max_iters=2",
    "train.log_interval=1",
]


def run_train(repo_root, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(repo_root / "tools" / "train.py"), *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # tool runs in child processes
@pytest.mark.parametrize(
    "override, message",
    [
        ("trian.lr=0.1", "trian.lr is not a setting of train: did you mean train.lr"),
        (
            "train.learning_rate=0.1",
            "train.learning_rate is not a setting of train: the settings are listed in configs",
        ),
        # Hydra's own hint for the first one ("use +trian.lr=0.1") led here: a key nothing reads.
        (
            "+trian.lr=0.1",
            "trian.lr is not a setting of train (+ adds a key that nothing reads): did you mean train.lr",
        ),
        (
            "+train.lrr=0.1",
            "train.lrr is not a setting of train (+ adds a key that nothing reads): did you mean train.lr",
        ),
        ("model=ccnet_r1000", "Could not find 'model/ccnet_r1000'"),
        ("experiment=nope", "Could not find 'experiment/nope'"),
    ],
)
def test_unknown_key_or_group_is_one_message_with_the_closest_keys(repo_root, tmp_path, override, message):
    proc = run_train(repo_root, override, f"work_dir={tmp_path}")
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow  # tool runs in child processes
def test_every_hydra_tool_suggests_keys_and_takes_known_appends(repo_root, tmp_path):
    for tool, arg, message in (
        ("eval", "chekpoint=x.pth", "chekpoint is not a setting of eval: did you mean checkpoint?"),
        (
            "infer",
            "+inputs=x",
            "inputs is not a setting of infer (+ adds a key that nothing reads): did you mean input?",
        ),
        ("browse_dataset", "num_sample=2", "num_sample is not a setting of browse: did you mean num_samples?"),
    ):
        proc = subprocess.run(
            [sys.executable, str(repo_root / "tools" / f"{tool}.py"), arg],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and message in proc.stderr, (tool, proc.stderr[-2000:])
    # eval and infer merge model/dataset keys over the checkpoint's: + of a key some model config has passes
    proc = subprocess.run(
        [
            sys.executable,
            str(repo_root / "tools" / "eval.py"),
            "+model.recurrence=1",
            f"checkpoint={tmp_path / 'missing.pth'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "checkpoint not found" in proc.stdout + proc.stderr


@pytest.mark.slow  # tool runs in child processes
def test_user_error_is_one_message_without_traceback(repo_root, tmp_path):
    proc = run_train(repo_root, *TINY, "model.weights=/nonexistent/in1k.pth", f"work_dir={tmp_path}")
    assert proc.returncode == 2
    assert "checkpoint not found: /nonexistent/in1k.pth" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow  # tool runs in child processes
def test_multirun_gives_each_job_its_own_work_dir(repo_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train(repo_root, "-m", *TINY, "train.seed=0,1", f"work_dir={sweep}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for job, seed in ((0, 0), (1, 1)):
        job_dir = sweep / str(job)
        cfg = OmegaConf.load(job_dir / "config.yaml")
        assert cfg.train.seed == seed and cfg.work_dir == str(job_dir)
        assert (job_dir / "checkpoints" / "last.pth").is_file()
        assert json.loads((job_dir / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 2
        assert "done: 2 iterations" in (job_dir / "train.log").read_text()


@pytest.mark.slow  # tool runs in child processes
def test_default_work_dir_is_one_per_set_of_overrides_and_resume_auto_finds_it(repo_root, tmp_path):
    """Run from tmp_path so that the default work_dirs/ lands there: the quickstart's command plus an
    override gets its own directory (never the quickstart's), and the same command with
    resume=auto finds it again."""

    def run(*args):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run(
            [sys.executable, str(repo_root / "tools" / "train.py"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    first = run(*TINY)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    (run_dir,) = (tmp_path / "work_dirs").iterdir()
    assert run_dir.name.startswith("ccnet_tiny_synthetic+") and (run_dir / "checkpoints" / "last.pth").is_file()
    assert not (run_dir / ".hydra").exists()  # Hydra writes nothing before the trainer checked the directory

    again = run(*TINY)  # the same command again: refused, nothing overwritten
    assert again.returncode == 2 and "holds an earlier run" in again.stdout + again.stderr
    resumed = run(*TINY, "resume=auto", "train.num_workers=0")  # excluded keys keep the same directory
    assert resumed.returncode == 0 and "nothing to train" in resumed.stdout + resumed.stderr
    other = run(*TINY, "model.ccl=true")
    assert other.returncode == 0, other.stderr[-2000:]
    assert len(list((tmp_path / "work_dirs").iterdir())) == 2


@pytest.mark.slow  # tool runs in child processes
@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=abc", "train.lr must be a finite number > 0, got 'abc' (a string)"),
        ("train.batch_size=2.5", "train.batch_size must be an integer >= 1, got 2.5 (a float)"),
        ("train.crop_size=[96,96]", "train.crop_size=[96, 96] for the synthetic dataset: crops would cut the key off"),
        ("resume=true", "resume=true but there is no checkpoint to resume"),
    ],
)
def test_wrong_setting_is_one_line_naming_the_key(repo_root, tmp_path, override, message):
    proc = run_train(repo_root, *TINY, override, f"work_dir={tmp_path}")
    assert proc.returncode == 2 and message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
