"""Checkpoint files: atomic writes, safe loads (``weights_only=True``) and clear errors.

A checkpoint is a plain dict of tensors and Python containers, never pickled objects:

- ``model``: state dict (of the unwrapped model, no ``module.`` prefix)
- ``config``: the composed Hydra config as a plain, resolved dict
- ``iteration``: number of optimisation steps completed
- training state when saved by the trainer: ``optimizer``, ``scheduler``, ``scaler``, ``rng``,
  ``sampler``, ``best_miou``
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import torch

from ccnet.errors import UserError

PathLike = Union[str, os.PathLike]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, unreadable, or lacks an expected entry."""


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> Path:
    """Write ``state`` to ``path`` atomically.

    The bytes go to a temporary file in the same directory, are flushed and fsync'ed, and only then
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows). A crash at any point
    leaves either the previous file or the new one, never a truncated mix. The directory is fsync'ed
    too so the rename itself survives a power loss.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling).

    Raises:
        CheckpointError: the file does not exist, is not a torch checkpoint (truncated, corrupt, or
            containing pickled objects), or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise CheckpointError(
            f"could not load checkpoint {path}: {type(exc).__name__}: {exc}. The file is corrupt, "
            "truncated, or holds pickled Python objects (only tensors and plain containers are "
            "accepted)."
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def model_state_from(obj: Dict[str, Any], path: PathLike = "<memory>") -> Dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint dict: ``obj["model"]``, ``obj["state_dict"]``, or
    ``obj`` itself when it is already a bare state dict of tensors. A ``module.`` prefix left by
    DistributedDataParallel is stripped."""
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            state = obj[key]
            break
    else:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state = obj
        else:
            raise CheckpointError(
                f"checkpoint {path} has no model weights: expected a 'model' or 'state_dict' entry, "
                f"found keys {sorted(obj)[:10]}"
            )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
