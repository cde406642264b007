"""Training losses of CCNet (arXiv 1811.11721, Sec. 4.2): pixel-wise cross-entropy on the main output
plus a weighted auxiliary cross-entropy on the layer3 FCN head (weight 0.4), with optional class
weights and online hard example mining (OHEM) on the main output as in the official release
(``OhemCrossEntropy2d``: keep pixels whose ground-truth probability is below a threshold, at least
``min_kept`` of them), and the TPAMI version's category-consistent loss.

Category-consistent loss (CCL, arXiv 1811.11721 v2+, TPAMI 2020).

The head's fused features are projected by a 1×1 convolution (``CCNet.ccl_proj``, built when
``model.ccl=true``) to a 16-channel embedding ``h``; labels are downsampled (nearest) to the feature
size and ignored pixels are left out. With ``μ_c`` the mean embedding of the pixels of class ``c``:

    l_var = 1/C Σ_c 1/N_c Σ_{i∈c} φ_var(‖μ_c − h_i‖)
    φ_var(d) = d − δd + (δd − δv)²   if d > δd
               (d − δv)²             if δv < d ≤ δd
               0                     if d ≤ δv
    l_dis = 1/(C(C−1)) Σ_{a≠b} φ_dis(‖μ_a − μ_b‖),   φ_dis(d) = (2δd − d)² if d ≤ 2δd else 0
    l_reg = 1/C Σ_c ‖μ_c‖
    l_ccl = λ·(α·l_var + β·l_dis + γ·l_reg),   total = l_seg + l_ccl

with δv = 0.5, δd = 1.5, α = β = 1, γ = 0.001 as in the paper, and an overall weight λ (``weight``):
1 here (the paper's formula), 0.1 in ``configs/train.yaml`` (below). Pixels of a class are pulled within δv
of their centre (linearly beyond δd, so outliers do not dominate), centres of different classes are
pushed at least 2δd apart, and the centres stay near the origin.

Choices made here:

* "Reduced with ratio 16" is read as a 16-channel embedding (``model.ccl_channels``, default 16),
  not C/16 channels: the margins δv and δd are absolute distances, so their meaning depends on the
  embedding's dimension, and a fixed width keeps them meaningful for every head width (C/16 would
  be 32 channels for the 512-wide ResNet head and 4 for ``ccnet_tiny``). The CCL is modelled on
  the discriminative loss of De Brabandere et al. (2017), whose δv, δd, α, β, γ it reuses and
  which also works on a low-dimensional embedding.
* The terms are computed per image (classes and centres of that image) and averaged over the
  images of the batch that have at least one labelled pixel; an all-ignore batch gives 0.
* Norms are ``sqrt(max(‖x‖², ε²))``: the plain norm has an infinite/NaN gradient at 0 (a class with
  a single pixel sits exactly on its centre), the clamped one a zero gradient there.
* λ = 0.1 by default in training. Every class counts equally in l_var and l_dis, so each pixel of a
  small class carries a gradient of order 1/(C·N_c), against the cross-entropy's 1/N over all
  pixels: on the quickstart's first batch the CCL's gradient on the head features of foreground
  pixels is 50× the cross-entropy's, and on the attention's γ 50× too. At λ = 1 the network first
  satisfies the CCL with a local foreground/background embedding and its attention never learns to
  carry a class from far away (val mIoU 0.26–0.30 instead of 0.97); at λ = 0.1 the CCL shapes the
  features without taking over (docs/reproducing.md has the measured runs).
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


def safe_norm(x: Tensor, dim: int = -1, eps: float = 1e-6) -> Tensor:
    """Euclidean norm along ``dim`` with a finite (zero) gradient at the origin."""
    return x.pow(2).sum(dim).clamp_min(eps * eps).sqrt()


class CategoryConsistentLoss(nn.Module):
    """``α·l_var + β·l_dis + γ·l_reg`` on pixel embeddings (see the module docstring).

    Args:
        delta_v: variance margin δv: pixels closer than this to their class centre cost nothing.
        delta_d: distance margin δd: class centres further than 2δd apart cost nothing; also where
            φ_var turns linear.
        alpha: weight α of l_var.
        beta: weight β of l_dis.
        gamma: weight γ of l_reg.
        weight: overall weight λ of ``α·l_var + β·l_dis + γ·l_reg`` in ``"loss"``.
        ignore_index: label of pixels that take no part.

    Shape:
        features: (B, D, h, w) embeddings. target: (B, H, W) int64 labels at any resolution (resized
        nearest to (h, w)). Returns ``{"loss", "var", "dis", "reg"}`` scalars (float32); ``"loss"`` is
        the weighted sum, the terms are unweighted.
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
    """The CCL with the hyper-parameters of ``train.ccl`` (``delta_v``, ``delta_d``, ``alpha``,
    ``beta``, ``gamma``, ``weight``; absent keys keep the class defaults, the paper's formula).

    The loss is switched on by the model, not here: ``model.ccl=true`` adds ``ccl_proj`` and the
    ``"ccl_features"`` output, and the training criterion applies this loss whenever that output is
    present.

    Raises:
        ValueError: an unknown key or an invalid value.
    """
    options = dict(options or {})
    known = {"delta_v", "delta_d", "alpha", "beta", "gamma", "weight"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown train.ccl keys {unknown}: expected some of {sorted(known)}")
    return CategoryConsistentLoss(ignore_index=ignore_index, **{k: float(v) for k, v in options.items()})


class SegmentationLoss(nn.Module):
    """Total loss ``main + aux_weight * aux`` from the model's output dict.

    Args:
        ignore_index: label of void pixels.
        aux_weight: weight of the auxiliary head's loss (0.4 in the paper); 0 disables it.
        class_weights: optional per-class weights of the cross-entropy (length ``num_classes``).
        ohem_thresh: OHEM probability threshold for the main loss; ``None`` disables OHEM.
        ohem_min_kept: OHEM's minimum number of kept pixels per process batch.
        ccl: category-consistent loss (:class:`CategoryConsistentLoss`), added with weight 1 (its own α, β,
            γ inside) whenever the model returns ``"ccl_features"`` (``model.ccl=true``).
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
        total = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
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
