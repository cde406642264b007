"""Memory-lean criss-cross attention in PyTorch with a hand-written backward (CCNet, arXiv 1811.11721),
and the choice between the implementations of the operator.

Same operator as :func:`ccnet.models.cca.criss_cross_attention_reference` (Eq. 1–2: a joint softmax
over the H + W − 1 positions of each pixel's column and row, then the weighted sum of the values),
optionally fused with the module's residual, ``y = x + γ · out``, computed so that autograd keeps
as little as possible:

* the forward saves only ``q``, ``k``, ``v`` (the 1×1 convolutions' outputs, alive anyway), ``γ``
  and the per-position log-sum-exp of the energies, ``lse`` (B, H, W). The backward rebuilds the
  attention as ``A = exp(E − lse)``; no running max is needed there because subtracting ``lse``
  already bounds every exponent by 0. Fused with the residual, neither ``out`` nor ``γ · out`` is
  kept (the unfused ``x + γ · out`` keeps ``out`` for γ's gradient: one (B, C, H, W) tensor per
  application);
* no (B, H, W, H + W) concatenation and no H×H −inf matrix: the vertical diagonal is set to −inf
  in place through a strided ``diagonal`` view, and the softmax runs in place on the two blocks;
* energies and softmax are float32 for half inputs (float64 stays float64, for gradcheck); the
  value aggregation runs in the values' dtype, like the reference.

Backward, with ``dY`` the incoming gradient, ``A``/``E`` the column (·_h) and row (·_w) blocks and
``dO = γ dY`` the gradient of ``out``::

    dA'_h[u, i] = dY_u · v_(i, w)           dA'_w[u, j] = dY_u · v_(h, j)
    D'_u        = Σ_i A_h dA'_h + Σ_j A_w dA'_w        (= dY_u · out_u;  dγ = Σ_u D'_u)
    dE          = γ A ⊙ (dA' − D'_u)                    (softmax backward; 0 on the masked diagonal)
    dq_u        = Σ_i dE_h[u, i] k_(i, w) + Σ_j dE_w[u, j] k_(h, j)
    dk_(i, w)  += Σ_h dE_h[(h, w), i] q_(h, w)         dk_(h, j) += Σ_w dE_w[(h, w), j] q_(h, w)
    dv_(i, w)  += γ Σ_h A_h[(h, w), i] dY_(h, w)       dv_(h, j) += γ Σ_w A_w[(h, w), j] dY_(h, w)
    dx          = dY
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "reference", "lean", "triton")
IMPL_ENV = "CCNET_CCA_IMPL"
# Looked up once without importing Triton (its import is slow and only CUDA tensors use it).
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def select_implementation(impl: Optional[str], device: torch.device) -> str:
    """Resolve which implementation :func:`ccnet.models.cca.criss_cross_attention` runs.

    Args:
        impl: ``"reference"`` (readable einsum definition, plain autograd), ``"lean"`` (this
            module), ``"triton"`` (fused kernels, :mod:`ccnet.models.cca_triton`) or ``"auto"``;
            ``None`` reads the ``CCNET_CCA_IMPL`` environment variable (default ``auto``).
        device: device of the inputs; ``auto`` picks ``triton`` for CUDA tensors when Triton is
            installed and ``lean`` otherwise.

    Returns:
        One of ``"reference"``, ``"lean"``, ``"triton"``.
    """
    choice = impl if impl is not None else os.environ.get(IMPL_ENV, "auto")
    if choice not in IMPLEMENTATIONS:
        source = "impl argument" if impl is not None else f"environment variable {IMPL_ENV}"
        raise ValueError(f"unknown criss-cross attention implementation {choice!r} from the {source}: "
                         f"expected one of {', '.join(IMPLEMENTATIONS)}")
    if choice == "auto":
        return "triton" if device.type == "cuda" and TRITON_INSTALLED else "lean"
    return choice


def check_scale_and_residual(v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor]) -> None:
    """γ must be one number (its gradient is a single sum) and the residual shaped like v."""
    if gamma is not None and gamma.numel() != 1:
        raise ValueError(f"gamma must have one element (the module's scalar γ), got shape {tuple(gamma.shape)}")
    if residual is not None and residual.shape != v.shape:
        raise ValueError(f"residual {tuple(residual.shape)} must have the values' shape {tuple(v.shape)}")


def _accumulation_dtype(t: Tensor) -> torch.dtype:
    """float32 for half inputs, the input's own dtype for float32/float64."""
    return torch.promote_types(t.dtype, torch.float32)


