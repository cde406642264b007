"""torchrun with the training's exit statuses: ``python scripts/launch.py [torchrun options] tools/train.py ...``.

Plain torchrun ends a job stopped by SIGTERM or SIGINT (Slurm's ``--signal``, preemption, Ctrl-C)
with a traceback of its own and status 1, although its workers saved ``last.pth`` and exited with
status 3; and a worker's one-line user error (status 2) comes back as a ``ChildFailedError`` report
with status 1. This wrapper runs torchrun's own ``main`` with the same arguments and exits with
what the workers meant: 3 with their stop line (``resume=auto`` continues), 128 + signal when no
worker reported a saved checkpoint, or the first failed worker's exit status (its message is
already in the log above). ``scripts/dist_train.sh`` and ``scripts/slurm_train.sh`` launch through it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import List

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun

from ccnet.engine.signals import EXIT_STOPPED, STOP_REPORT_ENV


def main(argv: List[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="ccnet-launch-") as folder:
        report = Path(folder) / "stop.json"
        os.environ[STOP_REPORT_ENV] = str(report)
        try:
            torchrun(argv)
        except SignalException as exc:
            if report.is_file():
                print(json.loads(report.read_text())["message"], file=sys.stderr)
                return EXIT_STOPPED
            print(
                f"stopped by {signal.Signals(exc.sigval).name}; no training process reported a saved checkpoint",
                file=sys.stderr,
            )
            return 128 + int(exc.sigval)
        except ChildFailedError as exc:
            # The first process to fail; the others were stopped by torchrun afterwards (negative: by a signal).
            rank, failure = min(exc.failures.items(), key=lambda item: (item[1].exitcode <= 0, item[1].timestamp))
            print(f"worker rank {rank} exited with status {failure.exitcode}; its message is above", file=sys.stderr)
            return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
