"""Confusion-matrix segmentation metrics: per-class IoU / accuracy, mIoU, mAcc, aAcc.

:class:`SegMetric` reproduces the class-level score of the official Cityscapes evaluation
(``evalPixelLevelSemanticLabeling``), which CCNet (arXiv 1811.11721) reports, on train-id maps: pixels
whose ground truth is ``ignore_index`` are not scored; a prediction outside ``[0, K)`` is a false negative
of the true class and a false positive of none; ``IoU_c = TP / (TP + FP + FN)``, NaN when that is 0 and
then left out of the mean (docs/evaluation.md#the-metric-and-the-official-cityscapes-evaluation).
"""

from __future__ import annotations

import math
from typing import Dict, List, Union

import torch
import torch.distributed as torch_dist

from ccnet import dist

MetricValue = Union[float, List[float]]


class SegMetric:
    """Accumulates a confusion matrix over images and reports IoU/accuracy metrics.

    Args:
        num_classes: number of evaluated classes ``K``; valid labels are ``0 .. K-1``.
        ignore_index: ground-truth value of pixels that are not evaluated.

    Attributes:
        matrix: (K, K+1) int64 counts on the predictions' device; ``matrix[t, p]`` is the number of valid
            pixels of ground truth ``t`` predicted as ``p``; the last column counts predictions outside ``[0, K)``.

    Example:
        >>> metric = SegMetric(19)
        >>> metric.update(logits.argmax(1), labels)   # per batch
        >>> metric.sync()                            # under torchrun: sum over ranks
        >>> metric.compute()["mIoU"]
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if ignore_index < 0:
            raise ValueError(f"ignore_index must be >= 0 (e.g. 255), got {ignore_index}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64)

    def reset(self) -> None:
        """Zero the matrix (keeps its device)."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one image or a batch of images to the matrix.

        Args:
            pred: predicted class indices (integer tensor), e.g. ``logits.argmax(1)``.
            target: ground-truth class indices with ``ignore_index`` for unlabelled pixels.

        Shape:
            pred, target: (B, H, W) or (H, W), equal shapes.

        Raises:
            TypeError: ``pred`` or ``target`` is not an integer tensor (e.g. logits were passed).
            ValueError: the shapes differ, or ``target`` holds values that are neither a class index nor
                ``ignore_index`` (e.g. Cityscapes label ids instead of train ids).
        """
        for name, t in (("pred", pred), ("target", target)):
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise TypeError(
                    f"SegMetric.update expects integer class-index maps, got {name} of dtype {t.dtype}; "
                    "pass logits.argmax(dim=1) rather than logits"
                )
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        if self.matrix.device != pred.device:
            self.matrix = self.matrix.to(pred.device)
        k = self.num_classes
        if target.dtype == torch.uint8 and pred.dtype == torch.uint8 and k <= 256:
            counts = self._byte_counts(pred, target.to(pred.device))
        else:
            counts = self._counts(pred, target.to(pred.device))
        self.matrix += counts  # (K, K+1)

    def _byte_counts(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(K, K+1) counts of 8-bit maps from their 256x256 joint histogram, folded."""
        index = target.reshape(-1).to(torch.int32).mul_(256).add_(pred.reshape(-1))
        joint = torch.bincount(index, minlength=256 * 256).view(256, 256)  # (target value, pred value)
        return self._fold(joint)

    def _fold(self, joint: torch.Tensor) -> torch.Tensor:
        """(K, K+1) counts from a joint histogram of raw (target value, predicted value) pairs."""
        k = self.num_classes
        joint = joint.clone()
        if 0 <= self.ignore_index < joint.shape[0]:
            joint[self.ignore_index] = 0
        if bool(joint[k:].any()):
            bad = (joint[k:].sum(dim=1) > 0).nonzero().flatten()[:10] + k
            self._raise_bad_target(bad)
        rows = joint[:k]
        return torch.cat([rows[:, :k], rows[:, k:].sum(dim=1, keepdim=True)], dim=1)

    @torch.no_grad()
    def update_from_histogram(self, joint: torch.Tensor) -> None:
        """Add counts given as a joint histogram ``joint[t, p]`` of (target value, predicted value) pairs, e.g.
        ``cv2.calcHist`` of two 8-bit label maps; folded like :meth:`update` (row ``ignore_index`` dropped, rows
        ``>= K`` an error, columns ``>= K`` void predictions).

        Shape:
            joint: (T, P) counts with T, P >= K; float counts are rounded.
        """
        if joint.dim() != 2 or min(joint.shape) < self.num_classes:
            raise ValueError(
                f"joint histogram must be 2-D (target value, predicted value) with both sizes >= "
                f"num_classes={self.num_classes}, got shape {tuple(joint.shape)}"
            )
        if joint.dtype.is_floating_point:
            joint = joint.round()
        joint = joint.to(device=self.matrix.device, dtype=torch.int64)
        self.matrix += self._fold(joint)

    def _counts(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(K, K+1) counts of any integer maps: a joint histogram of (target value, clamped prediction), folded;
        no boolean indexing, so cheap on a CPU too.
        """
        k = self.num_classes
        rows = max(k, self.ignore_index + 1)
        p = pred.reshape(-1).to(torch.int64).clamp(max=k)  # column k: "void" predictions >= K
        if bool(p.min() < 0):
            p = torch.where(p < 0, k, p)  # negative predictions are void too
        index = p.add_(target.reshape(-1).to(torch.int64), alpha=k + 1)  # (K+1)·target + pred, in place
        if bool(index.min() < 0):  # negative targets
            self._raise_bad_target(target)
        joint = torch.bincount(index, minlength=rows * (k + 1))
        if joint.numel() > rows * (k + 1):  # targets beyond the last row
            self._raise_bad_target(target)
        return self._fold(joint.view(rows, k + 1))

    def _raise_bad_target(self, target: torch.Tensor) -> None:
        k = self.num_classes
        values = torch.unique(target)
        bad = values[(values != self.ignore_index) & ((values < 0) | (values >= k))][:10].tolist()
        raise ValueError(
            f"target holds values {bad} that are neither a class index in [0, {k}) nor "
            f"ignore_index={self.ignore_index}; check the label encoding (e.g. train ids vs label ids) "
            "and the dataset's num_classes/ignore_index"
        )

    def sync(self) -> None:
        """Sum the matrix over all distributed ranks in place (a collective; no-op without a process group)."""
        if not dist.is_distributed():
            return
        on_cpu = torch_dist.get_backend() == "gloo"  # gloo reduces on the CPU: move the matrix there and back
        buf = self.matrix.cpu() if on_cpu else self.matrix
        dist.all_reduce_sum(buf)
        self.matrix = buf.to(self.matrix.device)

    def compute(self) -> Dict[str, MetricValue]:
        """Metrics of everything accumulated so far.

        Returns:
            ``"mIoU"``, ``"mAcc"``: means over classes whose value is not NaN; ``"aAcc"``: correct valid pixels /
            valid pixels; ``"IoU"``, ``"Acc"``: per-class lists of length K. Python floats in [0, 1] or NaN:
            ``IoU[c]`` is NaN when ``c`` is in neither ground truth nor prediction, ``Acc[c]`` when it is not in
            the ground truth; a mean is NaN only if every class is.
        """
        m = self.matrix.detach().to("cpu", torch.float64)
        k = self.num_classes
        tp = m.diagonal()  # (K,) diagonal of the square part
        gt = m.sum(dim=1)  # (K,) all pixels of each ground-truth class, void predictions included
        predicted = m[:, :k].sum(dim=0)  # (K,) pixels predicted as each class on valid ground truth
        union = gt + predicted - tp
        nan = torch.full_like(tp, math.nan)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        total = float(m.sum())
        return {
            "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc),
            "aAcc": float(tp.sum()) / total if total > 0 else math.nan,
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
        }


def _nanmean(values: torch.Tensor) -> float:
    valid = ~torch.isnan(values)
    return float(values[valid].mean()) if bool(valid.any()) else math.nan
