"""Score a folder of Cityscapes label-id predictions (the test-server format) with :class:`SegMetric`, as
cityscapesScripts' ``evalPixelLevelSemanticLabeling`` scores classes (CCNet's metric, arXiv 1811.11721).

Ground truth and predictions are mapped to train ids (``ignoreInEval`` ids -> 255: unscored in the
ground truth, void in a prediction); iIoU is not computed. For ``<city>_<seq>_<frame>_gtFine_labelIds.png``
the prediction is the one file ``<city>_<seq>_<frame>*.png`` under the prediction folder
(docs/evaluation.md#the-metric-and-the-official-cityscapes-evaluation). Command line:
``python tools/cityscapes_eval.py --pred results/ --gt data/cityscapes/gtFine/val``.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from ccnet.evaluation.metrics import SegMetric

log = logging.getLogger(__name__)

GT_SUFFIX = "_gtFine_labelIds.png"


def _frame_key(name: str) -> str:
    """``<city>_<seq>_<frame>`` of a Cityscapes file name."""
    return "_".join(name.split("_")[:3])


def match_files(pred_root: Union[str, Path], gt_root: Union[str, Path]) -> List[Tuple[Path, Path]]:
    """Pair every ground-truth label-id file under ``gt_root`` with its prediction under ``pred_root``.

    Raises:
        FileNotFoundError: no ground truth, or a ground-truth frame without a prediction.
        ValueError: several predictions for one frame.
    """
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    gts = sorted(gt_root.rglob(f"*{GT_SUFFIX}"))
    if not gts:
        raise FileNotFoundError(f"no *{GT_SUFFIX} files under {gt_root}; pass the gtFine/<split> folder")
    preds: Dict[str, Path] = {}
    for p in sorted(pred_root.rglob("*.png")):
        key = _frame_key(p.name)
        if key in preds:
            raise ValueError(f"several predictions for {key}: {preds[key]} and {p}; keep one per frame")
        preds[key] = p
    pairs = []
    for gt in gts:
        key = _frame_key(gt.name)
        if key not in preds:
            raise FileNotFoundError(f"no prediction {key}*.png under {pred_root} for ground truth {gt}")
        pairs.append((preds[key], gt))
    return pairs


def read_label_png(path: Path) -> np.ndarray:
    """Decode a single-channel 8-bit label PNG with OpenCV (faster than PIL on large label maps).

    Raises:
        ValueError: unreadable file or not single-channel 8-bit.
    """
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"cannot read label image {path}: missing, corrupt or not an image")
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(
            f"{path} has shape {arr.shape} and dtype {arr.dtype}; expected a single-channel 8-bit "
            "PNG of Cityscapes label ids"
        )
    return arr


def evaluate_label_id_folders(
    pred_root: Union[str, Path],
    gt_root: Union[str, Path],
    threads: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
) -> Dict[str, Any]:
    """Class-level Cityscapes metrics of label-id predictions.

    Args:
        pred_root: folder (searched recursively) of ``<city>_<seq>_<frame>*.png`` label-id predictions.
        gt_root: ``gtFine/<split>`` folder with ``*_gtFine_labelIds.png`` files.
        threads: worker threads, each decoding and counting its share (OpenCV releases the GIL); None = one
            per CPU core, at most 8.
        device: where the confusion matrix is kept.

    Returns:
        :meth:`SegMetric.compute` entries (``IoU``/``Acc`` in train-id order) plus ``classes`` and ``num_images``.
    """
    from ccnet.data.cityscapes import CLASSES, IGNORE_INDEX, label_ids_to_train_ids

    # (256,) label id -> train id (255 for ignoreInEval ids and for values that are no label id)
    lut = torch.from_numpy(label_ids_to_train_ids(np.arange(256, dtype=np.uint8)).astype(np.int64))
    pairs = match_files(pred_root, gt_root)
    threads = max(1, min(threads or min(8, os.cpu_count() or 1), len(pairs)))

    def count(share: Sequence[Tuple[Path, Path]]) -> torch.Tensor:
        # Per image: the 256x256 joint histogram of raw label ids (OpenCV's calcHist, one pass, GIL
        # released), folded into train ids; the per-pixel work is the same counting as SegMetric.update.
        metric = SegMetric(len(CLASSES), IGNORE_INDEX)
        # float64 sums of calcHist's float32 bins are exact integers (< 2**53); NumPy, not torch, for
        # these small per-image additions, which torch would hand to its intra-op thread pool.
        raw = np.zeros((256, 256), dtype=np.float64)
        for pred_path, gt_path in share:
            pred, gt = read_label_png(pred_path), read_label_png(gt_path)
            if pred.shape != gt.shape:
                raise ValueError(
                    f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but ground truth "
                    f"{gt_path} is {gt.shape[1]}x{gt.shape[0]} (WxH); predictions must be at full "
                    "resolution"
                )
            # float32 bins are exact up to 2**24 pixels per (gt, pred) pair, i.e. for any one image
            hist = cv2.calcHist([gt, pred], [0, 1], None, [256, 256], [0, 256, 0, 256])
            raw += hist
        counts = torch.from_numpy(raw).round().to(torch.int64)
        joint = torch.zeros(256, 256, dtype=torch.int64).index_add_(0, lut, counts)  # rows -> train ids
        joint = torch.zeros_like(joint).index_add_(1, lut, joint)  # columns -> train ids
        metric.update_from_histogram(joint.to(device))
        return metric.matrix

    metric = SegMetric(len(CLASSES), IGNORE_INDEX)
    if threads == 1:
        metric.matrix = count(pairs)
    else:
        with ThreadPoolExecutor(threads) as pool:
            metric.matrix = torch.stack(list(pool.map(count, [pairs[i::threads] for i in range(threads)]))).sum(0)
    return {**metric.compute(), "classes": list(CLASSES), "num_images": len(pairs)}
