"""Stopping a run on request: SIGTERM (Slurm/Kubernetes preemption, ``kill``), SIGINT (Ctrl-C) and
SIGUSR1 (Slurm's ``--signal=USR1@<seconds>`` warning before the time limit).

The first signal only sets a flag; the training loop finishes its step, agrees with the other
processes that the run stops (the flag travels in the step's all-reduce), writes ``last.pth`` and
raises :class:`TrainingStopped`, which ``tools/train.py`` turns into exit status
:data:`EXIT_STOPPED`. A second signal aborts at once, without saving.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))
EXIT_STOPPED = 3  # "stopped on request, last.pth written": a requeue script or torchrun restart resumes it


class TrainingStopped(Exception):
    """The run stopped on a signal after writing ``last.pth``.

    Args:
        reason: what stopped it (``"SIGTERM"``, or a signal received by another process).
        iteration: the last completed step.
        checkpoint: the file holding it.
    """

    exit_code = EXIT_STOPPED

    def __init__(self, reason: str, iteration: int, checkpoint: str) -> None:
        super().__init__(f"stopped by {reason} after iteration {iteration}; saved {checkpoint}. The same command "
                         "with resume=auto (or resume=true) continues the run")
        self.reason, self.iteration, self.checkpoint = reason, iteration, checkpoint


class StopRequest:
    """Context manager installing the stop handlers (main thread only; elsewhere a no-op).

    ``signal_name`` is the first signal received, or None.
    """

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
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
            self.signal_name = name
            log.warning("%s received: finishing this step, then writing last.pth and stopping (send it again to "
                        "abort at once without saving)", name)
            return
        log.error("second stop signal (%s): aborting without saving", name)
        raise SystemExit(128 + signum)
