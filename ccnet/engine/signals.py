"""Stopping a run on request: SIGTERM (preemption, ``kill``), SIGINT (Ctrl-C) and SIGUSR1 (Slurm's
``--signal=USR1@<seconds>``).

The first signal sets a flag; the loop finishes its step, all processes agree to stop (through the step's
all-reduce), ``last.pth`` is written and :class:`TrainingStopped` raised (exit status :data:`EXIT_STOPPED`).
A second signal aborts at once unless it comes within :data:`DUPLICATE_WINDOW_S` of the first: torchrun,
Slurm and Ctrl-C deliver one request to a worker twice within milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))
EXIT_STOPPED = 3  # "stopped on request, last.pth written": a requeue script or torchrun restart resumes it
STOP_REPORT_ENV = "CCNET_STOP_REPORT"  # a file where rank 0 reports a stop (set by scripts/launch.py)
DUPLICATE_WINDOW_S = 2.0  # a second signal sooner than this is the same request delivered twice


class TrainingStopped(Exception):
    """The run stopped on a signal after writing ``last.pth``.

    Args:
        reason: what stopped it (``"SIGTERM"``, or a signal received by another process).
        iteration: the last completed step.
        checkpoint: the file holding it.
    """

    exit_code = EXIT_STOPPED

    def __init__(self, reason: str, iteration: int, checkpoint: str) -> None:
        super().__init__(
            f"stopped by {reason} after iteration {iteration}; saved {checkpoint}. The same command "
            "with resume=auto (or resume=true) continues the run"
        )
        self.reason, self.iteration, self.checkpoint = reason, iteration, checkpoint


class StopRequest:
    """Context manager installing the stop handlers (main thread only; elsewhere a no-op).

    ``signal_name`` is the first signal received, or None.
    """

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._first_at = 0.0
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.signal_name, self._first_at = name, time.monotonic()
            log.warning(
                "%s received: finishing this step, then writing last.pth and stopping (send it again to "
                "abort at once without saving)",
                name,
            )
            return
        if time.monotonic() - self._first_at < DUPLICATE_WINDOW_S:
            return  # the same request delivered twice (torchrun forwarding it, a signal to the process group)
        log.error("second stop signal (%s): aborting without saving", name)
        raise SystemExit(128 + signum)


def write_stop_report(stopped: TrainingStopped) -> None:
    """Tell a launcher waiting for the workers (``scripts/launch.py``) what they saved: rank 0 writes
    ``{"message", "iteration", "checkpoint"}`` to the file ``$CCNET_STOP_REPORT`` names, if set."""
    path = os.environ.get(STOP_REPORT_ENV)
    if path:
        with open(path, "w") as f:
            json.dump({"message": str(stopped), "iteration": stopped.iteration, "checkpoint": stopped.checkpoint}, f)
