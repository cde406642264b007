"""Memory-lean criss-cross attention with a hand-written backward (arXiv 1811.11721, Eq. 1–2).

The same operator as :func:`ccnet.models.cca.reference.criss_cross_attention_reference`, optionally
fused with the module's ``residual + γ · out``. Autograd keeps q, k (positions-last), v, γ and the
(B, H, W) log-sum-exp of the energies; the backward rebuilds the attention as ``exp(E − lse)``.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ccnet.models.cca.checks import check_scale_and_residual
from ccnet.models.cca.lean_ops import (
    channels_first,
    criss_cross_attention_backward,
    criss_cross_attention_forward,
    is_channels_last,
    new_like_layout,
)


def _positions_last(t: Tensor) -> Tensor:
    """(B, C, H, W) → contiguous (B, H, W, C): a view of channels_last input, else one copy."""
    return t.permute(0, 2, 3, 1).contiguous()


def _output(v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor]) -> Tuple[Tensor, bool]:
    """Buffer for ``out`` in the residual's (else the values') layout; whether ``residual + γ·out``
    can then be finished in place (its promoted dtype is v's)."""
    layout = residual if residual is not None else v
    dtype = v.dtype
    for t in (gamma, residual):
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    out = new_like_layout(v, is_channels_last(layout), tuple(v.shape), v.dtype)
    return out, dtype == v.dtype


def _finish(out: Tensor, in_place: bool, gamma: Optional[Tensor], residual: Optional[Tensor]) -> Tensor:
    """``residual + γ · out``, in place on ``out`` when its dtype is the result's."""
    if not in_place:
        if residual is None:
            return out if gamma is None else out * gamma
        return residual + out if gamma is None else torch.addcmul(residual, gamma, out)
    if gamma is not None:
        out.mul_(gamma)
    return out if residual is None else out.add_(residual)


class LeanCrissCrossAttention(torch.autograd.Function):
    """``y = residual + γ · CCA(q, k, v)`` saving (q, k, v, γ, lse); attention recomputed in backward.

    q and k are kept positions-last (the inputs themselves when channels_last, else copies that replace
    them), v as it is. ``gamma`` and ``residual`` may be ``None``. Once differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor]
    ) -> Tensor:
        qp, kp = _positions_last(q), _positions_last(k)
        out, in_place = _output(v, gamma, residual)
        lse = criss_cross_attention_forward(qp, kp, v, out)
        ctx.save_for_backward(qp, kp, v, gamma, lse)
        ctx.channels_last = (is_channels_last(q), is_channels_last(k))
        ctx.residual_dtype = None if residual is None else residual.dtype
        return _finish(out, in_place, gamma, residual)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> Tuple[Optional[Tensor], ...]:
        qp, kp, v, gamma, lse = ctx.saved_tensors
        grad_q, grad_k, grad_v, grad_gamma = criss_cross_attention_backward(
            grad_y, qp, kp, v, lse, gamma, tuple(ctx.needs_input_grad[:4])
        )
        grad_q, grad_k = (
            None if g is None else channels_first(g, cl) for g, cl in zip((grad_q, grad_k), ctx.channels_last)
        )
        grad_residual = grad_y.to(ctx.residual_dtype) if ctx.needs_input_grad[4] else None
        return grad_q, grad_k, grad_v, grad_gamma, grad_residual


def criss_cross_attention_lean(
    q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor] = None, residual: Optional[Tensor] = None
) -> Tensor:
    """Lean criss-cross aggregation, optionally fused with the module's ``residual + γ · out``; without
    autograd it runs the forward directly and keeps nothing.

    Args:
        gamma: one-element scale of the aggregation (the module's γ); ``None`` for 1.
        residual: added to the scaled aggregation (the module's input); ``None`` for none.

    Returns:
        ``residual + γ · (out_H + out_W)`` with PyTorch's type promotion, in the residual's memory layout
        (else the values').

    Shape:
        q, k: (B, C', H, W). v, residual: (B, C, H, W). gamma: one element, e.g. (1,). Returns (B, C, H, W).
    """
    check_scale_and_residual(v, gamma, residual)
    if gamma is not None:
        gamma = gamma.reshape(1)  # a 0-dim γ would otherwise not take part in the type promotion
    inputs = [t for t in (q, k, v, gamma, residual) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return LeanCrissCrossAttention.apply(q, k, v, gamma, residual)
    out, in_place = _output(v, gamma, residual)
    criss_cross_attention_forward(_positions_last(q), _positions_last(k), v, out)
    return _finish(out, in_place, gamma, residual)
