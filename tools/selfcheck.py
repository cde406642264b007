"""Check that this install works on this machine: ``python tools/selfcheck.py``.

    python tools/selfcheck.py                     # the GPU when there is one, else the CPU
    python tools/selfcheck.py --device cpu        # small sizes, seconds (CI runs this)
    python tools/selfcheck.py --device cuda --out outputs/selfcheck/h200.json

Runs the attention implementations against the reference on odd shapes, training steps in every
precision (and torch.compile), SyncBatchNorm on a one-process group, a sliding-window evaluation and
the attention benchmark (ccnet/apps/selfcheck.py lists the sizes), prints a table, writes a JSON report
and exits with status 1 when a check failed. On CUDA it also reports the performance targets. The
report never replaces a file that no earlier self-check wrote (checked before the checks run); a user
mistake (such a file, a bad --device) is one message with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ccnet.apps.selfcheck import format_report, report_output, run_selfcheck, write_report
from ccnet.dist import resolve_device
from ccnet.errors import exit_on_user_error

log = logging.getLogger("selfcheck")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/selfcheck/report.json"),
        help="JSON report (default outputs/selfcheck/report.json; never over a file that no earlier self-check wrote)",
    )
    parser.add_argument("--compile", action="store_true", help="on a CPU, also check torch.compile (slow)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    with exit_on_user_error(log):
        device = resolve_device(args.device, key="--device")
        report_output(args.out)  # before the checks, which take minutes on a GPU
    print(f"selfcheck on {device}")
    report = run_selfcheck(device, compile_on_cpu=args.compile)
    with exit_on_user_error(log):
        write_report(report, device, args.out)
    print(format_report(report))
    failed = report.failed
    print(f"{'FAILED: ' + ', '.join(r.check for r in failed) if failed else 'all checks passed'}; report: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
