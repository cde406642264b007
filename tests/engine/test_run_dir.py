"""A run owns its work_dir: a second run started while the first is alive is refused naming it, a killed
run blocks nobody, a new run never writes into a folder holding files no run wrote, and a failed
validation never loses the steps trained before it."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ccnet.engine.trainer as trainer
from ccnet.checkpoint import load_checkpoint
from ccnet.data.base import DatasetError
from ccnet.engine import train
from ccnet.engine.run_dir import RunDirError
from ccnet.engine.trainer import ValidationFailed
from ccnet.utils.outputs import LOCK_NAME, FolderInUseError, hold_folder
from tests.engine.children import child_env, child_script

FAST = ("train.eval_interval=0", "train.vis_images=0")

# tools/train.py in a child that pauses at iteration AT until the file RELEASE exists (READY says it
# got there), so the test controls when the first run is alive without depending on timing.
PAUSING_CHILD = child_script("""
    at, ready, release = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    def wrapped(run, it, *args):
        if it == at:
            open(ready, "w").close()
            deadline = time.time() + 120
            while not os.path.exists(release) and time.time() < deadline:
                time.sleep(0.05)
        return step(run, it, *args)
""")


def _start_paused(repo_root: Path, tmp_path: Path, name: str, overrides: list) -> tuple:
    ready, release = tmp_path / f"{name}.ready", tmp_path / f"{name}.release"
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSING_CHILD, "1", str(ready), str(release), "--", *overrides],
        env=child_env(repo_root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    return proc, release


def _train_cli(repo_root: Path, overrides: list) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(repo_root / "tools" / "train.py"), *overrides],
        env=child_env(repo_root),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # three child processes, ~25 s on 2 cores
def test_a_second_run_is_refused_while_the_first_lives_and_a_killed_one_blocks_nobody(
    repo_root, tmp_path, tiny_overrides
):
    work_dir = tmp_path / "run"
    overrides = [*tiny_overrides, "train.max_iters=2", *FAST, f"work_dir={work_dir}"]
    first, release = _start_paused(repo_root, tmp_path, "first", overrides)
    try:
        for extra in ([], ["resume=auto"]):  # the same command, and a restarted job's resume=auto
            second = _train_cli(repo_root, [*overrides, *extra])
            output = second.stdout + second.stderr
            assert second.returncode == 2, output[-3000:]
            assert f"{work_dir} is in use by another run (PID {first.pid} on host" in output
            assert "Traceback" not in output
    finally:
        release.touch()
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out[-3000:]
    log = (work_dir / "train.log").read_text()
    assert "is in use" not in log  # the refused runs wrote nothing into the first run's folder
    assert log.count("settings that differ") == 1
    assert [json.loads(line)["iteration"] for line in (work_dir / "metrics.jsonl").read_text().splitlines()] == [2]

    # A run killed while holding the lock leaves the file behind, but not the lock.
    killed_dir = tmp_path / "killed"
    overrides = [*tiny_overrides, "train.max_iters=2", "train.checkpoint_interval=1", *FAST, f"work_dir={killed_dir}"]
    victim, _ = _start_paused(repo_root, tmp_path, "victim", overrides)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert (killed_dir / LOCK_NAME).is_file()
    after = _train_cli(repo_root, [*overrides, "resume=auto"])
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
    assert load_checkpoint(killed_dir / "checkpoints" / "last.pth")["iteration"] == 2


def test_the_lock_names_its_holder_and_is_reentrant_in_one_process(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from ccnet.utils.outputs import hold_folder
        with hold_folder({str(folder)!r}, "train", key="work_dir"):
            print("held", flush=True)
            time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=rf"PID {holder.pid} on host .* own work_dir=") as info:
            with hold_folder(folder, "eval", key="work_dir"):
                pass
        assert info.value.foreign_folder == folder.resolve()
    finally:
        holder.kill()
        holder.wait()
    with hold_folder(folder, "train") as outer:  # the holder died: the lock is free again
        assert outer.previous["pid"] == holder.pid and outer.previous["tool"] == "train"
        with hold_folder(folder, "train") as inner:  # tools/train.py and then train(cfg) in one process
            assert inner is outer and inner.depth == 2
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_new_run_refuses_a_folder_holding_files_no_run_wrote(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.max_iters=1", *FAST)
    work_dir = Path(cfg.work_dir)
    work_dir.mkdir()
    (work_dir / "config.yaml").write_text("my: own settings\n")
    for resume in (False, "auto"):  # resume=auto with nothing to resume starts a new run: the same rule
        cfg.resume = resume
        with pytest.raises(RunDirError, match=r"holds files that no training run wrote there \(config.yaml\)"):
            train(cfg)
    assert (work_dir / "config.yaml").read_text() == "my: own settings\n"
    assert not (work_dir / "checkpoints").exists()

    empty = tiny_cfg("train.max_iters=1", *FAST, work_dir="empty")
    Path(empty.work_dir).mkdir()
    assert train(empty)["iteration"] == 1

    # A run stopped before its first checkpoint left config.yaml, metrics.jsonl, tb/: its own folder.
    early = tiny_cfg("train.max_iters=1", *FAST, work_dir="early")
    train(early)
    for path in (Path(early.work_dir) / "checkpoints").iterdir():
        path.unlink()
    assert train(early)["iteration"] == 1


def test_a_failed_validation_saves_the_training_state_first(tiny_cfg, monkeypatch):
    evaluate = trainer.evaluate

    def failing(model, dataset, *args, **kwargs):
        raise DatasetError("Cannot decode label /data/val/3.png: broken")

    monkeypatch.setattr(trainer, "evaluate", failing)
    cfg = tiny_cfg("train.max_iters=4", "train.eval_interval=3", "train.checkpoint_interval=0", "train.vis_images=0")
    with pytest.raises(ValidationFailed) as info:
        train(cfg)
    message = str(info.value)
    assert message.startswith("Cannot decode label /data/val/3.png: broken\nvalidation at iteration 3 failed")
    assert "resume=true" in message
    checkpoints = Path(cfg.work_dir) / "checkpoints"
    assert load_checkpoint(checkpoints / "last.pth")["iteration"] == 3

    monkeypatch.setattr(trainer, "evaluate", evaluate)  # the cause fixed: the run continues
    cfg.resume = True
    assert train(cfg)["iteration"] == 4

    def bug(model, dataset, *args, **kwargs):
        raise ZeroDivisionError("a bug keeps its traceback")

    monkeypatch.setattr(trainer, "evaluate", bug)
    other = tiny_cfg("train.max_iters=2", "train.eval_interval=1", "train.vis_images=0", work_dir="bug")
    with pytest.raises(ZeroDivisionError):
        train(other)
    assert load_checkpoint(Path(other.work_dir) / "checkpoints" / "last.pth")["iteration"] == 1


def test_a_full_disk_under_tensorboard_only_stops_the_logging(tiny_cfg, monkeypatch, caplog):
    from ccnet.engine.recorder import Recorder

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Recorder, "__init__", _recorder_with(Recorder.__init__, full))
    cfg = tiny_cfg("train.max_iters=4", "train.log_interval=1", "train.eval_interval=2", "train.vis_images=0")
    with caplog.at_level(logging.WARNING, logger="ccnet"):
        result = train(cfg)
    assert result["iteration"] == 4
    warnings = [r.getMessage() for r in caplog.records if "training continues without it" in r.getMessage()]
    assert len(warnings) == 1 and f"{Path(cfg.work_dir) / 'tb'} failed (No space left on device)" in warnings[0]
    lines = (Path(cfg.work_dir) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [2, 4]  # the other log kept going


def _recorder_with(init, add_scalar):
    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.writer.add_scalar = add_scalar.__get__(self.writer)

    return patched
