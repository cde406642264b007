"""Checkpoint files of a run: iter/last/best names, keep-last-K, crash safety, resume/load_from rules."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

import ccnet.checkpoint as checkpoint_module
from ccnet.checkpoint import CheckpointError, load_checkpoint
from ccnet.engine.checkpoint_manager import CheckpointManager, load_weights


def state(iteration: int) -> dict:
    return {"model": {"w": torch.full((3,), float(iteration))}, "iteration": iteration}


def test_periodic_last_and_keep_k(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep=2)
    for it in (10, 20, 30):
        manager.save(state(it), it)
    assert [p.name for p in manager.periodic()] == ["iter_20.pth", "iter_30.pth"]
    assert load_checkpoint(manager.last)["iteration"] == 30
    manager.save_best({**state(20), "best_miou": 0.5})
    assert load_checkpoint(manager.best)["best_miou"] == 0.5
    assert sorted(p.name for p in manager.directory.iterdir()) == ["best.pth", "iter_20.pth", "iter_30.pth", "last.pth"]


def test_keep_zero_keeps_all_and_disabled_writes_nothing(tmp_path):
    manager = CheckpointManager(tmp_path / "a", keep=0)
    for it in range(1, 6):
        manager.save(state(it), it)
    assert len(manager.periodic()) == 5
    quiet = CheckpointManager(tmp_path / "b", enabled=False)  # a rank other than 0
    quiet.save(state(1), 1)
    quiet.save_best({**state(1), "best_miou": 0.1})
    assert not (tmp_path / "b").exists()


def test_last_survives_a_crash_inside_torch_save(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(state(1), 1)
    real_save = torch.save

    def save_half_then_crash(obj, f, *args, **kwargs):
        f.write(b"\x80\x02 half a pickle")  # bytes hit the temp file, then the process "dies"
        raise KeyboardInterrupt("simulated crash during save")

    monkeypatch.setattr(checkpoint_module.torch, "save", save_half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        manager.save(state(2), 2)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)

    assert load_checkpoint(manager.last)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert not (tmp_path / "iter_2.pth").exists()


def test_last_survives_a_failing_rename(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(state(1), 1)

    def no_rename(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(checkpoint_module.os, "replace", no_rename)
    with pytest.raises(OSError):
        manager.save(state(2), 2)
    monkeypatch.undo()
    assert load_checkpoint(manager.last)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_1.pth", "last.pth"]


def test_last_is_written_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError("file system without hard links")

    monkeypatch.setattr(os, "link", no_links)
    manager = CheckpointManager(tmp_path)
    manager.save(state(7), 7)
    assert load_checkpoint(manager.last)["iteration"] == 7


def test_load_weights_copies_matching_tensors_only(caplog):
    source = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 19, 1))  # e.g. trained on 19 classes
    target = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1))  # fine-tuned on 5
    before = target[1].weight.detach().clone()
    load_weights(target, source.state_dict(), "src.pth")
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[1].weight, before)
    assert "2 checkpoint tensors unused" in caplog.text
    with pytest.raises(CheckpointError, match="none of its 1 tensors matches"):
        load_weights(target, {"other.weight": torch.zeros(1)}, "other.pth")
