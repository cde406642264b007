"""The readable definition of criss-cross attention (arXiv 1811.11721, Eq. 1–2), plain autograd.

For queries Q, keys K (C' channels) and values V (C channels), every position u = (h, w) attends to
the H + W − 1 positions Ω_u of its column and row, u itself once::

    d_{u,i} = Q_u · K_{Ω_u,i}        A_u = softmax_i(d_{u,i})        out_u = Σ_i A_{u,i} V_{Ω_u,i}

The column branch masks its diagonal (i == h), so u is counted through the row branch only.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ccnet.models.cca.checks import check_inputs


def criss_cross_attention_weights(q: Tensor, k: Tensor) -> Tuple[Tensor, Tensor]:
    """Attention of every position over its column and its row, normalised jointly.

    Returns:
        ``(attn_h, attn_w)`` in float32 (float64 for float64 inputs): ``attn_h[b, h, w, i]`` is the weight of
        (i, w) in u's column, ``attn_w[b, h, w, j]`` that of (h, j) in u's row; ``attn_h[..., h, w, h]`` is 0
        (the masked diagonal), and for every u the two sum to 1.

    Shape:
        q, k: (B, C', H, W). attn_h: (B, H, W, H). attn_w: (B, H, W, W).
    """
    _, _, height, _ = q.shape
    acc_dtype = torch.promote_types(q.dtype, torch.float32)  # fp32 for half inputs, fp64 stays fp64
    # (B, H, W, H): energy_h[b, h, w, i] = <q[b, :, h, w], k[b, :, i, w]>
    energy_h = torch.einsum("bchw,bciw->bhwi", q, k).to(acc_dtype)
    # (B, H, W, W): energy_w[b, h, w, j] = <q[b, :, h, w], k[b, :, h, j]>
    energy_w = torch.einsum("bchw,bchj->bhwj", q, k).to(acc_dtype)
    # An index comparison rather than a boolean torch.eye: ONNX Runtime has no EyeLike kernel for bool,
    # and Range + Equal keeps H dynamic in an exported graph.
    idx = torch.arange(height, device=q.device)
    diagonal = (idx[:, None] == idx[None, :]).unsqueeze(1)  # (H, 1, H) over (h, w, i)
    energy_h = energy_h.masked_fill(diagonal, float("-inf"))
    attn = torch.softmax(torch.cat([energy_h, energy_w], dim=-1), dim=-1)  # (B, H, W, H+W)
    return attn[..., :height], attn[..., height:]


def criss_cross_attention_reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The criss-cross aggregation ``out_H + out_W`` as two einsums (no γ, no residual).

    Shape:
        q, k: (B, C', H, W). v: (B, C, H, W). Returns (B, C, H, W) in v's dtype.
    """
    check_inputs(q, k, v)
    attn_h, attn_w = criss_cross_attention_weights(q, k)
    attn_h = attn_h.to(v.dtype)
    attn_w = attn_w.to(v.dtype)
    out_h = torch.einsum("bhwi,bciw->bchw", attn_h, v)  # column aggregation
    out_w = torch.einsum("bhwj,bchj->bchw", attn_w, v)  # row aggregation
    return out_h + out_w


def reference_attention(
    q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor] = None, residual: Optional[Tensor] = None
) -> Tensor:
    """``residual + γ · (out_H + out_W)`` with the reference aggregation (terms left out when ``None``)."""
    out = criss_cross_attention_reference(q, k, v)
    if gamma is not None:
        out = gamma * out
    return out if residual is None else residual + out
