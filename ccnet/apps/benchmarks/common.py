"""Shared measurement helpers of the benchmarks: device choice, timing, peak memory, FLOPs, tables.

Timing: the median of ``repeats`` calls after ``warmup`` untimed ones (CUDA synchronised around each).
Peak memory: the most allocated during a call above what was allocated before it: on CUDA
``max_memory_allocated``, on the CPU the peak running sum of the allocator's events recorded by
``torch.profiler(profile_memory=True)`` (docs/performance.md#how-the-figures-are-taken).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from ccnet.dist import resolve_device  # noqa: F401  (re-exported for the benchmark modules)
from ccnet.errors import ConfigError, UserError

CPU_MEMORY_METHOD = (
    "torch.profiler(profile_memory=True): peak running sum of the CPU allocator's "
    "allocation/free events during the call, above the memory allocated before it"
)
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated during the call, above the memory allocated before it"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_device_arguments(parser: argparse.ArgumentParser, warmup: int = 1, repeats: int = 5) -> None:
    """``--device``, ``--threads``, ``--warmup`` and ``--repeats``, common to the timing benchmarks."""
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: PyTorch's choice)")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed calls first (default {warmup})")
    parser.add_argument(
        "--repeats",
        type=int,
        default=repeats,
        help=f"timed calls; the median and the range are reported (default {repeats})",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"time even when the CPUs are busy (load average above {MAX_LOAD_PER_CORE} per core "
        "after waiting up to 2 minutes for it to fall); the result records the load",
    )


MAX_LOAD_PER_CORE = 0.3  # above this, other processes share the CPUs and timings are not results


class BusyMachineError(UserError, RuntimeError):
    """The machine is too loaded for timings to mean anything (the message says to wait or pass --force)."""


def check_machine_load(
    device: torch.device, force: bool, wait_s: float = 120.0, poll_s: float = 5.0
) -> Optional[float]:
    """Refuse to time on busy CPUs: the 1-minute load average per core must be at most :data:`MAX_LOAD_PER_CORE`.

    A load above it is waited out for up to ``wait_s`` seconds (it may be decaying from what ran just before);
    ``force`` times anyway, with a warning. On a GPU the load is only recorded.

    Returns:
        The 1-minute load average at the start (None where the OS has none), for :func:`machine_info`.

    Raises:
        BusyMachineError: still too loaded after ``wait_s`` and not ``force``.
    """
    if not hasattr(os, "getloadavg"):
        return None
    if device.type == "cuda":
        return os.getloadavg()[0]
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load / cores > MAX_LOAD_PER_CORE and not force and wait_s > 0:
        print(
            f"load average {load:.2f} on {cores} CPUs; waiting up to {wait_s:.0f} s for it to fall to "
            f"{MAX_LOAD_PER_CORE * cores:.2f}",
            file=sys.stderr,
        )
        deadline = time.monotonic() + wait_s
        while load / cores > MAX_LOAD_PER_CORE and time.monotonic() < deadline:
            time.sleep(poll_s)
            load = os.getloadavg()[0]
    if load / cores <= MAX_LOAD_PER_CORE:
        return load
    message = (
        f"load average {load:.2f} on {cores} CPUs ({load / cores:.2f} per core, above {MAX_LOAD_PER_CORE}): "
        "other processes share the CPUs, so the timings would not be results"
    )
    if not force:
        raise BusyMachineError(
            message + f" (waited {wait_s:.0f} s); wait until the machine is idle, or pass --force to time anyway"
        )
    print(f"warning: {message}; timing anyway (--force)", file=sys.stderr)
    return load


def size_hw(values: Sequence[int], option: str = "--size") -> Tuple[int, int]:
    """``H`` or ``H W`` from the command line as ``(H, W)``."""
    if len(values) not in (1, 2) or min(values) < 1:
        raise ConfigError(f"{option} takes H or H W (positive), got {' '.join(map(str, values))}")
    return (values[0], values[-1])


def apply_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, setup: Optional[Callable[[], Any]] = None
) -> Dict[str, float]:
    """Median and minimum wall time of ``fn`` in milliseconds.

    Args:
        fn: the call to time; its result is dropped before the next call.
        device: CUDA devices are synchronised before and after every call.
        warmup: untimed calls first (allocator warm-up, lazy initialisation, autotuning).
        repeats: timed calls (at least 1).
        setup: untimed, before every call (e.g. dropping the previous call's gradients).

    Returns:
        ``{"median_ms", "min_ms", "max_ms", "repeats"}``.
    """
    return time_interleaved({"call": (fn, setup)}, device, warmup, repeats)["call"]


def time_interleaved(
    calls: Dict[str, Tuple[Callable[[], Any], Optional[Callable[[], Any]]]],
    device: torch.device,
    warmup: int,
    repeats: int,
) -> Dict[str, Dict[str, float]]:
    """:func:`time_call` for several ``(fn, setup)`` calls taking turns in every round, so a change of load
    affects them alike.
    """
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    times: Dict[str, List[float]] = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, (fn, setup) in calls.items():
            if setup is not None:
                setup()
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "repeats": repeats}
        for name, t in times.items()
    }


def gemm_throughput(device: torch.device, dtype: torch.dtype, size: Optional[int] = None, repeats: int = 5) -> float:
    """GFLOP/s of a square matrix product on ``device`` in ``dtype`` (median of ``repeats``), the roofline's
    practical peak; ``size`` defaults to 2048 on CPUs, 8192 on GPUs.
    """
    n = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    timing = time_call(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * n**3 / (timing["median_ms"] * 1e-3) / 1e9


def memory_method(device: torch.device) -> str:
    """How :func:`peak_memory` measures on ``device`` (printed beside the numbers)."""
    return CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD


def peak_memory(
    fn: Callable[[], Any], device: torch.device, setup: Optional[Callable[[], Any]] = None
) -> Tuple[int, str]:
    """Peak bytes allocated during ``fn()`` above what was allocated before it, and how.

    ``setup`` runs first, unmeasured: ``fn`` must not free memory from before it (e.g. old gradients), which
    would be subtracted.

    Returns:
        ``(bytes, method)`` with ``method`` as :func:`memory_method` describes it.
    """
    if setup is not None:
        setup()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before, CUDA_MEMORY_METHOD
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    ]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak, CPU_MEMORY_METHOD


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence what the profiler's C++ library (Kineto) prints to fd 2 on every start and stop; its log level
    cannot switch those lines off.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` by ``FlopCounterMode``: matmuls and convolutions, a multiply-add counted as 2."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def machine_info(device: torch.device, load_at_start: Optional[float] = None) -> Dict[str, Any]:
    """Where the numbers come from: device, threads, library versions and the CPU load when timing started
    (``load_at_start``; the current load when None).
    """
    info: Dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        # the widest vector ISA PyTorch's CPU kernels use here (AVX2, AVX512, ...): bfloat16 is fast only
        # with AVX512 BF16/AMX, and the same "AMD EPYC" name covers hosts with and without them
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if load_at_start is not None or hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(load_at_start if load_at_start is not None else os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(rows: Sequence[Dict[str, Any]], columns: Sequence[Tuple[str, str, str]]) -> str:
    """A plain-text table.

    Args:
        rows: one dict per row.
        columns: ``(key, header, format)`` per column, e.g. ``("fwd_ms", "fwd ms", "{:.1f}")``;
            a missing or ``None`` value prints as ``-``.
    """
    cells: List[List[str]] = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append(["-" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe_machine(info: Dict[str, Any]) -> str:
    """One line for the table header."""
    where = info.get("gpu") or (
        f"{info['cpu']}, {info.get('cpu_capability', '?')} ({info['threads']} threads of {info['cpu_count']} CPUs)"
    )
    load = f", load average {info['load_average_1min']} at the start" if "load_average_1min" in info else ""
    return f"{where}; torch {info['torch']}{load}"
