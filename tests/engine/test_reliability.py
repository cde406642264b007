"""What survives what, in one process: skipped non-finite steps leave no trace, a checkpoint with
NaN/inf is never written, resuming applies or refuses changed settings, a new run never overwrites
another, damaged files are recovered, wrong settings and inputs fail with a specific message.

Signals, restarts and stalled processes need child processes: tests/engine/test_preemption.py.
"""

from __future__ import annotations

import errno
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import ccnet.checkpoint as checkpoint_module
import ccnet.engine.trainer as trainer
from ccnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ccnet.data.base import DatasetError
from ccnet.engine import train
from ccnet.engine.checkpoint_manager import CheckpointManager
from ccnet.engine.recorder import Recorder
from ccnet.engine.resume import ResumeError, load_resume_checkpoint, resume_path
from ccnet.engine.run_dir import RunDirError
from ccnet.engine.settings import check_train_config
from ccnet.engine.trainer import NonFiniteLossError
from ccnet.errors import ConfigError
from ccnet.evaluation.loading import load_checkpoint_for_eval

FAST = ("train.eval_interval=0", "train.vis_images=0")


class NaNPixelAt(torch.utils.data.Dataset):
    """The training set with one NaN pixel in the first image of step ``step`` (batch size ``batch``,
    no loader workers: items are read in step order)."""

    def __init__(self, dataset, step: int, batch: int) -> None:
        self.dataset, self.target, self.reads = dataset, (step - 1) * batch, 0
        for name in ("classes", "palette", "ignore_index", "num_classes", "mean", "std"):
            setattr(self, name, getattr(dataset, name))

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        if self.reads == self.target:
            image = image.clone()
            image[0, 0, 0] = float("nan")
        self.reads += 1
        return image, label


