"""Check ccnet's Cityscapes metric against the official cityscapesScripts evaluation, and time both.

Writes a folder of Cityscapes-style ground truth (``gtFine/val/<city>/*_gtFine_labelIds.png`` and
``*_gtFine_instanceIds.png``) and label-id predictions, then scores the predictions with

- the official ``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling`` (what its ``main()``
  does: find each prediction with ``getPrediction``, then ``evaluateImgLists``), once as shipped
  (class IoU + instance-level iIoU) and once with ``evalInstLevelScore = False`` (class IoU only);
- ``ccnet.evaluation.cityscapes_eval.evaluate_label_id_folders`` (SegMetric on train ids).

It asserts that the 19 class IoUs and the mean agree to ``--tol`` (an AssertionError, exit status 1,
when they do not) and prints the speed ratios. Needs ``pip install cityscapesscripts``. The generated
files (with ``--root``) and ``--json`` never replace a file that no earlier comparison wrote (recorded in
the manifest.txt of their folder, checked before anything is written); a user mistake (such a file, the
missing package, a bad option) is one message with exit status 2.

    python scripts/compare_cityscapes_eval.py --images 20                 # 2048x1024, like Cityscapes val
    python scripts/compare_cityscapes_eval.py --images 3 --height 128 --width 256 --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ccnet.errors import UserError, exit_on_user_error
from ccnet.utils.manifest import OutputFiles, OutputManifest

log = logging.getLogger("compare_cityscapes_eval")
TOOL = "compare_cityscapes_eval"  # the name its files are recorded under in the manifest.txt of their folder
# label ids whose pixels carry instance ids (id * 1000 + k) in *_gtFine_instanceIds.png (labels.py: hasInstances)
INSTANCE_LABEL_IDS = (24, 25, 26, 27, 28, 29, 30, 31, 32, 33)
CITIES = ("frankfurt", "lindau", "munster")


def folder_files(root: Path, num_images: int) -> List[Tuple[Path, Path, Path]]:
    """``(labelIds, instanceIds, prediction)`` paths of each image :func:`make_folder` writes."""
    files = []
    for i in range(num_images):
        city = CITIES[i % 3]
        stem = f"{city}_{i:06d}_000019"
        gt_dir = root / "gtFine" / "val" / city
        files.append(
            (
                gt_dir / f"{stem}_gtFine_labelIds.png",
                gt_dir / f"{stem}_gtFine_instanceIds.png",
                root / "results" / city / f"{stem}_leftImg8bit.png",
            )
        )
    return files


def make_folder(root: Path, num_images: int, height: int, width: int, seed: int = 0) -> None:
    """Write ground truth and predictions that look like segmentation output: piecewise-constant
    regions (so the PNGs compress like real label maps), predictions that agree on most regions,
    disagree on others, and include void label ids (0..6, 9, ...). Every file is claimed in
    ``root/manifest.txt`` first and recorded as written.

    Raises:
        OutputConflictError: a path holds a file that no earlier comparison wrote; nothing is written.
    """
    files = folder_files(root, num_images)
    manifest = OutputManifest(root, TOOL)
    manifest.claim([path for paths in files for path in paths], key="--root")
    rng = np.random.default_rng(seed)
    cell = max(4, min(height, width) // 32)
    gh, gw = -(-height // cell), -(-width // cell)
    for gt_path, inst_path, pred_path in files:
        # ground truth: every label id 0..33 possible, some images without some classes
        gt = rng.integers(0, 34, size=(gh, gw), dtype=np.uint8)
        gt = np.repeat(np.repeat(gt, cell, 0), cell, 1)[:height, :width]
        # predictions: blocks on a shifted grid replaced by random label ids (40% of them)
        pred = gt.copy()
        off = cell // 2
        noise = rng.integers(0, 34, size=(gh + 1, gw + 1), dtype=np.uint8)
        keep = rng.random((gh + 1, gw + 1)) < 0.6
        block = lambda a, off=off: np.repeat(np.repeat(a, cell, 0), cell, 1)[off : off + height, off : off + width]  # noqa: E731
        pred = np.where(block(keep), pred, block(noise))
        # instance ids: the blocks of each instance class form 2 instances -> about 20 per image, like
        # Cityscapes val (persons, riders, cars, ... per frame)
        inst = gt.astype(np.uint16)
        is_inst = np.isin(gt, INSTANCE_LABEL_IDS)
        halves = (np.arange(width) >= width // 2).astype(np.uint16)[None, :].repeat(height, 0)
        inst[is_inst] = gt[is_inst].astype(np.uint16) * 1000 + halves[is_inst]
        for path, pixels in ((gt_path, gt), (inst_path, inst), (pred_path, pred)):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            manifest.record(path)


def run_official(root: Path, instance_level: bool) -> Dict[str, Any]:
    """The official script's ``main()`` on ``root``: find predictions, evaluate, return its result dict."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    if not hasattr(official.np, "in1d"):
        # NumPy 2.4 removed in1d, which the script's instance-level part calls; isin is the same
        # membership test (the script reshapes the result either way).
        official.np.in1d = lambda a, b, invert=False: np.isin(np.ravel(a), b, invert=invert)

    args = official.args
    args.cityscapesPath = str(root)
    args.groundTruthSearch = str(root / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")
    args.predictionPath, args.predictionWalk = str(root / "results"), None  # where getPrediction searches
    args.evalInstLevelScore = instance_level
    args.JSONOutput = False
    args.quiet = True
    import glob

    gts = sorted(glob.glob(args.groundTruthSearch))
    preds = [official.getPrediction(args, gt) for gt in gts]
    return official.evaluateImgLists(preds, gts, args)


def compare(root: Path, tol: float, threads: int) -> Dict[str, Any]:
    from ccnet.evaluation.cityscapes_eval import evaluate_label_id_folders, match_files, read_label_png

    timings: Dict[str, float] = {}
    # untimed warm-up: imports, first-call allocations and the page cache for both implementations
    evaluate_label_id_folders(root / "results", root / "gtFine" / "val", threads=1)
    run_official(root, instance_level=False)
    t = time.perf_counter()
    ours = evaluate_label_id_folders(root / "results", root / "gtFine" / "val", threads=1)
    timings["ccnet_1_thread"] = time.perf_counter() - t
    t = time.perf_counter()
    evaluate_label_id_folders(root / "results", root / "gtFine" / "val", threads=threads)
    timings[f"ccnet_{threads}_threads"] = time.perf_counter() - t
    # the floor for any folder evaluator: decoding the two PNGs of every pair (one thread)
    pairs = match_files(root / "results", root / "gtFine" / "val")
    t = time.perf_counter()
    for pred_path, gt_path in pairs:
        read_label_png(pred_path), read_label_png(gt_path)
    timings["png_decoding_only_1_thread"] = time.perf_counter() - t
    t = time.perf_counter()
    official_class = run_official(root, instance_level=False)
    timings["official_class_only"] = time.perf_counter() - t
    t = time.perf_counter()
    official_full = run_official(root, instance_level=True)
    timings["official_as_shipped"] = time.perf_counter() - t

    max_diff = 0.0
    for reference in (official_class, official_full):
        for name, iou in zip(ours["classes"], ours["IoU"]):
            ref = reference["classScores"][name]
            if math.isnan(ref) or math.isnan(iou):
                if not (math.isnan(ref) and math.isnan(iou)):
                    raise AssertionError(f"{name}: official {ref} vs ccnet {iou}")
                continue
            max_diff = max(max_diff, abs(ref - iou))
        max_diff = max(max_diff, abs(reference["averageScoreClasses"] - ours["mIoU"]))
    if max_diff > tol:
        raise AssertionError(f"class IoU differs from the official evaluation by {max_diff:.3g} > {tol}")
    return {
        "num_images": ours["num_images"],
        "mIoU_ccnet": ours["mIoU"],
        "mIoU_official": official_full["averageScoreClasses"],
        "max_abs_diff": max_diff,
        "seconds": timings,
        "threads": threads,
        "speedup_vs_official_as_shipped": {
            k: timings["official_as_shipped"] / v for k, v in timings.items() if not k.startswith("official")
        },
        "speedup_vs_official_class_only": {
            k: timings["official_class_only"] / v for k, v in timings.items() if not k.startswith("official")
        },
    }


def official_installed() -> bool:
    """Whether cityscapesScripts (the official evaluation) can be imported."""
    return importlib.util.find_spec("cityscapesscripts") is not None


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20, help="number of image pairs to generate")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--tol", type=float, default=1e-6, help="allowed |IoU difference|")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="also time ccnet with this many PNG decoding threads (default: CPU cores)",
    )
    parser.add_argument("--root", type=Path, default=None, help="keep the generated folder here (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if min(args.images, args.height, args.width, args.threads) < 1:
        parser.error(
            f"--images, --height, --width and --threads must be >= 1, got {args.images}, {args.height}, "
            f"{args.width}, {args.threads}"
        )
    output = OutputFiles(TOOL, {"--json": args.json})
    with exit_on_user_error(log):  # every file is checked before the first is written
        generated = [p for paths in folder_files(args.root, args.images) for p in paths] if args.root else []
        if args.root:
            OutputManifest(args.root, TOOL).check(generated, key="--root")
        output.check(inputs=generated)
        if not official_installed():
            raise UserError("cityscapesscripts is not installed: pip install cityscapesscripts")
        with tempfile.TemporaryDirectory() as tmp:
            root = args.root or Path(tmp)
            make_folder(root, args.images, args.height, args.width)
            result = compare(root, args.tol, args.threads)
    result["size"] = [args.height, args.width]
    print(
        f"{result['num_images']} images of {args.width}x{args.height}: mIoU ccnet {result['mIoU_ccnet']:.10f}, "
        f"official {result['mIoU_official']:.10f}, max |IoU diff| {result['max_abs_diff']:.2e}"
    )
    for name, seconds in result["seconds"].items():
        print(f"  {name:<28} {seconds:8.3f} s  {1000 * seconds / result['num_images']:7.1f} ms/image")
    for name in result["speedup_vs_official_as_shipped"]:
        print(
            f"{name}: {result['speedup_vs_official_as_shipped'][name]:.1f}x the speed of the official script as "
            f"shipped, {result['speedup_vs_official_class_only'][name]:.1f}x that of its class-level-only mode"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        output.record(args.json)
    return result


if __name__ == "__main__":
    main()
