"""Training losses of CCNet (arXiv 1811.11721, Sec. 4.2): pixel-wise cross-entropy on the main output
plus a weighted auxiliary cross-entropy on the layer3 FCN head (weight 0.4), with optional class
weights and online hard example mining (OHEM) on the main output as in the official release
(``OhemCrossEntropy2d``: keep pixels whose ground-truth probability is below a threshold, at least
``min_kept`` of them).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ccnet.models.ccl import ccl_from_config


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255,
                  weight: Optional[Tensor] = None) -> Tensor:
    """Mean cross-entropy over the non-ignored pixels (class-weighted mean when ``weight`` is given).

    Unlike ``F.cross_entropy``'s mean, a batch whose pixels are all ignored gives 0 (with a graph),
    not NaN, so an all-void crop does not look like a diverged run.

    Shape:
        logits: (B, K, H, W), target: (B, H, W) int64 with ``ignore_index`` for void pixels.
    """
    loss = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    if weight is None:
        denom = valid.sum().to(loss.dtype)
    else:
        denom = weight[target[valid]].sum()
    return loss / denom.clamp_min(torch.finfo(loss.dtype).tiny)


def ohem_mask(logits: Tensor, target: Tensor, ignore_index: int, thresh: float, min_kept: int) -> Tensor:
    """Pixels OHEM keeps: valid pixels whose softmax probability of the true class is ``<= t`` with
    ``t = max(thresh, p_(k))``, ``p_(k)`` the k-th smallest such probability and
    ``k = min(min_kept, #valid)`` — so at least ``min_kept`` pixels (all, if fewer are valid) survive.
    Counted over the whole (per-process) batch, as in the official release.

    Shape:
        logits: (B, K, H, W), target: (B, H, W). Returns a (B, H, W) bool mask.
    """
    with torch.no_grad():
        valid = target != ignore_index
        prob = logits.float().softmax(dim=1)
        # Gather needs an in-range index at void pixels too; their value is masked out below.
        safe = target.masked_fill(~valid, 0).unsqueeze(1)  # (B, 1, H, W)
        p_true = prob.gather(1, safe).squeeze(1)  # (B, H, W)
        p_valid = p_true[valid]
        if p_valid.numel() == 0:
            return valid
        threshold = torch.as_tensor(thresh, dtype=p_valid.dtype, device=p_valid.device)
        k = min(int(min_kept), p_valid.numel())
        if k > 0:
            threshold = torch.maximum(threshold, p_valid.kthvalue(k).values)
        return valid & (p_true <= threshold)


class SegmentationLoss(nn.Module):
    """Total loss ``main + aux_weight * aux`` from the model's output dict.

    Args:
        ignore_index: label of void pixels.
        aux_weight: weight of the auxiliary head's loss (0.4 in the paper); 0 disables it.
        class_weights: optional per-class weights of the cross-entropy (length ``num_classes``).
        ohem_thresh: OHEM probability threshold for the main loss; ``None`` disables OHEM.
        ohem_min_kept: OHEM's minimum number of kept pixels per process batch.
        ccl: category-consistent loss (:mod:`ccnet.models.ccl`), added with weight 1 (its own α, β,
            γ inside) whenever the model returns ``"ccl_features"`` (``model.ccl=true``).
    """

    def __init__(self, ignore_index: int = 255, aux_weight: float = 0.4,
                 class_weights: Optional[Sequence[float]] = None, ohem_thresh: Optional[float] = None,
                 ohem_min_kept: int = 100_000, ccl: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        self.ccl = ccl
        weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, outputs: Mapping[str, Tensor], target: Tensor) -> Dict[str, Tensor]:
        """Compute the loss terms.

        Args:
            outputs: the model's dict: ``"out"`` (B, K, H, W) and optionally ``"aux"`` (B, K, H, W).
            target: (B, H, W) int64 labels.

        Returns:
            ``{"loss": total, "main": ..., "aux": ..., "ccl": ...}`` (``"aux"`` only when the model
            returned it and ``aux_weight > 0``, ``"ccl"`` only when it returned ``"ccl_features"``,
            with its unweighted terms ``"ccl_var"``, ``"ccl_dis"``, ``"ccl_reg"`` for logging);
            ``"loss"`` is the weighted sum that is back-propagated.
        """
        main_target = target
        if self.ohem_thresh is not None:
            keep = ohem_mask(outputs["out"], target, self.ignore_index, self.ohem_thresh, self.ohem_min_kept)
            main_target = target.masked_fill(~keep, self.ignore_index)
        terms = {"main": cross_entropy(outputs["out"], main_target, self.ignore_index, self.class_weights)}
        weights = {"main": 1.0}
        if "aux" in outputs and self.aux_weight > 0:
            terms["aux"] = cross_entropy(outputs["aux"], target, self.ignore_index, self.class_weights)
            weights["aux"] = self.aux_weight
        parts: Dict[str, Tensor] = {}
        if self.ccl is not None and "ccl_features" in outputs:
            ccl = self.ccl(outputs["ccl_features"], target)
            terms["ccl"] = ccl["loss"]
            weights["ccl"] = 1.0
            parts = {f"ccl_{name}": ccl[name].detach() for name in ("var", "dis", "reg")}
        total = sum(weights[name] * value for name, value in terms.items())
        return {"loss": total, **terms, **parts}


def build_criterion(train_cfg: Mapping[str, Any], num_classes: int, ignore_index: int = 255) -> SegmentationLoss:
    """The training criterion from ``cfg.train``: ``aux_weight``, ``class_weights``, ``ohem``, and the
    optional ``ccl`` hyper-parameters of the category-consistent loss (applied with ``model.ccl=true``).

    Args:
        train_cfg: the ``train`` config node.
        num_classes: number of classes (to check ``class_weights``).
        ignore_index: label of void pixels (``dataset.ignore_index``).

    Raises:
        ValueError: ``class_weights`` has the wrong length or OHEM settings are out of range.
    """
    class_weights = train_cfg.get("class_weights")
    if class_weights is not None:
        class_weights = [float(w) for w in class_weights]
        if len(class_weights) != num_classes:
            raise ValueError(f"train.class_weights has {len(class_weights)} entries, the dataset has "
                             f"{num_classes} classes: give one weight per class or null")
    ohem = train_cfg.get("ohem") or {}
    thresh = None
    if ohem.get("enabled", False):
        thresh = float(ohem.get("thresh", 0.7))
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"train.ohem.thresh must be in (0, 1], got {thresh}")
    return SegmentationLoss(ignore_index=ignore_index, aux_weight=float(train_cfg.get("aux_weight", 0.4)),
                            class_weights=class_weights, ohem_thresh=thresh,
                            ohem_min_kept=int(ohem.get("min_kept", 100_000)),
                            ccl=ccl_from_config(train_cfg.get("ccl"), ignore_index))