def test_skipped_step_leaves_weights_optimizer_and_batchnorm_untouched(tiny_cfg, monkeypatch, caplog):
    """A NaN input pixel makes the loss NaN *and* writes NaN into BatchNorm's running statistics
    during the forward pass; the skipped step must undo both, so that the state after it equals the
    state of a run that stopped just before it."""
    before = tiny_cfg(
        "train.max_iters=3", "train.checkpoint_interval=1", "train.keep_checkpoints=0", *FAST, work_dir="clean"
    )
    train(before)  # the same schedule without the NaN; its iter_2.pth is the state before step 3
    build = trainer.build_dataset

    def with_nan(cfg, split, **kwargs):
        dataset = build(cfg, split, **kwargs)
        return NaNPixelAt(dataset, step=3, batch=4) if split == "train" else dataset

    monkeypatch.setattr(trainer, "build_dataset", with_nan)
    cfg = tiny_cfg("train.max_iters=3", "train.skip_nonfinite=true", "train.eval_interval=3", work_dir="three")
    with caplog.at_level(logging.INFO, logger="ccnet"):
        result = train(cfg)
    assert result["skipped_nonfinite"] == 1
    assert "1 steps skipped (non-finite loss)" in caplog.text  # the final summary says so
    assert json.loads(open(f"{cfg.work_dir}/metrics.jsonl").read().splitlines()[-1])["skipped_nonfinite"] == 1
    a = load_checkpoint(f"{before.work_dir}/checkpoints/iter_2.pth")
    b = load_checkpoint(f"{cfg.work_dir}/checkpoints/last.pth")
    assert b["iteration"] == 3 and b["skipped_nonfinite"] == 1
    assert any("running_mean" in k for k in a["model"])
    for key, value in a["model"].items():  # weights and every BatchNorm buffer, bit for bit
        assert torch.equal(value, b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def test_checkpoint_with_non_finite_tensors_is_never_written(tiny_cfg, monkeypatch):
    """Finite losses, but from the third step on the model holds a NaN (a BatchNorm statistic):
    the checkpoint of iteration 4 is refused and the one of iteration 2 stays the last."""
    step = trainer.train_step

    def step_then_corrupt(run, it, *args):
        result = step(run, it, *args)
        if it >= 3:
            bn = next(m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_mean[0] = float("nan")
        return result

    monkeypatch.setattr(trainer, "train_step", step_then_corrupt)
    cfg = tiny_cfg("train.max_iters=4", "train.checkpoint_interval=2", *FAST)
    with pytest.raises(NonFiniteLossError, match=r"non-finite values at iteration 4.*running_mean.*nothing was saved"):
        train(cfg)
    last = load_checkpoint(f"{cfg.work_dir}/checkpoints/last.pth")
    assert last["iteration"] == 2  # the good checkpoint stays the last one


def test_resume_applies_changed_optimisation_settings(tiny_cfg, caplog):
    train(tiny_cfg("train.max_iters=2", *FAST))
    cfg = tiny_cfg("train.max_iters=6", "train.lr=0.05", "train.momentum=0.8", "resume=true", *FAST)
    with caplog.at_level(logging.WARNING, logger="ccnet"):
        train(cfg)
    assert "changed optimisation settings" in caplog.text
    for line in ("train.lr: 0.1 -> 0.05", "train.momentum: 0.9 -> 0.8", "train.max_iters: 2 -> 6"):
        assert line in caplog.text
    last = load_checkpoint(f"{cfg.work_dir}/checkpoints/last.pth")
    groups = last["optimizer"]["param_groups"]
    assert all(g["initial_lr"] == 0.05 and g["momentum"] == 0.8 for g in groups)
    assert last["scheduler"]["base_lrs"] == [0.05] * len(groups)
    assert groups[0]["lr"] == pytest.approx(0.0)  # poly schedule of the new max_iters, at its end
    assert OmegaConf.load(f"{cfg.work_dir}/config.yaml").train.lr == 0.05


def test_resume_with_another_model_names_the_keys(tiny_cfg):
    train(tiny_cfg("train.max_iters=2", *FAST))
    with pytest.raises(ResumeError, match=r"model.recurrence: 2 -> 1"):
        train(tiny_cfg("train.max_iters=4", "model.recurrence=1", "resume=true", *FAST))


def test_new_run_never_overwrites_an_earlier_one(tiny_cfg):
    cfg = tiny_cfg("train.max_iters=2", "train.eval_interval=2")
    train(cfg)
    run_dir = Path(cfg.work_dir)

    def files():
        return {p.name: p.read_bytes() for p in sorted((run_dir / "checkpoints").iterdir())}

    before, metrics = files(), (run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(RunDirError, match="holds an earlier run.*resume=auto.*work_dir"):
        train(tiny_cfg("train.max_iters=2", "train.eval_interval=2"))
    assert files() == before and (run_dir / "metrics.jsonl").read_bytes() == metrics
    # resume=auto continues it (here: a longer schedule), resume=auto on a finished run does nothing
    result = train(tiny_cfg("train.max_iters=3", "train.eval_interval=3", "resume=auto"))
    assert result["iteration"] == 3
    again = train(tiny_cfg("train.max_iters=3", "resume=auto"))
    assert again["iteration"] == 3 and again["val/mIoU"] == result["val/mIoU"]


def test_damaged_files_are_recovered(tmp_path, caplog):
    manager = CheckpointManager(tmp_path / "checkpoints", keep=3)
    for it in (2, 4):
        manager.save(
            {
                "model": {"w": torch.full((3,), float(it))},
                "iteration": it,
                "optimizer": {},
                "scheduler": {},
                "scaler": {},
                "rng": [],
                "sampler": {},
            },
            it,
        )
    # last.pth shares its bytes with iter_4.pth: truncating it damages both; resume falls back to iter_2
    with open(manager.last, "r+b") as f:
        f.truncate(100)
    path = resume_path(True, tmp_path)
    with caplog.at_level(logging.WARNING, logger="ccnet"):
        checkpoint, used = load_resume_checkpoint(path, True, tmp_path)
    assert used.name == "iter_2.pth" and checkpoint["iteration"] == 2
    assert "could not load" in caplog.text and "resuming from" in caplog.text
    with pytest.raises(CheckpointError):  # an explicit path is that file or nothing
        load_resume_checkpoint(manager.last, str(manager.last), tmp_path)
    # temporary files of killed saves are removed at the next start
    (manager.directory / ".iter_6.pth.abc123.tmp").write_bytes(b"partial")
    (manager.directory / ".last.pth.link").write_bytes(b"")
    manager.remove_stale_temporaries()
    assert sorted(p.name for p in manager.directory.iterdir()) == ["iter_2.pth", "iter_4.pth", "last.pth"]
    # a metrics.jsonl line cut short by a crash is dropped with a warning when the run resumes
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"iteration": 2, "val/mIoU": 0.5}\n{"iteration": 4, "val/mIoU": 0.6}\n{"iterat')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ccnet"):
        Recorder(tmp_path, start_iteration=4).close()
    assert f"{metrics} line 3 is not a complete record" in caplog.text
    assert [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()] == [2, 4]


def test_disk_full_says_so_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint({"w": torch.zeros(3)}, tmp_path / "last.pth")
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"x" * 100)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # torch.save reports it as its own RuntimeError, the OSError as context
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=f"no space left on device while writing {path}; {path} is intact"):
        save_checkpoint({"w": torch.ones(3)}, path)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary left behind


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("lr", "abc", "train.lr must be a finite number > 0, got 'abc' (a string)"),
        ("batch_size", 2.5, "train.batch_size must be an integer >= 1, got 2.5 (a float)"),
        ("eval_interval", -1, "train.eval_interval must be an integer >= 0, got -1"),
        ("max_iters", True, "train.max_iters must be an integer >= 1, got True (a boolean)"),
        ("momentum", 1.0, "train.momentum must be a finite number >= 0 and < 1, got 1.0"),
        ("grad_clip", 0, "train.grad_clip must be null or a finite number > 0, got 0"),
        ("amp", "bf32", "train.amp must be one of none, bf16, fp16, got 'bf32'"),
        ("lr", float("inf"), "train.lr must be a finite number > 0, got inf (a float)"),
        (
            "crop_size",
            [0, 0],
            "train.crop_size must be null or a positive integer or [height, width] of positive "
            "integers, got [0, 0] (a list)",
        ),
    ],
)
def test_settings_of_the_wrong_type_name_key_and_expectation(tiny_cfg, key, value, message):
    cfg = tiny_cfg()
    cfg.train[key] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_train_config(cfg)
    with pytest.raises(ConfigError):  # train() checks before anything else runs
        train(cfg)
    assert not Path(cfg.work_dir).exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["eval.mode=slide", "eval.crop_size=32", "eval.stride=48"],
            "eval.stride [48, 48] exceeds eval.crop_size [32, 32]",
        ),
        (["eval.mode=foo"], "eval.mode must be one of"),
        (["eval.scales=[0.0]"], "eval.scales must be a non-empty list of positive factors"),
        (["eval.crop_batch=0"], "eval.crop_batch must be"),
        (["eval.test_size=[0,0]"], "eval.test_size must be"),
        (["eval.num_workers=-3"], "eval.num_workers must be an integer >= 0"),
    ],
)
def test_validation_settings_fail_before_training_not_at_the_first_validation(tiny_cfg, overrides, message):
    cfg = tiny_cfg("train.max_iters=2", *overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(cfg)
    assert not Path(cfg.work_dir).exists()  # nothing ran: no folder, no iteration spent


def test_all_ignore_validation_split_fails_at_start_naming_it(tiny_cfg, tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val"):
        for i in range(2):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((32, 32, 3), 100 + i, np.uint8)).save(root / "images" / split / f"{i}.png")
            mask = np.full((32, 32), 255 if split == "val" else 1, np.uint8)
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    cfg = tiny_cfg(
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.num_classes=3",
        "dataset.crop_size=[32,32]",
        "train.max_iters=1",
        synthetic=False,
    )
    with pytest.raises(DatasetError, match=r"validation split 'val' \(2 images\) has no labelled pixel"):
        train(cfg)
    assert not (Path(cfg.work_dir) / "checkpoints").exists()


def test_load_from_that_fills_less_than_half_is_an_error_unless_partial(tiny_cfg, tmp_path):
    source = tiny_cfg("train.max_iters=1", *FAST, work_dir="source")
    train(source)
    state = load_checkpoint(f"{source.work_dir}/checkpoints/last.pth")["model"]
    head_only = {k: v for k, v in state.items() if k.startswith("head.bottleneck")}
    save_checkpoint({"model": head_only}, tmp_path / "head.pth")
    with pytest.raises(CheckpointError, match=r"fills only \d+ of the model's \d+ tensors.*load_from_partial=true"):
        train(tiny_cfg("train.max_iters=1", f"load_from={tmp_path / 'head.pth'}", *FAST, work_dir="a"))
    result = train(
        tiny_cfg(
            "train.max_iters=1", f"load_from={tmp_path / 'head.pth'}", "load_from_partial=true", *FAST, work_dir="b"
        )
    )
    assert result["iteration"] == 1


def test_stored_configs_are_data_never_resolved(tiny_cfg, tmp_path, monkeypatch):
    """A crafted checkpoint whose config reads an environment variable is refused by evaluation and
    by resume; the variable's value appears nowhere."""
    monkeypatch.setenv("CCNET_SECRET", "s3cret-value")
    cfg = tiny_cfg("train.max_iters=2", *FAST)
    train(cfg)
    path = Path(cfg.work_dir) / "checkpoints" / "last.pth"
    checkpoint = load_checkpoint(path)
    checkpoint["config"]["model"]["name"] = "${oc.env:CCNET_SECRET}"
    save_checkpoint(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"interpolation at model.name") as info:
        load_checkpoint_for_eval(path)
    assert "s3cret-value" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"interpolation at model.name"):
        train(tiny_cfg("train.max_iters=4", "resume=true", *FAST))
