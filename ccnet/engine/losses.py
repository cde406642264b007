"""Training losses of CCNet (arXiv 1811.11721, Sec. 4.2): cross-entropy on the main output plus a weighted
auxiliary cross-entropy on the layer3 FCN head (0.4), optional class weights and OHEM as in the official
release (``OhemCrossEntropy2d``), and the TPAMI version's category-consistent loss (CCL).

CCL on pixel embeddings ``h_i`` (``CCNet.ccl_proj``), labels resized nearest to their size and ignored
pixels left out, ``μ_c`` the mean embedding of class ``c`` in the image:

    l_var = 1/C Σ_c 1/N_c Σ_{i∈c} φ_var(‖μ_c − h_i‖)
    φ_var(d) = d − δd + (δd − δv)²   if d > δd
               (d − δv)²             if δv < d ≤ δd
               0                     if d ≤ δv
    l_dis = 1/(C(C−1)) Σ_{a≠b} φ_dis(‖μ_a − μ_b‖),   φ_dis(d) = (2δd − d)² if d ≤ 2δd else 0
    l_reg = 1/C Σ_c ‖μ_c‖
    l_ccl = λ·(α·l_var + β·l_dis + γ·l_reg),   total = l_seg + l_ccl

δv = 0.5, δd = 1.5, α = β = 1, γ = 0.001 as in the paper; λ (``weight``) is 1 here, 0.1 in
``configs/train.yaml``. Terms are computed per image and averaged over the images with labelled pixels
(an all-ignore batch gives 0); norms are ``sqrt(max(‖x‖², ε²))``, finite-gradient at 0. Why a 16-channel
embedding and λ = 0.1: docs/training.md#category-consistent-loss-tpami, docs/reproducing.md.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ccnet.errors import ConfigError


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255, weight: Optional[Tensor] = None) -> Tensor:
    """Mean cross-entropy over the non-ignored pixels (class-weighted mean when ``weight`` is given).

    An all-ignored batch gives 0 with a graph, not ``F.cross_entropy``'s NaN.

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
    """Pixels OHEM keeps, counted over the whole per-process batch as in the official release.

    Keeps the valid pixels whose true-class probability is ``<= max(thresh, p_(k))``, ``p_(k)`` the k-th
    smallest such probability, ``k = min(min_kept, #valid)``: at least ``min_kept`` pixels (all, if fewer).

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


def safe_norm(x: Tensor, dim: int = -1, eps: float = 1e-6) -> Tensor:
    """Euclidean norm along ``dim`` with a finite (zero) gradient at the origin."""
    return x.pow(2).sum(dim).clamp_min(eps * eps).sqrt()


class CategoryConsistentLoss(nn.Module):
    """``λ·(α·l_var + β·l_dis + γ·l_reg)`` on pixel embeddings (the module docstring has the terms).

    Args:
        delta_v: variance margin δv: pixels closer than this to their class centre cost nothing.
        delta_d: distance margin δd: centres further than 2δd apart cost nothing; where φ_var turns linear.
        alpha: weight α of l_var.
        beta: weight β of l_dis.
        gamma: weight γ of l_reg.
        weight: overall weight λ.
        ignore_index: label of pixels that take no part.

    Shape:
        features: (B, D, h, w) embeddings. target: (B, H, W) int64 labels at any resolution. Returns
        ``{"loss", "var", "dis", "reg"}`` float32 scalars: ``"loss"`` weighted, the terms unweighted.

    Raises:
        ConfigError: ``not 0 <= delta_v < delta_d`` or a negative weight.
    """

    def __init__(
        self,
        delta_v: float = 0.5,
        delta_d: float = 1.5,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.001,
        weight: float = 1.0,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if not 0 <= delta_v < delta_d:
            raise ConfigError(f"CCL margins need 0 <= delta_v < delta_d, got delta_v={delta_v}, delta_d={delta_d}")
        if min(alpha, beta, gamma, weight) < 0:
            raise ConfigError(
                f"CCL weights must be >= 0, got alpha={alpha}, beta={beta}, gamma={gamma}, weight={weight}"
            )
        self.delta_v, self.delta_d = float(delta_v), float(delta_d)
        self.alpha, self.beta, self.gamma, self.weight = float(alpha), float(beta), float(gamma), float(weight)
        self.ignore_index = ignore_index

    def _phi_var(self, d: Tensor) -> Tensor:
        dv, dd = self.delta_v, self.delta_d
        return torch.where(d > dd, d - dd + (dd - dv) ** 2, torch.where(d > dv, (d - dv) ** 2, torch.zeros_like(d)))

    def _image_terms(self, feats: Tensor, labels: Tensor) -> Tensor:
        """(var, dis, reg) of one image. feats: (N, D) embeddings of its N labelled pixels, labels: (N,)."""
        classes, inverse = torch.unique(labels, return_inverse=True)  # (C,), (N,)
        num = classes.numel()
        counts = torch.bincount(inverse, minlength=num).to(feats.dtype)  # (C,)
        centres = feats.new_zeros(num, feats.shape[1]).index_add_(0, inverse, feats) / counts[:, None]  # (C, D)
        phi = self._phi_var(safe_norm(centres[inverse] - feats))  # (N,)
        var = (feats.new_zeros(num).index_add_(0, inverse, phi) / counts).mean()
        if num > 1:
            dist = safe_norm(centres[:, None, :] - centres[None, :, :])  # (C, C)
            off_diagonal = ~torch.eye(num, dtype=torch.bool, device=feats.device)
            dis = F.relu(2 * self.delta_d - dist[off_diagonal]).pow(2).mean()
        else:
            dis = feats.new_zeros(())
        reg = safe_norm(centres).mean()
        return torch.stack([var, dis, reg])

    def forward(self, features: Tensor, target: Tensor) -> Dict[str, Tensor]:
        feats = features.float()
        labels = F.interpolate(target[:, None].float(), size=feats.shape[-2:], mode="nearest")[:, 0].long()
        per_image = []
        for f, lab in zip(feats, labels):
            valid = (lab != self.ignore_index).flatten()  # (h*w,)
            if valid.any():
                per_image.append(self._image_terms(f.flatten(1).t()[valid], lab.flatten()[valid]))
        if per_image:
            var, dis, reg = torch.stack(per_image).mean(0)
        else:  # keep the graph (zero gradient) so every DDP rank runs the same backward
            var = dis = reg = feats.sum() * 0.0
        loss = self.weight * (self.alpha * var + self.beta * dis + self.gamma * reg)
        return {"loss": loss, "var": var, "dis": dis, "reg": reg}


def ccl_from_config(options: Optional[Mapping[str, Any]] = None, ignore_index: int = 255) -> CategoryConsistentLoss:
    """The CCL with the hyper-parameters of ``train.ccl``; absent keys keep the class defaults (the paper's).

    Applied whenever the model returns ``"ccl_features"`` (``model.ccl=true``), not switched on here.

    Raises:
        ConfigError: an unknown key or an invalid value.
    """
    options = dict(options or {})
    known = {"delta_v", "delta_d", "alpha", "beta", "gamma", "weight"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown train.ccl keys {unknown}: expected some of {sorted(known)}")
    return CategoryConsistentLoss(ignore_index=ignore_index, **{k: float(v) for k, v in options.items()})


class SegmentationLoss(nn.Module):
    """Total loss ``main + aux_weight * aux (+ ccl)`` from the model's output dict.

    Args:
        ignore_index: label of void pixels.
        aux_weight: weight of the auxiliary head's loss (0.4 in the paper); 0 disables it.
        class_weights: optional per-class weights of the cross-entropy (length ``num_classes``).
        ohem_thresh: OHEM probability threshold for the main loss; ``None`` disables OHEM.
        ohem_min_kept: OHEM's minimum number of kept pixels per process batch.
        ccl: category-consistent loss, added with weight 1 whenever the model returns ``"ccl_features"``.
    """

    class_weights: Optional[Tensor]  # a buffer (or None): the cross-entropy's per-class weights

    def __init__(
        self,
        ignore_index: int = 255,
        aux_weight: float = 0.4,
        class_weights: Optional[Sequence[float]] = None,
        ohem_thresh: Optional[float] = None,
        ohem_min_kept: int = 100_000,
        ccl: Optional[nn.Module] = None,
    ) -> None:
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
            outputs: the model's dict: ``"out"`` (B, K, H, W), optionally ``"aux"`` and ``"ccl_features"``.
            target: (B, H, W) int64 labels.

        Returns:
            ``{"loss", "main"}``, ``"aux"`` when returned by the model and ``aux_weight > 0``, ``"ccl"`` and its
            unweighted ``"ccl_var"``, ``"ccl_dis"``, ``"ccl_reg"`` (detached, for logging) when the model returned
            ``"ccl_features"``; ``"loss"`` is the weighted sum that is back-propagated.
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
        total = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
        return {"loss": total, **terms, **parts}


def build_criterion(train_cfg: Mapping[str, Any], num_classes: int, ignore_index: int = 255) -> SegmentationLoss:
    """The training criterion from the ``train`` config node (``aux_weight``, ``class_weights``, ``ohem``, ``ccl``).

    Raises:
        ConfigError: ``class_weights`` does not have ``num_classes`` entries, OHEM or CCL settings are invalid.
    """
    class_weights = train_cfg.get("class_weights")
    if class_weights is not None:
        class_weights = [float(w) for w in class_weights]
        if len(class_weights) != num_classes:
            raise ConfigError(
                f"train.class_weights has {len(class_weights)} entries, the dataset has "
                f"{num_classes} classes: give one weight per class or null"
            )
    ohem = train_cfg.get("ohem") or {}
    thresh = None
    if ohem.get("enabled", False):
        thresh = float(ohem.get("thresh", 0.7))
        if not 0.0 < thresh <= 1.0:
            raise ConfigError(f"train.ohem.thresh must be in (0, 1], got {thresh}")
    return SegmentationLoss(
        ignore_index=ignore_index,
        aux_weight=float(train_cfg.get("aux_weight", 0.4)),
        class_weights=class_weights,
        ohem_thresh=thresh,
        ohem_min_kept=int(ohem.get("min_kept", 100_000)),
        ccl=ccl_from_config(train_cfg.get("ccl"), ignore_index),
    )
