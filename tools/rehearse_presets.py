"""Run the paper's presets end to end at their real sizes on generated data: ``python tools/rehearse_presets.py``.

    python tools/rehearse_presets.py                                   # all three, 2 steps each, CPU
    python tools/rehearse_presets.py cityscapes_r101_official --batch-size 1
    python tools/rehearse_presets.py --device cuda --out-dir outputs/rehearsal/h200

For each preset: full-size images in the dataset's real layout (2048x1024 Cityscapes leftImg8bit +
gtFine labelIds, ADE20K ADEChallengeData2016), then ``tools/train.py experiment=<preset>`` with the
preset's model, crop, augmentation and validation protocol, ``model.weights=null`` and a few steps.
Prints seconds per step, validation seconds and the process's peak memory per preset, writes
``<out-dir>/rehearsal.json`` and exits with status 1 when a preset failed (ccnet/apps/rehearse.py). Every
file it writes is recorded in ``<out-dir>/manifest.txt``: a rerun replaces the earlier rehearsal's files
(its run folders included) and never a file of yours, which is refused before anything runs; a user
mistake is one message with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ccnet.apps.benchmarks.common import machine_info
from ccnet.apps.rehearse import PRESETS, REPO, REPORT, TOOL, as_json, format_rehearsals, preset_outputs, rehearse
from ccnet.dist import resolve_device
from ccnet.errors import exit_on_user_error
from ccnet.utils.manifest import OutputManifest

log = logging.getLogger("rehearse")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "presets", nargs="*", metavar="PRESET", help=f"presets to run (default: all): {', '.join(PRESETS)}"
    )
    parser.add_argument("--iterations", type=int, default=2, help="training steps per preset (default 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: the preset's)")
    parser.add_argument("--device", default="cpu", help="train.device: cpu (default) | cuda | auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per core)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO / "outputs" / "rehearsal",
        help="generated data, run dirs and rehearsal.json (default outputs/rehearsal in the "
        "repository, which git ignores); an earlier rehearsal's files there are replaced, no others",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a preset's run is killed")
    args = parser.parse_args(argv)
    unknown = [p for p in args.presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    args.presets = args.presets or list(PRESETS)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    out_dir = args.out_dir.resolve()  # as ccnet.apps.rehearse records its files
    manifest = OutputManifest(out_dir, TOOL)
    with exit_on_user_error(log):
        # before the runs: their load is not counted
        machine = machine_info(resolve_device(args.device, key="--device"))
        # every preset's files and the report, before the first preset runs
        manifest.check(
            [out_dir / REPORT, *(p for preset in args.presets for p in preset_outputs(preset, out_dir))],
            key="--out-dir",
        )
        results = []
        for preset in args.presets:
            print(f"rehearsing {preset} ...", flush=True)
            results.append(
                rehearse(preset, out_dir, args.iterations, args.batch_size, args.device, args.threads, args.timeout)
            )
            print(f"  {results[-1].status}: {results[-1].detail}", flush=True)
        report = as_json(results, machine)
        (out_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        manifest.record(out_dir / REPORT)
    print(format_rehearsals(results))
    failed = [r.preset for r in results if r.status != "pass"]
    verdict = "FAILED: " + ", ".join(failed) if failed else "all presets ran"
    print(f"{verdict}; report: {out_dir / REPORT}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
