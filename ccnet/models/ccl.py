"""Category-consistent loss (CCL) of the TPAMI version of CCNet (arXiv 1811.11721 v2+, TPAMI 2020).

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
  features without taking over (see the README for the measured runs).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


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

    def __init__(self, delta_v: float = 0.5, delta_d: float = 1.5, alpha: float = 1.0, beta: float = 1.0,
                 gamma: float = 0.001, weight: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
        if not 0 <= delta_v < delta_d:
            raise ValueError(f"CCL margins need 0 <= delta_v < delta_d, got delta_v={delta_v}, delta_d={delta_d}")
        if min(alpha, beta, gamma, weight) < 0:
            raise ValueError(f"CCL weights must be >= 0, got alpha={alpha}, beta={beta}, gamma={gamma}, "
                             f"weight={weight}")
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
        raise ValueError(f"unknown train.ccl keys {unknown}: expected some of {sorted(known)}")
    return CategoryConsistentLoss(ignore_index=ignore_index, **{k: float(v) for k, v in options.items()})