def _energies(q: Tensor, k: Tensor) -> Tuple[Tensor, Tensor]:
    """Column and row energies in (at least) float32, the column diagonal set to −inf.

    Shape:
        q, k: (B, C', H, W). Returns (B, H, W, H) and (B, H, W, W).
    """
    acc = _accumulation_dtype(q)
    q_acc, k_acc = q.to(acc), k.to(acc)  # no copy for float32/64; C' = C/8 channels otherwise
    energy_h = torch.einsum("bchw,bciw->bhwi", q_acc, k_acc)  # (B, H, W, H)
    energy_w = torch.einsum("bchw,bchj->bhwj", q_acc, k_acc)  # (B, H, W, W)
    # u itself is counted once, through the row; a strided view, no H×H mask tensor
    energy_h.diagonal(dim1=1, dim2=3).fill_(float("-inf"))
    return energy_h, energy_w


def _softmax_(energy_h: Tensor, energy_w: Tensor) -> Tensor:
    """Turn both energy blocks into the joint softmax in place; return the log-sum-exp (B, H, W).

    The row block always contains u itself, so the per-position maximum is finite and no row of
    the joint softmax is empty, even for H = 1 or W = 1.
    """
    row_max = torch.maximum(energy_h.amax(-1), energy_w.amax(-1)).unsqueeze(-1)  # (B, H, W, 1)
    attn_h = energy_h.sub_(row_max).exp_()
    attn_w = energy_w.sub_(row_max).exp_()
    total = attn_h.sum(-1, keepdim=True) + attn_w.sum(-1, keepdim=True)  # (B, H, W, 1)
    attn_h.div_(total)
    attn_w.div_(total)
    return (row_max + total.log()).squeeze(-1)


def _attention_from_lse(q: Tensor, k: Tensor, lse: Tensor) -> Tuple[Tensor, Tensor]:
    """Rebuild the attention from the saved log-sum-exp: ``A = exp(E − lse)``."""
    energy_h, energy_w = _energies(q, k)
    lse = lse.unsqueeze(-1)
    return energy_h.sub_(lse).exp_(), energy_w.sub_(lse).exp_()


def _aggregate(attn_h: Tensor, attn_w: Tensor, v: Tensor) -> Tensor:
    """``out_H + out_W`` in v's dtype (B, C, H, W)."""
    out = torch.einsum("bhwj,bchj->bchw", attn_w.to(v.dtype), v)  # row aggregation
    out += torch.einsum("bhwi,bciw->bchw", attn_h.to(v.dtype), v)  # column aggregation
    return out


