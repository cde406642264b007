"""The whole criss-cross module application as one autograd function (CCNet, arXiv 1811.11721, Eq. 1–2).

:class:`LeanCrissCrossBlock` computes ``y = x + γ · CCA(Wq x + bq, Wk x + bk, Wv x + bv)`` around the lean
operator, the 1×1 projections as one matrix product with the stacked W = [Wq; Wk; Wv] writing q, k, v
positions-last (why: docs/design.md, "Decisions"). The attention's backward is the operator's
(:mod:`ccnet.models.cca.lean_ops`); the projections add::

    dW = Σ_u [dq; dk; dv]_u x_uᵀ      db = Σ_u [dq; dk; dv]_u      dx = dY + Wᵀ [dq; dk; dv]
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ccnet.models.cca.checks import check_scale_and_residual
from ccnet.models.cca.lean_ops import (
    accumulation_dtype,
    add_pair_products,
    channel_slices,
    energies,
    gather,
    is_channels_last,
    read_positions_last,
    scatter,
    softmax_,
    softmax_backward_,
)

# Positions per step when the backward builds dx (bounds the temporary).
ROW_CHUNK = 1024


def _channels_last_only(t: Tensor) -> bool:
    """channels_last memory that is not also contiguous (H = W = 1 or C = 1 is both: take contiguous)."""
    return is_channels_last(t) and not t.is_contiguous()


def _position_rows(t: Tensor) -> List[Tensor]:
    """Per image, the (H·W, C) matrix of a (B, C, H, W) tensor's positions: a view either way —
    row-major for channels_last memory, a transposed view of contiguous memory (BLAS reads both)."""
    batch, channels, height, width = t.shape
    if _channels_last_only(t):
        return [t[b].permute(1, 2, 0).reshape(height * width, channels) for b in range(batch)]
    return [t[b].reshape(channels, height * width).t() for b in range(batch)]


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast would compute a matrix product in on ``device_type``; ``None`` when off
    (or for a device type autocast does not know, such as ``meta``)."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        try:
            enabled = torch.is_autocast_enabled(device_type)
        except RuntimeError:  # "unknown device type for autocast"
            return None
        return torch.get_autocast_dtype(device_type) if enabled else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def _grad_input(grad_v: Tensor, grad_qk: Tensor, grad_y: Tensor, weight: Tensor, channels_last: bool) -> Tensor:
    """dx = dY + dqk Wqk + dv Wv, ROW_CHUNK positions at a time, in x's layout: for a channels_last x in dv's
    own memory (dW must already have been taken from dv), for a contiguous x channels-first.

    Shape:
        grad_v: (B, H, W, C) contiguous. grad_qk: (B, H, W, 2C'). grad_y: (B, C, H, W) any layout.
        weight: (2C' + C, C). Returns dx (B, C, H, W), channels_last memory (grad_v's) or contiguous.
    """
    batch, channels, height, width = grad_y.shape
    pixels, inner2 = height * width, grad_qk.shape[-1]
    if channels_last:
        grad_x, chunk = grad_v.permute(0, 3, 1, 2), grad_v.new_empty(min(ROW_CHUNK, pixels), channels)
    else:
        grad_x = grad_v.new_empty(batch, channels, height, width)
    for b, grad_rows in enumerate(_position_rows(grad_y)):
        dv_rows, dqk_rows = grad_v[b].view(pixels, channels), grad_qk[b].view(pixels, inner2)
        for start in range(0, pixels, ROW_CHUNK):
            part = slice(start, min(start + ROW_CHUNK, pixels))
            target = chunk[: part.stop - start] if channels_last else grad_x[b].view(channels, pixels)[:, part].t()
            torch.addmm(grad_rows[part], dv_rows[part], weight[inner2:], out=target)
            target.addmm_(dqk_rows[part], weight[:inner2])
            if channels_last:
                dv_rows[part].copy_(target)
    return grad_x


class LeanCrissCrossBlock(torch.autograd.Function):
    """``y = x + γ · CCA(Wq x + bq, Wk x + bk, Wv x + bv)``, one module application with a hand-written backward.

    Saves x, the stacked (2C' + C, C) weight, the positions-last (B, H, W, 2C' + C) q/k/v buffer, γ and the
    (B, H, W) log-sum-exp; ``y`` is channels_last memory, dx has x's layout. All tensors share one dtype.
    Once differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        wq: Tensor,
        bq: Tensor,
        wk: Tensor,
        bk: Tensor,
        wv: Tensor,
        bv: Tensor,
        gamma: Tensor,
    ) -> Tensor:
        batch, channels, height, width = x.shape
        inner = wq.shape[0]
        weight = torch.cat([wq.reshape(inner, channels), wk.reshape(inner, channels), wv.reshape(channels, channels)])
        bias = torch.cat([bq, bk, bv])
        stacked = weight.shape[0]
        qkv = x.new_empty(batch, height, width, stacked)
        for b, rows in enumerate(_position_rows(x)):  # (HW, C) @ (C, 2C' + C), written positions-last
            torch.addmm(bias, rows, weight.t(), out=qkv[b].view(height * width, stacked))
        q, k, v = qkv.split([inner, inner, channels], dim=-1)
        acc = accumulation_dtype(x)
        energy_h, energy_w = energies(q.to(acc), k.to(acc))
        lse = softmax_(energy_h, energy_w)
        # y = x + Σ_i (γ A)[u, i] v_i: the attention (H + W − 1 per position) scaled rather than the
        # C-channel output, and the products accumulated onto a positions-last copy of x
        scale = gamma.to(energy_h.dtype)
        attn_h, attn_w = energy_h.mul_(scale).to(v.dtype), energy_w.mul_(scale).to(v.dtype)
        del energy_h, energy_w
        out = read_positions_last(x, slice(0, channels), False, x.dtype)  # a positions-last copy, whatever x's layout
        gather(attn_h, attn_w, v, out, accumulate=True)
        del attn_h, attn_w
        y = out.permute(0, 3, 1, 2)  # channels_last memory
        ctx.save_for_backward(x, weight, qkv, gamma, lse)
        ctx.inner = inner
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, weight, qkv, gamma, lse = ctx.saved_tensors
        inner = ctx.inner
        batch, channels, height, width = x.shape
        stacked = weight.shape[0]
        grad_y = grad_y.to(x.dtype)
        q, k, v = qkv.split([inner, inner, channels], dim=-1)
        acc = accumulation_dtype(x)
        q_acc, k_acc = q.to(acc), k.to(acc)
        attn_h, attn_w = energies(q_acc, k_acc)
        attn_h.sub_(lse.transpose(1, 2).unsqueeze(-1)).exp_()  # A = exp(E - lse), in place
        attn_w.sub_(lse.unsqueeze(-1)).exp_()
        pixels = height * width
        grad_v = v.new_empty(batch, height, width, channels)
        # one pass over dY (positions-last: a view of channels_last memory, else CHANNEL_CHUNK channels
        # at a time) for both of its products: dA' = dY_u · v_i (accumulated over the chunks) and
        # dv_i = Σ_u A[u, i] dY_u
        grad_cl = is_channels_last(grad_y)
        slices = [slice(0, channels)] if grad_cl else channel_slices(channels)
        grad_h, grad_w = torch.empty_like(attn_h), torch.empty_like(attn_w)
        attn_h_v, attn_w_v = attn_h.to(v.dtype), attn_w.to(v.dtype)
        for n, part in enumerate(slices):
            grad_c, v_c = read_positions_last(grad_y, part, grad_cl, x.dtype), v[..., part]
            scatter(attn_h_v, attn_w_v, grad_c, grad_v[..., part])
            add_pair_products(grad_c, v_c, grad_h, grad_w, first=n == 0)
            del grad_c
        del attn_h_v, attn_w_v
        grad_v.mul_(gamma.to(v.dtype))
        dot = softmax_backward_(attn_h, attn_w, grad_h, grad_w, gamma)  # dA' -> dE in place
        grad_gamma = dot.sum().to(gamma.dtype).reshape(gamma.shape)
        del attn_h, attn_w, dot
        grad_qk = qkv.new_empty(batch, height, width, 2 * inner)
        grad_qk[..., :inner].copy_(gather(grad_h, grad_w, k_acc, torch.empty_like(k_acc)))  # dq_u = Σ_i dE[u, i] k_i
        grad_qk[..., inner:].copy_(scatter(grad_h, grad_w, q_acc, torch.empty_like(q_acc)))  # dk_i = Σ_u dE[u, i] q_u
        del grad_h, grad_w
        # dW = Σ_u dqkv_u x_uᵀ, db = Σ_u dqkv_u (a matrix-vector product: a column sum would
        # allocate a temporary)
        grad_projections: Tuple[Optional[Tensor], ...] = (None,) * 6
        if any(ctx.needs_input_grad[1:7]):  # not for a frozen module
            grad_weight = weight.new_empty(weight.shape)
            ones = grad_v.new_ones(pixels)
            grad_bias = grad_v.new_zeros(stacked)
            for b, rows in enumerate(_position_rows(x)):
                beta = 0 if b == 0 else 1
                for grads, part in (
                    (grad_qk[b].view(pixels, 2 * inner), slice(0, 2 * inner)),
                    (grad_v[b].view(pixels, channels), slice(2 * inner, stacked)),
                ):
                    torch.addmm(grad_weight[part], grads.t(), rows, beta=beta, out=grad_weight[part])
                    grad_bias[part].addmv_(grads.t(), ones)
            grad_wq, grad_wk, grad_wv = (
                g.reshape(g.shape[0], channels, 1, 1) for g in grad_weight.split([inner, inner, channels])
            )
            grad_bq, grad_bk, grad_bv = grad_bias.split([inner, inner, channels])
            grad_projections = (grad_wq, grad_bq, grad_wk, grad_bk, grad_wv, grad_bv)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _grad_input(grad_v, grad_qk, grad_y, weight, _channels_last_only(x))
        return (grad_x, *grad_projections, grad_gamma)


