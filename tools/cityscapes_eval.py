"""Score a folder of Cityscapes label-id predictions (the test-server format) against gtFine.

    python tools/cityscapes_eval.py --pred submission/ --gt data/cityscapes/gtFine/val [--out metrics.json]

The class-level part of cityscapesScripts' ``evalPixelLevelSemanticLabeling`` (per-class IoU over
all images, mean over the scored classes), computed by ``ccnet.evaluation.cityscapes_eval``; see
docs/evaluation.md for how it compares with the official script. ``--out`` never replaces a file that
no earlier run wrote (recorded in the manifest.txt of its folder; checked before scoring); a user
mistake is one message with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ccnet.apps.eval import format_table, json_safe
from ccnet.errors import exit_on_user_error
from ccnet.evaluation.cityscapes_eval import evaluate_label_id_folders
from ccnet.utils.manifest import OutputFiles

log = logging.getLogger("cityscapes_eval")
TOOL = "cityscapes_eval"  # the name --out is recorded under in the manifest.txt of its folder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pred", required=True, type=Path, help="folder of label-id prediction PNGs")
    parser.add_argument("--gt", required=True, type=Path, help="gtFine/<split> folder, e.g. data/cityscapes/gtFine/val")
    parser.add_argument("--threads", type=int, default=None, help="PNG decoding threads (default: CPU cores, <= 8)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the metrics to this JSON file (never over a file no earlier run wrote)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Print the per-class table, optionally write the metrics as JSON; returns the metrics."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    output = OutputFiles(TOOL, {"--out": args.out})
    with exit_on_user_error(log, FileNotFoundError, ValueError):  # messages name the file and the fix
        output.check()
        results = evaluate_label_id_folders(args.pred, args.gt, threads=args.threads)
        print(format_table(results["classes"], results))
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(json_safe(results), indent=2) + "\n")
            output.record(args.out)
    return results


if __name__ == "__main__":
    main()
