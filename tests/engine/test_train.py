"""train(cfg) end to end on tiny synthetic runs: it learns, writes its files, handles non-finite losses
and reports bad input clearly."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ccnet.engine.trainer as trainer
from ccnet.checkpoint import CheckpointError, load_checkpoint
from ccnet.data import build_dataset
from ccnet.engine import NonFiniteLossError, train


def majority_class_miou(cfg) -> float:
    """mIoU of predicting the most frequent class everywhere: IoU = its pixel share for that class,
    0 for every other class present (hand-computed, independent of the metric code)."""
    val = build_dataset(cfg.dataset, "val")
    labels = np.stack([val[i][1].numpy() for i in range(len(val))])
    counts = np.bincount(labels.ravel(), minlength=cfg.dataset.num_classes)
    return counts.max() / counts.sum() / np.count_nonzero(counts)


def test_tiny_run_learns_and_writes_its_files(tiny_cfg, caplog):
    cfg = tiny_cfg(
        "train.max_iters=40",
        "train.lr=0.05",
        "train.eval_interval=20",
        "train.checkpoint_interval=20",
        "train.keep_checkpoints=1",
    )
    with caplog.at_level(logging.INFO, logger="ccnet"):
        result = train(cfg)

    losses = [float(m) for m in re.findall(r"iter \d+/40  loss ([0-9.]+)", caplog.text)]
    assert len(losses) == 9  # the first step, then every log_interval (5) steps
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2])
    assert result["val/mIoU"] > majority_class_miou(cfg) + 0.05

    work = cfg.work_dir
    records = [json.loads(line) for line in open(f"{work}/metrics.jsonl")]
    assert [r["iteration"] for r in records] == [20, 40]
    assert records[-1]["val/mIoU"] == pytest.approx(result["val/mIoU"])
    assert {f"val/IoU/{c}" for c in ("background", "red", "green", "blue", "yellow")} <= set(records[-1])
    assert records[0]["train_time_s"] < records[1]["train_time_s"]
    assert all(r["val_time_s"] > 0 for r in records)

    ckpt_files = sorted(p.name for p in (Path(work) / "checkpoints").iterdir())
    assert ckpt_files == ["best.pth", "iter_40.pth", "last.pth"]  # keep_checkpoints=1 deleted iter_20
    last = load_checkpoint(f"{work}/checkpoints/last.pth")
    assert last["iteration"] == 40 and last["sampler"] == {"epoch": 0, "position": 160, "seed": 0, "dataset_size": 512}
    assert last["config"]["train"]["max_iters"] == 40
    best = load_checkpoint(f"{work}/checkpoints/best.pth")
    assert best["best_miou"] == pytest.approx(max(r["val/mIoU"] for r in records))
    assert OmegaConf.load(f"{work}/config.yaml").train.lr == 0.05
    assert "val @ 40: mIoU" in open(f"{work}/train.log").read()
    events = EventAccumulator(f"{work}/tb")
    events.Reload()
    assert {
        "train/loss",
        "train/loss_main",
        "train/loss_aux",
        "train/lr",
        "train/img_per_s",
        "val/mIoU",
        "val/IoU/background",
    } <= set(events.Tags()["scalars"])
    panel = events.Images("val/panel_0")[-1]
    assert (panel.step, panel.width) == (40, 3 * 64)  # input | ground truth | prediction
    assert 64 + 14 + 17 <= panel.height <= 64 + 200  # headings, 64 px panels, a legend band of 14-px rows
    for tag in ("val/per_class_iou", "val/confusion_matrix"):  # the plots, at every validation
        plots = events.Images(tag)
        assert [p.step for p in plots] == [20, 40] and all(p.width >= 300 and p.height >= 150 for p in plots)
    attention = events.Images("val/attention_0")[-1]  # input | loop 1 | loop 2
    assert (attention.step, attention.width) == (40, (1 + cfg.model.recurrence) * 64)
    assert attention.height > 64 + 30  # headings above, the colour scale and its caption below


class NaNAt:
    """Wrap a criterion so that the given calls (1-based) return a NaN loss."""

    def __init__(self, criterion, calls):
        self.criterion, self.calls, self.count = criterion, set(calls), 0

    def to(self, device):
        self.criterion.to(device)
        return self

    def __call__(self, outputs, target):
        self.count += 1
        losses = self.criterion(outputs, target)
        if self.count in self.calls:
            losses["loss"] = losses["loss"] * float("nan")
        return losses


def test_nonfinite_loss_stops_naming_the_iteration(tiny_cfg, monkeypatch):
    build = trainer.build_criterion
    monkeypatch.setattr(trainer, "build_criterion", lambda *a, **k: NaNAt(build(*a, **k), {5}))
    cfg = tiny_cfg("train.max_iters=8", "train.checkpoint_interval=4", "train.eval_interval=0")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at iteration 5.*last\.pth"):
        train(cfg)
    last = load_checkpoint(f"{cfg.work_dir}/checkpoints/last.pth")  # the last good checkpoint is intact
    assert last["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_nonfinite_loss_skipped_and_counted(tiny_cfg, monkeypatch, caplog):
    build = trainer.build_criterion
    monkeypatch.setattr(trainer, "build_criterion", lambda *a, **k: NaNAt(build(*a, **k), {2, 3}))
    cfg = tiny_cfg("train.max_iters=5", "train.skip_nonfinite=true", "train.eval_interval=0")
    with caplog.at_level(logging.WARNING, logger="ccnet"):
        result = train(cfg)
    assert result["skipped_nonfinite"] == 2
    assert "non-finite loss at iteration 3: step skipped (2 so far)" in caplog.text
    last = load_checkpoint(f"{cfg.work_dir}/checkpoints/last.pth")
    assert last["iteration"] == 5
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_missing_dataset_root_fails_before_the_model_is_built(tiny_cfg, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the dataset was checked")

    monkeypatch.setattr(trainer, "build_model", no_model)
    cfg = tiny_cfg("dataset=cityscapes", f"dataset.root={tmp_path}/nowhere", synthetic=False)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(cfg)


def test_resume_without_checkpoint_is_a_clear_error(tiny_cfg):
    with pytest.raises(CheckpointError, match="resume=true but there is no checkpoint to resume.*last.pth"):
        train(tiny_cfg("resume=true"))


def test_corrupt_checkpoint_error_names_the_file(tiny_cfg, tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        train(tiny_cfg(f"resume={bad}"))
    with pytest.raises(CheckpointError, match="broken.pth"):
        train(tiny_cfg(f"load_from={bad}"))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_options_run_together(tiny_cfg, amp):
    # AMP (fp16 with a GradScaler), channels_last, clipping, OHEM, class weights, head lr multiplier,
    # no decay on norm/bias, warm-up and a floor, on CPU autocast.
    cfg = tiny_cfg(
        f"train.amp={amp}",
        "train.channels_last=true",
        "train.grad_clip=1.0",
        "train.ohem.enabled=true",
        "train.ohem.min_kept=1000",
        "train.class_weights=[0.5,1,1,1,1]",
        "train.head_lr_mult=10",
        "train.no_decay_norm_bias=true",
        "train.warmup_iters=2",
        "train.min_lr=1e-4",
        "train.max_iters=4",
        "train.eval_interval=0",
    )
    result = train(cfg)
    last = load_checkpoint(f"{cfg.work_dir}/checkpoints/last.pth")
    assert result["skipped_nonfinite"] == 0 and 0.0 <= result["val/mIoU"] <= 1.0
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert [g["name"] for g in last["optimizer"]["param_groups"]] == [
        "backbone",
        "backbone_no_decay",
        "head",
        "head_no_decay",
    ]
    assert ("scale" in last["scaler"]) == (amp == "fp16")  # a disabled GradScaler saves an empty state


def test_load_from_initialises_weights_only(tiny_cfg):
    source = tiny_cfg("train.max_iters=3", "train.eval_interval=0", work_dir="source")
    train(source)
    src = load_checkpoint(f"{source.work_dir}/checkpoints/last.pth")
    # A new run from those weights; a negligible lr keeps them where they were loaded. The backbone
    # weights named in the config are never read (the file does not exist): load_from provides them.
    cfg = tiny_cfg(
        "train.max_iters=1",
        "train.eval_interval=0",
        "train.lr=1e-12",
        f"load_from={source.work_dir}/checkpoints/last.pth",
        "model.weights=/nonexistent/in1k.pth",
        work_dir="finetune",
    )
    train(cfg)
    last = load_checkpoint(f"{cfg.work_dir}/checkpoints/last.pth")
    assert last["iteration"] == 1 and last["sampler"]["position"] == 4  # a new run, not a resume
    params = {k for k, v in last["model"].items() if "running" not in k and "num_batches" not in k}
    for key in params:
        torch.testing.assert_close(last["model"][key], src["model"][key], rtol=0, atol=1e-6)


def test_progress_is_logged_at_the_first_step_and_never_silent_for_long(tiny_cfg, monkeypatch, caplog):
    """log_interval longer than the run: the first step and the end are still logged; and a log line
    comes whenever LOG_EVERY_S passed since the last one (0 here: every step)."""
    with caplog.at_level(logging.INFO, logger="ccnet"):
        train(tiny_cfg("train.max_iters=3", "train.log_interval=1000", "train.eval_interval=0", work_dir="a"))
    assert [m.split()[1] for m in caplog.messages if m.startswith("iter ")] == ["1/3", "3/3"]
    caplog.clear()
    monkeypatch.setattr(trainer, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="ccnet"):
        train(tiny_cfg("train.max_iters=3", "train.log_interval=1000", "train.eval_interval=0", work_dir="b"))
    assert [m.split()[1] for m in caplog.messages if m.startswith("iter ")] == ["1/3", "2/3", "3/3"]
