"""Export a CCNet checkpoint as a torch.export program (.pt2) and/or ONNX and check both against PyTorch.

    python tools/export.py work_dirs/run/best.pth --pt2 outputs/export/ccnet.pt2 --onnx outputs/export/ccnet.onnx
    python tools/export.py ckpt.pth --onnx outputs/export/ccnet.onnx --size 1024 2048 --check-size 512 1024
    python tools/export.py ckpt.pth     # both, as outputs/export/ckpt.pt2 and outputs/export/ckpt.onnx

The exports map normalised images (B, 3, H, W) to logits (B, K, H, W); batch, H and W are dynamic
(H, W >= 9). ONNX is written by the torch.export-based exporter, or by the TorchScript-based one
when that fails (the reason is printed and stored in --out). The maximum absolute difference of the
logits between each export (torch.export.load / ONNX Runtime) and the PyTorch model is printed for
random inputs at the export size, every --check-size and an odd size (301 x 517); the exit status is 1
when it exceeds --tolerance times the largest logit (at least 1), and 2 for a user mistake (a missing
or damaged checkpoint, NaN weights, a bad option, an output path that is the checkpoint or another
output, or a file no earlier export wrote: each export is recorded in the manifest.txt of its folder),
reported in one line before anything is exported. The results and how to load the files go to stdout,
progress to stderr; the result is also written as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ccnet.apps.export import DEFAULT_OPSET, MIN_OPSET, TOOL, export_checkpoint
from ccnet.errors import EXIT_USER_ERROR, UserError
from ccnet.utils.manifest import OutputFiles

log = logging.getLogger("export")

DEFAULT_DIR = Path("outputs") / "export"  # relative to the working directory; /outputs/ is git-ignored


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "checkpoint", help="checkpoint with a stored config (tools/train.py, tools/convert_checkpoint.py)"
    )
    parser.add_argument("--pt2", default=None, help="write a torch.export program (.pt2) here")
    parser.add_argument("--onnx", default=None, help="write an ONNX model here")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(512, 512),
        metavar=("H", "W"),
        help="input size of the export example (default 512 512; H, W >= 9)",
    )
    parser.add_argument(
        "--check-size",
        type=int,
        nargs=2,
        action="append",
        default=[],
        metavar=("H", "W"),
        help="also check parity at this size (repeatable; exercises the dynamic axes)",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}, >= {MIN_OPSET})"
    )
    parser.add_argument(
        "--static", action="store_true", help="fixed input shape in the ONNX graph (the .pt2 stays dynamic)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest accepted logit difference, relative to the largest logit (at least 1) (default 1e-4)",
    )
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.pt2 is None and args.onnx is None:
        stem = Path(args.checkpoint).stem
        args.pt2, args.onnx = str(DEFAULT_DIR / f"{stem}.pt2"), str(DEFAULT_DIR / f"{stem}.onnx")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("onnxscript", "onnx_ir"):  # the ONNX exporter's graph passes log every rewrite at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    args = parse_args(argv)
    outputs = OutputFiles(TOOL, {"--pt2": args.pt2, "--onnx": args.onnx, "--out": args.out})
    try:
        result = export_checkpoint(
            args.checkpoint,
            onnx_path=args.onnx,
            pt2_path=args.pt2,
            size=args.size,
            opset=args.opset,
            dynamic=not args.static,
            check_sizes=[tuple(s) for s in args.check_size],
            outputs=outputs,
        )
    except (UserError, ValueError, ImportError) as exc:
        log.error("export failed: %s", exc)
        return EXIT_USER_ERROR
    status = 0
    for fmt in ("pt2", "onnx"):
        if fmt not in result:
            continue
        entry = result[fmt]
        ok = entry["relative_diff"] <= args.tolerance
        status = status or int(not ok)
        how = ""
        if fmt == "onnx":
            how = f" [{entry['exporter']} exporter, opset {entry['opset']}" + (
                f"; fallback: {entry['fallback_reason']}]" if entry["fallback_reason"] else "]"
            )
        print(
            f"{fmt:<4} {entry['path']}{how}  max |logits - PyTorch| = {entry['max_abs_diff']:.3g} "
            f"({entry['relative_diff']:.2g} of the largest logit, {entry['max_abs_logit']:.3g}; "
            f"{'ok' if ok else 'TOO LARGE'}, tolerance {args.tolerance:.1g})"
        )
    print(
        f"input: RGB, (x / 255 - mean) / std with mean={result['mean']} std={result['std']}; output: "
        f"{result['num_classes']}-class logits, (B, 3, H, W) -> (B, K, H, W)"
    )
    written = [result[fmt]["path"] for fmt in ("pt2", "onnx") if fmt in result]
    if written:
        print(
            "metadata (classes, palette, mean, std): the .pt2's extra file meta.json, the ONNX model's "
            "metadata_props. In Python:\n"
            "  from ccnet.apps.export import load_exported\n"
            f"  run, meta = load_exported({str(written[0])!r})  # a .pt2 (torch.export) or .onnx (ONNX Runtime)\n"
            "  logits = run(images)  # images: (B, 3, H, W) float32, normalised as above"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        outputs.record(args.out)
    return status


if __name__ == "__main__":
    sys.exit(main())
