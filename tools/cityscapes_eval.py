"""Score a folder of Cityscapes label-id predictions (the test-server format) against gtFine.

    python tools/cityscapes_eval.py --pred submission/ --gt data/cityscapes/gtFine/val [--out metrics.json]

The class-level part of cityscapesScripts' ``evalPixelLevelSemanticLabeling`` (per-class IoU over
all images, mean over the scored classes), computed by ``ccnet.evaluation.cityscapes_eval``; see
docs/evaluation.md for how it compares with the official script.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ccnet.errors import exit_on_user_error
from ccnet.evaluation.cityscapes_eval import evaluate_label_id_folders
from ccnet.evaluation.runner import format_table, json_safe

log = logging.getLogger("cityscapes_eval")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pred", required=True, type=Path, help="folder of label-id prediction PNGs")
    parser.add_argument("--gt", required=True, type=Path, help="gtFine/<split> folder, e.g. data/cityscapes/gtFine/val")
    parser.add_argument("--threads", type=int, default=None, help="PNG decoding threads (default: CPU cores, <= 8)")
    parser.add_argument("--out", type=Path, default=None, help="write the metrics to this JSON file")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Print the per-class table, optionally write the metrics as JSON; returns the metrics."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    with exit_on_user_error(log, FileNotFoundError, ValueError):  # messages name the file and the fix
        results = evaluate_label_id_folders(args.pred, args.gt, threads=args.threads)
    print(format_table(results["classes"], results))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(json_safe(results), indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
