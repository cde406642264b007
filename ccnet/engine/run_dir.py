"""A training run owns its ``work_dir``: one run at a time (``run.lock``, :func:`ccnet.utils.outputs.hold_folder`,
held by rank 0), and a new run only in a folder that is new, empty, or a training run's own (its lock file
says so: an earlier run that wrote no checkpoint may be replaced, files no run wrote never).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional

from ccnet import dist
from ccnet.engine.checkpoint_manager import CheckpointManager
from ccnet.errors import UserError
from ccnet.utils.outputs import LOCK_NAME, FolderLock, hold_folder

TOOL = "train"
# Written by Hydra (its log file) or this module before the ownership check runs.
STARTUP_FILES = (LOCK_NAME, "train.log")


class RunDirError(UserError, ValueError):
    """A new run was pointed at a directory holding another run or files no run wrote."""


@contextlib.contextmanager
def hold_work_dir(work_dir: Path, main: Optional[bool] = None) -> Iterator[Optional[FolderLock]]:
    """Lock ``work_dir`` for the block on the main process (``main``; default: rank 0 of the process
    group); other processes get None."""
    if not (dist.is_main_process() if main is None else main):
        yield None
        return
    with hold_folder(work_dir, TOOL, key="work_dir") as lock:
        yield lock


def foreign_entries(work_dir: Path, previous: Optional[Mapping[str, Any]]) -> List[str]:
    """Names in ``work_dir`` that no training run wrote (sorted); empty when an earlier training run
    held the folder (``previous``: what its lock file said) or the folder holds only start-up files."""
    if previous is not None and previous.get("tool") == TOOL or not work_dir.is_dir():
        return []
    return sorted(p.name for p in work_dir.iterdir() if p.name not in STARTUP_FILES)


def check_new_run_dir(work_dir: Path, lock: Optional[FolderLock]) -> None:
    """Refuse to start a new run where it would overwrite another run or files the user put there.

    Raises:
        RunDirError: ``work_dir`` holds a run's checkpoints (continue it with ``resume``), or files no
            training run wrote (``config.yaml``, ``metrics.jsonl`` ... would replace them).
    """
    if CheckpointManager(work_dir / "checkpoints").holds_run():
        if lock is not None:
            lock.restore()  # another run's folder: its lock file keeps naming that run
        raise RunDirError(
            f"{work_dir} holds an earlier run (its checkpoints/); a new run would overwrite it. Continue it with "
            "resume=auto (or resume=true), or give this run its own work_dir=..."
        )
    foreign = foreign_entries(work_dir, lock.previous if lock is not None else None)
    if foreign:
        if lock is not None:
            lock.restore()
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunDirError(
            f"{work_dir} holds files that no training run wrote there ({shown}); a run writes config.yaml, "
            "metrics.jsonl, tb/ and checkpoints/ into its work_dir and could replace them. Give this run a new or "
            "empty work_dir=..., or move those files away"
        )
