"""Checkpoint files: atomic writes, safe loads (``weights_only=True``) and clear errors.

A checkpoint is a plain dict of tensors and Python containers, never pickled objects: ``model`` (state
dict of the unwrapped model), ``config`` (the composed config, plain and resolved), ``iteration``, and
from the trainer ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``sampler``, ``best_miou``. Its stored
config is data: :func:`stored_config` refuses interpolations instead of resolving them.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import torch

from ccnet.errors import UserError

PathLike = Union[str, os.PathLike]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, unreadable, or lacks an expected entry."""


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same directory, flushed and fsync'ed,
    renamed over ``path``, the directory fsync'ed. A crash leaves the old file or the new one (and maybe a
    ``.<name>.*.tmp``, see :func:`remove_stale_temporaries`).

    Raises:
        CheckpointError: the disk is full (the message says so and that ``path``, if it existed, is intact);
            other write errors propagate unchanged.
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
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_disk_full(exc):
            previous = f"{path} is intact" if path.exists() else f"nothing was written to {path}"
            raise CheckpointError(
                f"no space left on device while writing {path}; {previous}. Free space "
                "(e.g. lower train.keep_checkpoints) and resume"
            ) from exc
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain (torch.save wraps it in a RuntimeError of its own)."""
    seen = set()
    link: Optional[BaseException] = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        link = link.__cause__ or link.__context__
    return False


def remove_stale_temporaries(directory: PathLike) -> List[Path]:
    """Delete the ``.<name>.*.tmp`` files killed saves left in ``directory``; returns what was removed.

    Only call it when no other process writes there (rank 0 at the start of a run).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".link"))]
    for p in stale:
        p.unlink()
    return stale


def non_finite_tensors(state: Mapping[str, Any]) -> List[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold NaN or inf."""
    return [
        name
        for name, t in _leaves(state)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


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
    """The model state dict inside a checkpoint dict (``obj["model"]``, ``obj["state_dict"]`` or ``obj`` itself),
    without a DistributedDataParallel ``module.`` prefix.
    """
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
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def stored_config(checkpoint: Mapping[str, Any], path: PathLike = "<memory>") -> Optional[Dict[str, Any]]:
    """A checkpoint's stored config as plain data, or None when it has none.

    An OmegaConf interpolation (``${...}``) is refused, never resolved: ``${oc.env:SECRET}`` would read this
    machine's environment into outputs.

    Raises:
        CheckpointError: the config is not a mapping or holds an interpolation (names the key).
    """
    config = checkpoint.get("config")
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(config).__name__} as its config, expected a mapping")
    for key, value in _leaves(config):
        if isinstance(value, str) and "${" in value:
            raise CheckpointError(
                f"checkpoint {path}: its stored config has an interpolation at {key} ({value!r}). Checkpoints "
                "written by this framework hold resolved values only; this one was edited or made elsewhere, and "
                "resolving it could read this machine's environment. Refusing to use it"
            )
    return dict(config)


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, value