def criss_cross_attention_forward(q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
    """Criss-cross aggregation and the softmax statistics the backward needs.

    Args:
        q: queries.
        k: keys.
        v: values.

    Returns:
        ``(out, lse)``: ``out_H + out_W`` in v's dtype and the log-sum-exp (float32, or float64
        for float64 inputs) of each position's H + W − 1 energies.

    Shape:
        q, k: (B, C', H, W). v: (B, C, H, W). out: (B, C, H, W). lse: (B, H, W).
    """
    energy_h, energy_w = _energies(q, k)
    lse = _softmax_(energy_h, energy_w)
    return _aggregate(energy_h, energy_w, v), lse


def criss_cross_attention_backward(grad_y: Tensor, q: Tensor, k: Tensor, v: Tensor, lse: Tensor,
                                   gamma: Optional[Tensor] = None,
                                   needs: Tuple[bool, bool, bool, bool] = (True, True, True, True)
                                   ) -> Tuple[Optional[Tensor], ...]:
    """Gradients of ``y = γ · (out_H + out_W)`` (+ residual), recomputing the attention from ``lse``.

    Args:
        grad_y: gradient of the loss w.r.t. ``y``.
        q, k, v: the forward's inputs.
        lse: the forward's log-sum-exp.
        gamma: the forward's scale (``None``: 1).
        needs: which of (dq, dk, dv, dγ) to compute; the others are returned as ``None``.

    Returns:
        ``(dq, dk, dv, dγ)`` in the dtypes of q, k, v and γ.

    Shape:
        grad_y, v: (B, C, H, W). q, k: (B, C', H, W). lse: (B, H, W). gamma: any shape with one
        element.
    """
    need_q, need_k, need_v, need_gamma = needs
    need_gamma = need_gamma and gamma is not None
    attn_h, attn_w = _attention_from_lse(q, k, lse)
    acc = attn_h.dtype
    grad_q = grad_k = grad_v = grad_gamma = None
    grad_y = grad_y.to(v.dtype)  # y may be float32 for half values (γ is float32 under autocast)
    if need_v:
        grad_v = torch.einsum("bhwi,bchw->bciw", attn_h.to(v.dtype), grad_y)  # column
        grad_v += torch.einsum("bhwj,bchw->bchj", attn_w.to(v.dtype), grad_y)  # row
        if gamma is not None:
            grad_v.mul_(gamma.to(v.dtype))
    if need_q or need_k or need_gamma:
        grad_h = torch.einsum("bchw,bciw->bhwi", grad_y, v).to(acc)  # dA'_h (B, H, W, H)
        grad_w = torch.einsum("bchw,bchj->bhwj", grad_y, v).to(acc)  # dA'_w (B, H, W, W)
        dot = torch.linalg.vecdot(attn_h, grad_h) + torch.linalg.vecdot(attn_w, grad_w)  # D' (B, H, W)
        if need_gamma:
            grad_gamma = dot.sum().to(gamma.dtype).reshape(gamma.shape)
        # softmax backward in place on dA': dE = γ A ⊙ (dA' − D')
        scale = attn_h if gamma is None else attn_h * gamma.to(acc)
        grad_h = grad_h.sub_(dot.unsqueeze(-1)).mul_(scale)
        scale = attn_w if gamma is None else attn_w * gamma.to(acc)
        grad_w = grad_w.sub_(dot.unsqueeze(-1)).mul_(scale)
        del attn_h, attn_w, scale
        q_acc, k_acc = q.to(acc), k.to(acc)
        if need_q:
            grad_q = torch.einsum("bhwi,bciw->bchw", grad_h, k_acc)
            grad_q += torch.einsum("bhwj,bchj->bchw", grad_w, k_acc)
            grad_q = grad_q.to(q.dtype)
        if need_k:
            grad_k = torch.einsum("bhwi,bchw->bciw", grad_h, q_acc)
            grad_k += torch.einsum("bhwj,bchw->bchj", grad_w, q_acc)
            grad_k = grad_k.to(k.dtype)
    return grad_q, grad_k, grad_v, grad_gamma


class LeanCrissCrossAttention(torch.autograd.Function):
    """``y = residual + γ · CCA(q, k, v)`` saving (q, k, v, γ, lse); attention recomputed in backward.

    ``gamma`` and ``residual`` may be ``None`` (scale 1, no residual). Once differentiable: the
    backward is not itself tracked (no double backward).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor],
                residual: Optional[Tensor]) -> Tensor:
        out, lse = criss_cross_attention_forward(q, k, v)
        ctx.save_for_backward(q, k, v, gamma, lse)
        ctx.residual_dtype = None if residual is None else residual.dtype
        return _scale_and_add(out, gamma, residual)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> Tuple[Optional[Tensor], ...]:
        q, k, v, gamma, lse = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:4])
        grad_q, grad_k, grad_v, grad_gamma = criss_cross_attention_backward(grad_y, q, k, v, lse, gamma, needs)
        grad_residual = grad_y.to(ctx.residual_dtype) if ctx.needs_input_grad[4] else None
        return grad_q, grad_k, grad_v, grad_gamma, grad_residual


def _scale_and_add(out: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor]) -> Tensor:
    """``residual + γ · out`` with PyTorch's type promotion, in place on ``out`` when possible."""
    if gamma is None and residual is None:
        return out
    if residual is None:
        return out.mul_(gamma) if torch.result_type(out, gamma) == out.dtype else out * gamma
    if gamma is None:
        return out.add_(residual) if torch.result_type(out, residual) == out.dtype else out + residual
    return torch.addcmul(residual, gamma, out)


def criss_cross_attention_lean(q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor] = None,
                               residual: Optional[Tensor] = None) -> Tensor:
    """Lean criss-cross aggregation, optionally fused with the module's ``residual + γ · out``.

    Without autograd (inference, ``torch.no_grad``) it runs the forward directly and keeps nothing;
    otherwise through :class:`LeanCrissCrossAttention`.

    Args:
        q: queries.
        k: keys.
        v: values.
        gamma: one-element scale of the aggregation (the module's γ); ``None`` for 1.
        residual: added to the scaled aggregation (the module's input); ``None`` for none.

    Returns:
        ``residual + γ · (out_H + out_W)``, with PyTorch's type promotion of those operands.

    Shape:
        q, k: (B, C', H, W). v, residual: (B, C, H, W). gamma: one element, e.g. (1,).
        Returns (B, C, H, W).
    """
    check_scale_and_residual(v, gamma, residual)
    if gamma is not None:
        gamma = gamma.reshape(1)  # a 0-dim γ would otherwise not take part in the type promotion
    inputs = [t for t in (q, k, v, gamma, residual) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return LeanCrissCrossAttention.apply(q, k, v, gamma, residual)
    return _scale_and_add(criss_cross_attention_forward(q, k, v)[0], gamma, residual)
