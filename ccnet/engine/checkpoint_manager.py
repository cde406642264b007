"""The trainer's checkpoint files: ``work_dir/checkpoints/iter_<n>.pth`` (the last K kept), ``last.pth`` (a
hard link to the newest) and ``best.pth``, written atomically by :func:`ccnet.checkpoint.save_checkpoint`;
weight initialisation for ``load_from``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Union

import torch
import torch.nn as nn

from ccnet.checkpoint import CheckpointError, remove_stale_temporaries, save_checkpoint

log = logging.getLogger(__name__)

_ITER_FILE = re.compile(r"^iter_(\d+)\.pth$")


def load_weights(
    model: nn.Module, state: Dict[str, torch.Tensor], path: Union[str, os.PathLike], partial: bool = False
) -> None:
    """Initialise ``model`` from ``state`` for fine-tuning (``load_from``): tensors whose name and shape match
    are copied, the rest keep their initial values and are listed in a warning.

    Args:
        partial: accept a checkpoint that fills fewer than half of the model's tensors (``load_from_partial``);
            otherwise that is taken for a wrong file.

    Raises:
        CheckpointError: no tensor of the checkpoint fits the model, or fewer than half do and ``partial`` is false.
    """
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise CheckpointError(
            f"load_from={path}: none of its {len(state)} tensors matches the model "
            f"(first keys: {sorted(state)[:5]}); is it a checkpoint of another architecture?"
        )
    if 2 * len(matched) < len(own) and not partial:
        unfilled = sorted(set(own) - set(matched))
        raise CheckpointError(
            f"load_from={path} fills only {len(matched)} of the model's {len(own)} tensors "
            f"(e.g. not {unfilled[:3]}): probably a checkpoint of another architecture. If a "
            "partial initialisation is what you want, set load_from_partial=true"
        )
    model.load_state_dict(matched, strict=False)
    skipped = sorted(set(state) - set(matched))
    missing = sorted(set(own) - set(matched))
    log.info("load_from=%s: initialised %d of %d tensors", path, len(matched), len(own))
    if skipped or missing:
        log.warning(
            "load_from=%s: %d checkpoint tensors unused (name or shape differs, e.g. %s); %d model "
            "tensors keep their initialisation (e.g. %s)",
            path,
            len(skipped),
            skipped[:3],
            len(missing),
            missing[:3],
        )


class CheckpointManager:
    """Writes periodic, last and best checkpoints into one directory (rank 0 only).

    Args:
        directory: ``work_dir/checkpoints``.
        keep: number of ``iter_<n>.pth`` files kept (oldest deleted first); 0 keeps all.
        enabled: False on ranks other than 0, where every call is a no-op.
    """

    def __init__(self, directory: Path, keep: int = 3, enabled: bool = True) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.enabled = enabled

    def remove_stale_temporaries(self) -> None:
        """Delete what killed saves left (``.<name>.*.tmp``); only while no other process writes here."""
        if self.enabled:
            removed = remove_stale_temporaries(self.directory)
            if removed:
                log.info("removed %d temporary files of interrupted saves from %s", len(removed), self.directory)

    def resume_candidates(self) -> List[Path]:
        """Checkpoints a resume may continue from, newest first: ``last.pth``, then ``iter_<n>.pth``."""
        periodic = list(reversed(self.periodic()))
        return [p for p in [self.last, *periodic] if p.is_file()]

    def holds_run(self) -> bool:
        """Whether a run already saved here (last, periodic or best checkpoint)."""
        return self.last.is_file() or self.best.is_file() or bool(self.periodic())

    @property
    def last(self) -> Path:
        return self.directory / "last.pth"

    @property
    def best(self) -> Path:
        return self.directory / "best.pth"

    def periodic(self) -> List[Path]:
        """Existing ``iter_<n>.pth`` files, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _ITER_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: Dict[str, Any], iteration: int) -> None:
        """Write ``iter_<iteration>.pth`` and ``last.pth``, then delete periodic files beyond ``keep``."""
        if not self.enabled:
            return
        path = save_checkpoint(state, self.directory / f"iter_{iteration}.pth")
        _replace_with_link(path, self.last, state)
        if self.keep > 0:
            for old in self.periodic()[: -self.keep]:
                old.unlink()
        log.info("saved checkpoint %s", path)

    def save_best(self, state: Dict[str, Any]) -> None:
        """Write ``best.pth`` (weights, config, iteration and ``best_miou``)."""
        if self.enabled:
            save_checkpoint(state, self.best)
            log.info("new best mIoU %.4f at iteration %d: %s", state["best_miou"], state["iteration"], self.best)


def _replace_with_link(source: Path, target: Path, state: Dict[str, Any]) -> None:
    """Make ``target`` a hard link to ``source`` atomically; without hard links, write ``state`` to ``target``."""
    tmp = target.with_name(f".{target.name}.link")
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(source, tmp)
        os.replace(tmp, target)
    except OSError:
        if tmp.exists():
            tmp.unlink()
        save_checkpoint(state, target)
