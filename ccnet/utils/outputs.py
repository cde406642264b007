"""Output folders of the tools: one run per folder (:func:`hold_folder`), and no folder left holding only a
failed run's start-up files (Hydra's log, ``config.yaml``, the lock: :func:`discard_if_empty_on_failure`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Union

from ccnet.errors import UserError
from ccnet.utils.manifest import MANIFEST_NAME

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

# what a run writes before its results (eval/infer start their manifest before writing anything)
HOUSEKEEPING = ("train.log", "eval.log", "infer.log", "browse_dataset.log", "config.yaml", MANIFEST_NAME)


def _sizes(directory: Path) -> Dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir() if p.is_file()} if directory.is_dir() else {}


@contextlib.contextmanager
def discard_if_empty_on_failure(
    directory: Union[str, Path], housekeeping: Sequence[str] = HOUSEKEEPING, default_root: Optional[Path] = None
) -> Iterator[None]:
    """On an exception (or exit) inside the block, remove the housekeeping files that were empty or absent when
    it started and the lock file this run created, then ``directory`` itself if nothing else is in it, and
    then its parents that are left empty up to ``default_root`` (the tool's default output folder, such as
    ``outputs/infer``: a failed run leaves no empty folder there either). The exception propagates. Call it on
    one process only (rank 0).
    """
    directory = Path(directory)
    before = _sizes(directory)
    try:
        yield
    except BaseException:
        entries = list(directory.iterdir()) if directory.is_dir() else []
        lock = _held.get(directory.resolve())

        def litter(p: Path) -> bool:
            if not p.is_file():
                return False
            if p.name == LOCK_NAME:
                return lock is not None and (lock.created or not before.get(p.name))
            return p.name in housekeeping and before.get(p.name, 0) == 0

        ours = [p for p in entries if litter(p)]
        try:
            for p in ours:
                p.unlink()
            if len(ours) == len(entries):
                directory.rmdir()
                _prune_empty_parents(directory, default_root)
        except OSError:  # cleaning up must never hide the error that ended the run
            pass
        raise


def _prune_empty_parents(directory: Path, root: Optional[Path]) -> None:
    """rmdir the empty parents of ``directory`` that lie in ``root`` (``root`` itself included)."""
    if root is None:
        return
    root, parent = Path(root).resolve(), directory.resolve().parent
    while (parent == root or root in parent.parents) and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


LOCK_NAME = "run.lock"  # in every run folder: held (flock) for the run's life, names the holder


class FolderInUseError(UserError, RuntimeError):
    """Another live process holds the run folder's lock."""

    def __init__(self, message: str, folder: Optional[Path] = None) -> None:
        super().__init__(message)
        self.foreign_folder = folder  # exit_on_user_error keeps our log lines out of that run's log


@dataclass
class FolderLock:
    """A held lock on ``folder``; ``previous`` is what the lock file said before (an earlier run's
    ``{"tool", "pid", "host", "started", "command"}``), or None for a folder no run has locked."""

    folder: Path
    fd: int
    previous: Optional[Dict[str, Any]]
    created: bool = False  # the lock file did not exist before
    depth: int = 1

    def restore(self) -> None:
        """Put the lock file back as it was (removed if this run created it), for a run that refuses the folder."""
        if self.fd < 0:
            return
        if self.created:
            os.unlink(self.folder / LOCK_NAME)  # safe while locked: a waiting opener re-checks the inode
        else:
            os.ftruncate(self.fd, 0)
            if self.previous is not None:
                os.pwrite(self.fd, (json.dumps(self.previous) + "\n").encode(), 0)


_held: Dict[Path, FolderLock] = {}


def _read_holder(path: Path) -> Optional[Dict[str, Any]]:
    try:
        info = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe_holder(info: Optional[Dict[str, Any]]) -> str:
    if not info:
        return "a process that has not written its name yet"
    return (
        f"PID {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}: "
        f"{info.get('command', '?')}"
    )


def _acquire(folder: Path, tool: str, key: str) -> FolderLock:
    path = folder / LOCK_NAME
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            fd, created = os.open(path, os.O_RDWR | os.O_CREAT, 0o644), False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(
                f"{folder} is in use by another run ({_describe_holder(_read_holder(path))}). Two runs in one folder "
                f"would mix their files: wait for that run to end (or stop it), or give this one its own {key}=...",
                folder,
            ) from None
        try:  # a run that removed its folder may have unlinked the file between our open and flock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _read_holder(path)
    info = {
        "tool": tool,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return FolderLock(folder, fd, previous, created)


@contextlib.contextmanager
def hold_folder(folder: Union[str, Path], tool: str, key: str = "output_dir") -> Iterator[FolderLock]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the block.

    The lock is ``flock`` on ``folder/run.lock``, so it dies with the process; re-entrant within one process;
    nothing is locked where ``fcntl`` is missing (Windows). ``key`` is the setting that names the folder.

    Raises:
        FolderInUseError: another live process holds it (names its PID, host and command).
    """
    folder = Path(folder).resolve()
    held = _held.get(folder)
    if held is not None:
        held.depth += 1
        try:
            yield held
        finally:
            held.depth -= 1
        return
    if fcntl is None:
        yield FolderLock(folder, -1, None)
        return
    lock = _acquire(folder, tool, key)
    _held[folder] = lock
    try:
        yield lock
    finally:
        del _held[folder]
        os.close(lock.fd)