def criss_cross_block_lean(x: Tensor, projections: Sequence[Tensor], gamma: Tensor) -> Tensor:
    """One criss-cross module application through :class:`LeanCrissCrossBlock`.

    Under autocast, x and the projections are cast to the autocast dtype (as the convolutions would be) and
    so is the result; γ and its gradient keep γ's dtype.

    Args:
        projections: ``(Wq, bq, Wk, bk, Wv, bv)``, the 1×1 convolutions' weights and biases.
        gamma: one-element scale of the aggregation.

    Returns:
        y, in channels_last memory (the convolution form's values).

    Shape:
        x: (B, C, H, W). Wq, Wk: (C', C, 1, 1); Wv: (C, C, 1, 1); bq, bk: (C',); bv: (C,);
        gamma: one element. Returns (B, C, H, W).
    """
    if x.dim() != 4:
        raise ValueError(f"criss-cross attention expects a (B, C, H, W) input, got shape {tuple(x.shape)}")
    wq, bq, wk, bk, wv, bv = projections
    check_scale_and_residual(x, gamma, None)
    cast = _autocast_dtype(x.device.type)
    if cast is not None and x.is_floating_point():
        x, (wq, bq, wk, bk, wv, bv) = x.to(cast), (t.to(cast) for t in (wq, bq, wk, bk, wv, bv))
        with torch.autocast(x.device.type, enabled=False):
            return LeanCrissCrossBlock.apply(x, wq, bq, wk, bk, wv, bv, gamma.reshape(1))
    for name, t in zip(("Wq", "bq", "Wk", "bk", "Wv", "bv"), (wq, bq, wk, bk, wv, bv)):
        if t.dtype != x.dtype:
            raise TypeError(
                f"criss-cross attention: input is {x.dtype} but {name} is {t.dtype}; "
                f"cast the module (module.to(dtype)) or run under torch.autocast"
            )
    return LeanCrissCrossBlock.apply(x, wq, bq, wk, bk, wv, bv, gamma.reshape(1))
