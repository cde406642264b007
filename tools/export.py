"""Export a CCNet checkpoint to ONNX and/or TorchScript and check the result against PyTorch.

    python tools/export.py work_dirs/run/best.pth --onnx ccnet.onnx --torchscript ccnet.pt
    python tools/export.py ckpt.pth --onnx ccnet.onnx --size 1024 2048 --check-size 512 1024

The exported graph maps normalised images (B, 3, H, W) to logits (B, K, H, W); batch, H and W are
dynamic. The maximum absolute difference of the logits between the export (ONNX Runtime / TorchScript)
and the PyTorch model is printed for random inputs at the tracing size and every --check-size; the
exit status is 1 when it exceeds --tolerance. The result is also written as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ccnet.checkpoint import CheckpointError
from ccnet.export import MIN_OPSET, export_checkpoint

log = logging.getLogger("export")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint",
                        help="checkpoint with a stored config (tools/train.py, tools/convert_checkpoint.py)")
    parser.add_argument("--onnx", default=None, help="write an ONNX model here")
    parser.add_argument("--torchscript", default=None, help="write a traced TorchScript module here")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="input size used for tracing (default 512 512)")
    parser.add_argument("--check-size", type=int, nargs=2, action="append", default=[], metavar=("H", "W"),
                        help="also check parity at this size (repeatable; exercises the dynamic axes)")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--static", action="store_true", help="fixed input shape in the ONNX graph")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted max-abs logit difference (default 1e-4)")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        result = export_checkpoint(args.checkpoint, onnx_path=args.onnx, torchscript_path=args.torchscript,
                                   size=args.size, opset=args.opset, dynamic=not args.static,
                                   check_sizes=[tuple(s) for s in args.check_size])
    except (CheckpointError, ValueError, ImportError) as exc:
        log.error("export failed: %s", exc)
        return 1
    status = 0
    for fmt in ("onnx", "torchscript"):
        if fmt in result:
            diff = result[fmt]["max_abs_diff"]
            ok = diff <= args.tolerance
            status = status or int(not ok)
            log.info("%-11s %s  max |logits - PyTorch| = %.3g (%s, tolerance %.1g)", fmt, result[fmt]["path"], diff,
                     "ok" if ok else "TOO LARGE", args.tolerance)
    log.info("input: RGB, (x / 255 - mean) / std with mean=%s std=%s; output: %d-class logits",
             result["mean"], result["std"], result["num_classes"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
