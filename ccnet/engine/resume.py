"""Continuing a run: which checkpoint ``resume`` means, whether the new settings may continue it, and
restoring the model, optimiser, schedule, progress and random streams from it.

``resume``: ``false`` starts a new run; ``true`` continues ``work_dir/checkpoints/last.pth`` (an error
without one); ``auto`` continues it when it exists, else starts; a path continues that file. For
``true``/``auto`` an unreadable ``last.pth`` falls back to the newest loadable ``iter_<n>.pth``. Another
model or dataset is refused; changed optimisation settings are applied and listed in a warning
(docs/training.md#resume-fine-tune).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from ccnet import dist
from ccnet.checkpoint import CheckpointError, load_checkpoint, stored_config
from ccnet.data.samplers import InfiniteSampler
from ccnet.engine.checkpoint_manager import CheckpointManager
from ccnet.engine.rng import seed_everything, set_rng_state
from ccnet.engine.settings import APPLIED, IGNORED, REFUSED, resume_policy
from ccnet.errors import UserError
from ccnet.utils.config import flatten_config

log = logging.getLogger(__name__)

AUTO = "auto"
TRAINING_STATE = ("model", "optimizer", "scheduler", "scaler", "rng", "sampler", "iteration")


class ResumeError(UserError, ValueError):
    """The new settings cannot continue the checkpoint's run."""


class RunFinished(Exception):
    """``resume=auto`` found a run already at ``train.max_iters``: nothing to train, not an error."""

    def __init__(self, path: Path, iteration: int) -> None:
        super().__init__(f"{path} is at iteration {iteration}, train.max_iters: the run is finished")
        self.path, self.iteration = path, iteration


def resume_path(resume: Union[bool, str, None], work_dir: Path) -> Optional[Path]:
    """The checkpoint a ``resume`` setting refers to, or None for a new run.

    Raises:
        CheckpointError: ``resume=true`` without a checkpoint, or a path that does not exist.
    """
    if resume is None or resume is False:
        return None
    if resume is True or resume == AUTO:
        candidates = CheckpointManager(Path(work_dir) / "checkpoints").resume_candidates()
        if candidates:
            return candidates[0]
        if resume == AUTO:
            return None
        raise CheckpointError(
            f"resume=true but there is no checkpoint to resume: {Path(work_dir) / 'checkpoints' / 'last.pth'} does "
            "not exist. Pass the work_dir of the run to continue (work_dir=...), resume=PATH for a specific file, "
            "resume=auto to start when there is nothing to continue, or drop resume to start a new run"
        )
    path = Path(str(resume))
    if not path.is_file():
        raise CheckpointError(
            f"resume={resume}: no such checkpoint file; expected a .pth written by the "
            "trainer, e.g. WORK_DIR/checkpoints/last.pth"
        )
    return path


def load_resume_checkpoint(path: Path, resume: Union[bool, str], work_dir: Path) -> Tuple[Dict[str, Any], Path]:
    """Load the checkpoint to continue from; with ``resume=true|auto``, the newest loadable periodic one if
    ``path`` cannot be read.

    Returns:
        ``(checkpoint, the path actually loaded)``.

    Raises:
        CheckpointError: nothing loadable, or a checkpoint without training state.
    """
    candidates = [path]
    if resume is True or resume == AUTO:
        candidates = CheckpointManager(Path(work_dir) / "checkpoints").resume_candidates()
    failures: List[str] = []
    failed_files = set()
    for candidate in candidates:
        identity = _file_identity(candidate)
        if identity in failed_files:  # a hard link of a file that already failed (last.pth = iter_<n>.pth)
            continue
        try:
            checkpoint = load_checkpoint(candidate)
        except CheckpointError as exc:
            failures.append(str(exc))
            failed_files.add(identity)
            continue
        if failures:
            log.warning(
                "could not load %s (%s); resuming from %s, the newest checkpoint that loads",
                candidates[0],
                failures[0],
                candidate,
            )
        missing = [k for k in TRAINING_STATE if k not in checkpoint]
        if missing:
            raise CheckpointError(
                f"checkpoint {candidate} lacks training state {missing} (has {sorted(checkpoint)}); "
                f"use load_from={candidate} to start a new run from its weights"
            )
        return checkpoint, candidate
    raise CheckpointError("no checkpoint to resume can be read:\n  " + "\n  ".join(failures))


def _file_identity(path: Path) -> Tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except OSError:
        return -1, hash(str(path))


