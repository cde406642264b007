"""Evaluate a segmentation model on a dataset, for the trainer's validation and ``tools/eval.py``: each rank
infers the indices ``rank, rank + world, …`` (no padding) at full resolution with
:func:`ccnet.evaluation.inference.predict_logits`, and the confusion matrices are summed, so the result
equals a single-process run.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ccnet import dist
from ccnet.data.base import SegmentationData
from ccnet.evaluation.inference import InferenceSettings, predict_logits
from ccnet.evaluation.metrics import SegMetric

log = logging.getLogger(__name__)

#: ``on_prediction(index, image, label, pred)`` — see :func:`evaluate`.
PredictionCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


class EvaluationFailedElsewhere(RuntimeError):
    """Another rank's evaluation raised; this rank stops too instead of waiting for it."""


def shard_indices(length: int, rank: int, world_size: int) -> range:
    """Indices of a dataset of ``length`` handled by ``rank``: every ``world_size``-th from ``rank`` (a partition)."""
    return range(rank, length, world_size)


def _sum_over_ranks(value: int, device: torch.device) -> int:
    # gloo reduces CPU tensors, NCCL device tensors.
    on_cpu = not dist.is_distributed() or torch_dist.get_backend() == "gloo"
    t = torch.tensor([value], dtype=torch.int64, device="cpu" if on_cpu else device)
    return int(dist.all_reduce_sum(t).item())


def evaluate(
    model: nn.Module,
    dataset: SegmentationData,
    eval_cfg: Mapping[str, Any],
    device: Union[str, torch.device],
    amp: Optional[str] = None,
    on_prediction: Optional[PredictionCallback] = None,
    progress: bool = True,
    desc: str = "eval",
) -> Dict[str, Any]:
    """Run ``model`` over ``dataset`` (this rank's shard) and return metrics merged over all ranks.

    Every rank must call it (a collective). The model runs in eval mode (its mode is restored afterwards) and
    unwrapped from ``DistributedDataParallel``, whose forward would synchronise buffers across uneven shards.

    Args:
        model: returns ``{"out": (B, K, H, W) logits}``; already on ``device``.
        dataset: items ``(image (3, H, W) float normalised, label (H, W) int64)``; attributes ``num_classes``,
            ``ignore_index`` and optionally ``has_labels`` (False: predictions only, no metrics).
        eval_cfg: the ``eval`` config section: the keys of
            :class:`~ccnet.evaluation.inference.InferenceSettings` plus ``num_workers`` (default 2).
        device: where inference and the confusion matrix live.
        amp: ``"none" | "bf16" | "fp16"``; overrides ``eval_cfg.amp`` when given.
        on_prediction: called on this rank per sample as ``on_prediction(index, image, label, pred)``: the
            dataset index, the image and label as the dataset returned them and the (H, W) int64 prediction,
            all on the CPU. A sample arrives only on the rank whose shard holds it.
        progress: show a tqdm bar (rank 0 only).
        desc: tqdm label.

    Returns:
        ``num_images`` (over all ranks) and, with labels, the :meth:`SegMetric.compute` entries and
        ``confusion``: the merged (K, K) int64 numpy array, ``confusion[t, p]`` = valid pixels of ground truth
        ``t`` predicted as ``p``.

    Raises:
        Exception: what this rank's shard raised (an unreadable file, a bad label); the other ranks then raise
            :class:`EvaluationFailedElsewhere` instead of waiting.
    """
    device = torch.device(device)
    settings = InferenceSettings.from_config(eval_cfg, amp=amp)
    if isinstance(model, DistributedDataParallel):
        model = model.module
    has_labels = bool(getattr(dataset, "has_labels", True))
    metric = SegMetric(dataset.num_classes, dataset.ignore_index)
    metric.matrix = metric.matrix.to(device)

    indices = shard_indices(len(dataset), dist.get_rank(), dist.get_world_size())
    loader: DataLoader = DataLoader(
        Subset(dataset, indices),  # type: ignore[arg-type]  # a SegmentationData is a map-style Dataset
        batch_size=1,  # full-resolution images of different sizes cannot be stacked
        shuffle=False,
        num_workers=int(eval_cfg.get("num_workers", 2)),
        pin_memory=device.type == "cuda",
    )
    was_training = model.training
    model.eval()
    count = 0
    failure: Optional[Exception] = None
    try:
        bar = tqdm(
            loader,
            desc=desc,
            total=len(indices),
            dynamic_ncols=True,
            disable=not (progress and dist.is_main_process() and sys.stderr.isatty()),
        )
        for (image, label), index in zip(bar, indices):
            logits = predict_logits(model, image.to(device, non_blocking=True), settings)  # (1, K, H, W)
            pred = logits.argmax(dim=1)  # (1, H, W)
            if has_labels:
                metric.update(pred, label.to(device, non_blocking=True))
            if on_prediction is not None:
                on_prediction(index, image[0], label[0], pred[0].cpu())
            count += 1
    except Exception as exc:  # shared below, so that no other rank waits for this one in sync()
        failure = exc
    finally:
        model.train(was_training)
    if dist.get_world_size() > 1 and _sum_over_ranks(int(failure is not None), device) and failure is None:
        raise EvaluationFailedElsewhere(
            f"rank {dist.get_rank()}: the evaluation failed on another process; that process's log names the cause"
        )
    if failure is not None:
        raise failure

    metric.sync()
    results: Dict[str, Any] = {"num_images": _sum_over_ranks(count, device)}
    if has_labels:
        results.update(metric.compute())
        # The (K, K+1) matrix's last column counts predictions outside [0, K); an argmax over K logits
        # never makes one, so the column is always zero here and the square part is the whole matrix.
        results["confusion"] = metric.matrix[:, : metric.num_classes].cpu().numpy()  # (K, K) int64
    return results
