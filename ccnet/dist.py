"""Distributed helpers: this process's device, process-group setup from torchrun's environment, ranks,
reductions and gathers. Every function also works without a process group, so library code calls them
unconditionally.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Callable, List, Optional, Tuple, TypeVar

import torch
import torch.distributed as dist

from ccnet.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def resolve_device(name: str, key: str = "device") -> torch.device:
    """The device a ``device`` setting names: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` (this
    process's GPU: ``LOCAL_RANK`` under torchrun) or ``cuda:N``.

    Args:
        key: the setting's name, for the error message (``train.device``, ``--device``, ...).

    Raises:
        ConfigError: an unknown value, or CUDA asked for on a machine without it.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ConfigError(f"{key} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}={name} but no CUDA device is visible here; use {key}=cpu (or auto)")
    return torch.device("cuda", get_local_rank()) if name == "cuda" else torch.device(name)


def launched_by_torchrun() -> bool:
    """torchrun (and srun + torchrun) export WORLD_SIZE/RANK; a plain ``python`` run does not."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_type: str, timeout_s: float = 600.0) -> bool:
    """Initialise the default process group when launched by torchrun; returns whether one is initialised.

    Args:
        device_type: ``"cuda"`` selects NCCL (and binds this process to ``LOCAL_RANK``'s GPU), anything
            else gloo.
        timeout_s: how long a collective waits for the other processes (``train.dist_timeout_s``); a
            validation on rank 0 alone must fit inside it.
    """
    if is_distributed():
        return True
    if not launched_by_torchrun():
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(get_local_rank())
    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    # torchrun keeps one store for the whole job: without a per-attempt prefix, the processes of a
    # restarted attempt (--max-restarts) read the addresses the dead attempt's processes published and
    # fail to connect ("Gloo connectFullMesh failed ... Connection refused") until an attempt wins the race.
    store = dist.PrefixStore(f"ccnet/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    log.info("initialised %s process group: rank %d of %d", backend, get_rank(), get_world_size())
    return True


def is_timeout(exc: BaseException) -> bool:
    """Whether a collective failed because another process did not answer in time (gloo's recv timeout,
    NCCL's watchdog); a DataLoader's own timeout is not one.
    """
    text = str(exc).lower()
    return (
        isinstance(exc, RuntimeError)
        and is_distributed()
        and ("timed out" in text or "timeout" in text)
        and "dataloader" not in text
    )


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op for one process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src: int = 0):
    """Send a picklable Python object from ``src`` to every rank (identity for one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` for one process)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def run_on_main(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` on rank 0 only and give every rank its result, or raise its exception on every rank."""
    if not is_distributed():
        return fn(*args)
    outcome: Optional[Tuple[bool, Any]] = None
    if is_main_process():
        try:
            outcome = (True, fn(*args))
        except Exception as exc:  # re-raised on every rank below
            outcome = (False, exc)
    ok, value = broadcast_object(outcome)
    if ok:
        return value
    raise value
