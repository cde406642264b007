"""Convert a published CCNet checkpoint into one ``tools/eval.py`` / ``tools/infer.py`` load directly.

    python tools/convert_checkpoint.py --from official CS_scenes_60000.pth work_dirs/ccnet_official.pth
    python tools/convert_checkpoint.py --from mmseg ccnet_r101-d8_769x769_80k_cityscapes_*.pth \
        work_dirs/ccnet_r101_mmseg_769.pth

Strict: every source key must be consumed and every key of our model filled with a tensor of the
right shape; otherwise nothing is written and the unconsumed / missing / mismatched keys are listed.
DST may not be SRC, and may replace only a checkpoint an earlier conversion wrote (recorded in the
manifest.txt of DST's folder). A user mistake (such a DST, a missing or foreign SRC, a wrong option)
is reported in one message with exit status 2. docs/interop.md lists the published weights and how
to evaluate them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from ccnet.convert import FORMATS, convert_checkpoint
from ccnet.errors import ENVIRONMENT_ERRNOS, EXIT_USER_ERROR, UserError, user_message

log = logging.getLogger("convert_checkpoint")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--from",
        dest="source_format",
        required=True,
        choices=sorted(FORMATS),
        help="layout of SRC: " + "; ".join(f"{k}: {f.description}" for k, f in FORMATS.items()),
    )
    parser.add_argument("src", help="the published checkpoint (.pth)")
    parser.add_argument(
        "dst", help="where to write the converted checkpoint (not over a file that no earlier conversion wrote)"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="expected number of classes (checked against the checkpoint's classifier)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="configs/dataset/NAME.yaml stored with the model (default: cityscapes for 19 classes, ade20k for 150)",
    )
    parser.add_argument(
        "--recurrence",
        type=int,
        default=None,
        help="criss-cross loops R the checkpoint was trained with (default 2; the official "
        "release also published R=1 models)",
    )
    parser.add_argument(
        "--align-corners",
        choices=("auto", "true", "false"),
        default="auto",
        help="align_corners of the final upsampling; auto: official -> true, mmseg -> true for "
        "769x769 recipes (read from the file name), else false",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    align_corners = None if args.align_corners == "auto" else args.align_corners == "true"
    try:
        convert_checkpoint(
            args.src,
            args.dst,
            args.source_format,
            num_classes=args.num_classes,
            dataset=args.dataset,
            align_corners=align_corners,
            recurrence=args.recurrence,
        )
    except (UserError, OSError) as exc:  # ConversionError, CheckpointError, OutputConflictError, ConfigError
        if isinstance(exc, OSError) and (exc.errno not in ENVIRONMENT_ERRNOS or not exc.filename):
            raise  # not a refused write: a bug, with its traceback
        log.error("conversion failed, nothing written: %s", user_message(exc))
        return EXIT_USER_ERROR
    log.info("evaluate with: python tools/eval.py checkpoint=%s dataset.root=PATH/TO/DATA eval.mode=slide", args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