def compare_configs(saved: Mapping[str, Any], new: Mapping[str, Any]) -> Dict[str, List[str]]:
    """Differences between a checkpoint's config and the new one, as ``"key: old -> new"`` lines
    under ``blocking`` (another experiment), ``applied`` (optimisation settings) and ``other``, by
    each key's policy in :mod:`ccnet.engine.settings`."""
    before, after = flatten_config(saved), flatten_config(new)
    changes: Dict[str, List[str]] = {"blocking": [], "applied": [], "other": []}
    sections = {REFUSED: "blocking", APPLIED: "applied"}
    for key in sorted(set(before) | set(after)):
        policy = resume_policy(key)
        if policy == IGNORED or before.get(key) == after.get(key):
            continue
        line = f"{key}: {before.get(key, '(absent)')!r} -> {after.get(key, '(absent)')!r}"
        changes[sections.get(policy, "other")].append(line)
    return changes


def check_resume_config(checkpoint: Mapping[str, Any], path: Path, new: Mapping[str, Any]) -> None:
    """Refuse another experiment; warn about what changes from here on.

    Raises:
        ResumeError: the model or the dataset's classes differ (names each key).
        CheckpointError: the stored config holds interpolations (never resolved).
    """
    saved = stored_config(checkpoint, path)
    if saved is None:
        log.warning("checkpoint %s stores no config: the settings cannot be compared with the run it continues", path)
        return
    changes = compare_configs(saved, new)
    if changes["blocking"]:
        keys = "\n  ".join(changes["blocking"])
        raise ResumeError(
            f"cannot resume {path}: it was trained with another model or dataset:\n  {keys}\nStart a "
            "new run instead (another work_dir; load_from=PATH initialises it from these weights)"
        )
    if changes["applied"]:
        log.warning(
            "resuming with changed optimisation settings, applied to the restored optimiser and schedule:\n  %s",
            "\n  ".join(changes["applied"]),
        )
    if changes["other"]:
        log.warning("resuming with changed settings, in effect from now on:\n  %s", "\n  ".join(changes["other"]))


@dataclass
class Progress:
    """Where a run stands: steps done, best val mIoU, training seconds, non-finite steps skipped, sample position."""

    iteration: int = 0
    best_miou: float = float("-inf")
    train_time: float = 0.0
    skipped: int = 0
    stream_start: int = 0


def restore(
    checkpoint: Mapping[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    scaler: torch.amp.GradScaler,
    cfg: Mapping[str, Any],
    dataset_size: int,
) -> Progress:
    """Load the checkpoint's states into these objects, with the new config's hyper-parameters in the optimiser
    and schedule; returns the run's progress.

    Raises:
        ResumeError: the checkpoint is already at ``train.max_iters`` (``resume=true``/PATH).
        RunFinished: the same with ``resume=auto``.
    """
    fresh = [{k: g[k] for k in ("momentum", "weight_decay", "initial_lr")} for g in optimizer.param_groups]
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    # load_state_dict brought back the checkpoint's hyper-parameters; the new config's apply (the
    # schedule's lambdas were built from it, only its base lrs and position came from the file).
    scheduler.base_lrs = [g["initial_lr"] for g in fresh]
    for group, values, factor in zip(optimizer.param_groups, fresh, scheduler.lr_lambdas):
        group.update(values)
        group["lr"] = values["initial_lr"] * factor(scheduler.last_epoch)
    iteration, max_iters = int(checkpoint["iteration"]), int(cfg["train"]["max_iters"])
    if iteration >= max_iters:
        if cfg.get("resume") == AUTO:
            raise RunFinished(path, iteration)
        raise ResumeError(
            f"checkpoint {path} is at iteration {iteration}, train.max_iters={max_iters}: "
            "nothing left to train; raise train.max_iters to train longer"
        )
    log.info("resumed from %s at iteration %d", path, iteration)
    return Progress(
        iteration=iteration,
        best_miou=float(checkpoint.get("best_miou", float("-inf"))),
        train_time=float(checkpoint.get("train_time_s", 0.0)),
        skipped=int(checkpoint.get("skipped_nonfinite", 0)),
        stream_start=InfiniteSampler.start_from_state(checkpoint["sampler"], dataset_size, int(cfg["train"]["seed"])),
    )


def restore_rng(states: List[Dict[str, Any]], seed: int, iteration: int) -> None:
    """This rank's generators as the checkpoint saved them; re-seeded when the process count changed."""
    if len(states) == dist.get_world_size():
        set_rng_state(states[dist.get_rank()])
        return
    log.warning(
        "checkpoint saved by %d processes, resuming on %d: random streams (dropout) are "
        "re-seeded; the sample order continues exactly",
        len(states),
        dist.get_world_size(),
    )
    seed_everything(seed + dist.get_rank() + 1_000_003 * iteration)
