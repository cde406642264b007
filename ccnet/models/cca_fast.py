"""Memory-lean criss-cross attention in PyTorch with a hand-written backward (CCNet, arXiv 1811.11721),
the whole module application fused the same way, and the choice between the implementations.

Same operator as :func:`ccnet.models.cca.criss_cross_attention_reference` (Eq. 1–2: a joint softmax
over the H + W − 1 positions of each pixel's column and row, then the weighted sum of the values),
optionally fused with the module's residual, ``y = x + γ · out``, computed so that autograd keeps
as little as possible:

* the forward saves only ``q``, ``k``, ``v`` (the 1×1 convolutions' outputs, alive anyway; q and k,
  C/8 channels each, positions-last), ``γ`` and the per-position log-sum-exp of the energies,
  ``lse`` (B, H, W). The backward rebuilds the attention as ``A = exp(E − lse)``; no running max is
  needed there because subtracting ``lse`` already bounds every exponent by 0. Fused with the
  residual, neither ``out`` nor ``γ · out`` is kept (the unfused ``x + γ · out`` keeps ``out`` for
  γ's gradient: one (B, C, H, W) tensor per application);
* no (B, H, W, H + W) concatenation and no H×H −inf matrix: the vertical diagonal is set to −inf
  in place through a strided ``diagonal`` view, and the softmax runs in place on the two blocks;
* every product is a batched matrix product reading strided views in place, on a positions-last
  (B, H, W, C) layout: rows are (B·H) batches of (W, C) matrices and columns per-image W batches
  of (H, C) matrices with row stride W·C, results accumulated in place (``baddbmm(out=)``, the
  form ``FlopCounterMode`` counts);
  channels_last tensors already have that layout; for others the values and gradients are
  converted ``CHANNEL_CHUNK`` channels at a time, so no full-size permuted copy ever exists;
* energies and softmax are float32 for half inputs (float64 stays float64, for gradcheck); the
  value aggregation runs in the values' dtype, like the reference.

:class:`LeanCrissCrossBlock` fuses the module around the operator, ``y = x + γ · CCA(Wq x + bq,
Wk x + bk, Wv x + bv)``: the three 1×1 convolutions are one matrix product with the stacked
(2C' + C, C) weight that reads x through a transposed view and writes q, k and v positions-last into
one buffer (no convolution, no layout conversion of the values); the backward returns dW and dx as
matrix products of dq, dk, dv, reading dY once for both of its products, and builds dx in dv's
memory (channels_last x) or channels-first (contiguous x). It saves x, the stacked weight, that
q/k/v buffer and the log-sum-exp. The output is channels_last memory whatever x's layout: the
positions-last layout everything is computed in, which the next recurrence then reads as it is.

Backward, with ``dY`` the incoming gradient, ``A``/``E`` the column (·_h) and row (·_w) blocks and
``dO = γ dY`` the gradient of ``out``::

    dA'_h[u, i] = dY_u · v_(i, w)           dA'_w[u, j] = dY_u · v_(h, j)
    D'_u        = Σ_i A_h dA'_h + Σ_j A_w dA'_w        (= dY_u · out_u;  dγ = Σ_u D'_u)
    dE          = γ A ⊙ (dA' − D'_u)                    (softmax backward; 0 on the masked diagonal)
    dq_u        = Σ_i dE_h[u, i] k_(i, w) + Σ_j dE_w[u, j] k_(h, j)
    dk_(i, w)  += Σ_h dE_h[(h, w), i] q_(h, w)         dk_(h, j) += Σ_w dE_w[(h, w), j] q_(h, w)
    dv_(i, w)  += γ Σ_h A_h[(h, w), i] dY_(h, w)       dv_(h, j) += γ Σ_w A_w[(h, w), j] dY_(h, w)
    dx          = dY                                    (operator with residual)

and in :class:`LeanCrissCrossBlock`, where q, k, v = W x + b with the stacked W = [Wq; Wk; Wv]::

    dW = Σ_u [dq; dk; dv]_u x_uᵀ      db = Σ_u [dq; dk; dv]_u      dx = dY + Wᵀ [dq; dk; dv]
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "reference", "lean", "triton")
IMPL_ENV = "CCNET_CCA_IMPL"
# Value (or gradient) channels converted per step for non-channels_last tensors: bounds the
# temporary copies (64: the fused block's training peak stays under half the baseline's).
CHANNEL_CHUNK = 64
# Positions per step when the fused block's backward builds dx (bounds the temporary).
ROW_CHUNK = 1024
# Looked up once without importing Triton (its import is slow and only CUDA tensors use it).
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def select_implementation(impl: Optional[str], device: torch.device) -> str:
    """Resolve which implementation :func:`ccnet.models.cca.criss_cross_attention` runs.

    Args:
        impl: ``"reference"`` (readable einsum definition, plain autograd), ``"lean"`` (this
            module), ``"triton"`` (fused kernels, :mod:`ccnet.models.cca_triton`) or ``"auto"``;
            ``None`` reads the ``CCNET_CCA_IMPL`` environment variable (default ``auto``).
        device: device of the inputs; ``auto`` picks ``triton`` for CUDA tensors when Triton is
            installed and ``lean`` otherwise, and ``reference`` while ``torch.jit.trace`` or an ONNX
            export records the graph (plain tensor operations that both can represent).

    Returns:
        One of ``"reference"``, ``"lean"``, ``"triton"``.
    """
    choice = impl if impl is not None else os.environ.get(IMPL_ENV, "auto")
    if choice not in IMPLEMENTATIONS:
        source = "impl argument" if impl is not None else f"environment variable {IMPL_ENV}"
        raise ValueError(f"unknown criss-cross attention implementation {choice!r} from the {source}: "
                         f"expected one of {', '.join(IMPLEMENTATIONS)}")
    if choice == "auto":
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return "reference"
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


def _is_channels_last(t: Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last)


def _channel_slices(channels: int) -> List[slice]:
    return [slice(c, min(c + CHANNEL_CHUNK, channels)) for c in range(0, channels, CHANNEL_CHUNK)]


def _read(t: Tensor, channels: slice, channels_last: bool, dtype: torch.dtype) -> Tensor:
    """Channels of a (B, C, H, W) tensor as positions-last (B, H, W, c): a strided view of
    channels_last memory, else a contiguous copy of just these channels (one 2-D transpose per
    image: about twice as fast on CPU as a 4-D permuted copy)."""
    if channels_last and t.dtype == dtype:
        return t[:, channels].permute(0, 2, 3, 1)
    batch, _, height, width = t.shape
    part = t[:, channels]
    out = torch.empty(batch, height, width, part.shape[1], dtype=dtype, device=t.device)
    for b in range(batch):
        out[b].view(height * width, -1).copy_(part[b].reshape(part.shape[1], -1).t())
    return out


def _target(t: Tensor, channels: slice, channels_last: bool) -> Tensor:
    """Where to compute channels of ``t`` positions-last: ``t``'s own memory when channels_last."""
    if channels_last:
        return t[:, channels].permute(0, 2, 3, 1)
    batch, _, height, width = t.shape
    return t.new_empty(batch, height, width, channels.stop - channels.start)


def _commit(t: Tensor, channels: slice, channels_last: bool, result: Tensor) -> None:
    """Store a :func:`_target` result into ``t`` (nothing to do when it was computed in place). One
    2-D transpose per image: several times faster on CPU than a 4-D permuted copy."""
    if channels_last:
        return
    batch, height, width, count = result.shape
    for b in range(batch):
        t[b, channels].view(count, height * width).copy_(result[b].view(height * width, count).t())


def _new_like_layout(like: Tensor, channels_last: bool, shape: Tuple[int, ...], dtype: torch.dtype) -> Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=memory_format)


def _baddbmm_(out: Tensor, a: Tensor, b: Tensor, beta: float = 1) -> None:
    """``out = beta · out + a @ b`` in place on a (possibly strided) view. Spelled with ``out=``
    rather than ``Tensor.baddbmm_``: the same kernel, but FlopCounterMode counts this form."""
    torch.baddbmm(out, a, b, beta=beta, out=out)


def _pair_products(a: Tensor, b: Tensor, cols: Optional[Tensor] = None, rows: Optional[Tensor] = None,
                   accumulate: bool = False) -> Tuple[Tensor, Tensor]:
    """``a_u · b_i`` for every position u and every position i of its column and of its row,
    written into (or, with ``accumulate``, added to) ``cols`` and ``rows`` when given.

    Shape:
        a, b: (B, H, W, c) positions-last. cols: (B, W, H, H) indexed [b, w, h, i] (u = (h, w),
        i = (i, w)); rows: (B, H, W, W) indexed [b, h, w, j].
    """
    batch, height, width, channels = a.shape
    if cols is None:
        cols, rows = a.new_empty(batch, width, height, height), a.new_empty(batch, height, width, width)
    beta = 1 if accumulate else 0  # beta 0: the buffers' previous (uninitialised) contents are ignored
    # rows: (B*H, W, c) @ (B*H, c, W)
    _baddbmm_(rows.view(-1, width, width), a.reshape(-1, width, channels),
              b.reshape(-1, width, channels).transpose(1, 2), beta)
    for i in range(batch):  # columns: (W, H, c) @ (W, c, H), strided views
        _baddbmm_(cols[i], a[i].transpose(0, 1), b[i].permute(1, 2, 0), beta)
    return cols, rows


def _add_pair_products(a: Tensor, b: Tensor, cols: Tensor, rows: Tensor, first: bool) -> None:
    """Add :func:`_pair_products` of one channel chunk to the ``cols``/``rows`` accumulators (set
    them on the ``first`` chunk). Half inputs give half products, accumulated in the buffers'
    float32; otherwise the products accumulate in place."""
    if a.dtype == cols.dtype:
        _pair_products(a, b, cols, rows, accumulate=not first)
        return
    chunk_cols, chunk_rows = _pair_products(a, b)
    for total, chunk in ((cols, chunk_cols), (rows, chunk_rows)):
        total.copy_(chunk) if first else total.add_(chunk)


def _energies(qp: Tensor, kp: Tensor) -> Tuple[Tensor, Tensor]:
    """Column and row energies (layout of :func:`_pair_products`), the column diagonal −inf."""
    energy_h, energy_w = _pair_products(qp, kp)
    energy_h.diagonal(dim1=2, dim2=3).fill_(float("-inf"))  # u counted once, in its row; a strided view
    return energy_h, energy_w


def _softmax_(energy_h: Tensor, energy_w: Tensor) -> Tensor:
    """Turn both energy blocks into the joint softmax in place; return the log-sum-exp (B, H, W).

    The row block always contains u itself, so the per-position maximum is finite and no row of
    the joint softmax is empty, even for H = 1 or W = 1.
    """
    row_max = torch.maximum(energy_h.amax(-1).transpose(1, 2), energy_w.amax(-1))  # (B, H, W)
    attn_h = energy_h.sub_(row_max.transpose(1, 2).unsqueeze(-1)).exp_()
    attn_w = energy_w.sub_(row_max.unsqueeze(-1)).exp_()
    total = attn_h.sum(-1).transpose(1, 2) + attn_w.sum(-1)  # (B, H, W)
    attn_h.div_(total.transpose(1, 2).unsqueeze(-1))
    attn_w.div_(total.unsqueeze(-1))
    return row_max + total.log()


def _gather(attn_h: Tensor, attn_w: Tensor, values: Tensor, out: Tensor, accumulate: bool = False) -> Tensor:
    """``out_u = Σ_i A[u, i] values_i`` over each position's cross, written into (or, with
    ``accumulate``, added to) ``out``.

    Shape:
        attn_h, attn_w: as from :func:`_energies`. values, out: (B, H, W, c) positions-last, rows of
        W·c contiguous or strided with unit channel stride (views of channels_last memory).
    """
    batch, height, width, channels = values.shape
    # rows: (B*H, W, W) @ (B*H, W, c)
    _baddbmm_(out.view(-1, width, channels), attn_w.view(-1, width, width), values.view(-1, width, channels),
              beta=1 if accumulate else 0)
    for b in range(batch):  # columns: accumulated in place into the strided (W, H, c) view
        _baddbmm_(out[b].transpose(0, 1), attn_h[b], values[b].transpose(0, 1))
    return out


def _scatter(attn_h: Tensor, attn_w: Tensor, grads: Tensor, out: Tensor) -> Tensor:
    """Transpose of :func:`_gather`: ``out_i = Σ_u A[u, i] grads_u`` over the queries u whose
    cross contains i, written into ``out``. Same shapes as :func:`_gather`."""
    batch, height, width, channels = grads.shape
    torch.bmm(attn_w.view(-1, width, width).transpose(1, 2), grads.view(-1, width, channels),
              out=out.view(-1, width, channels))
    for b in range(batch):
        _baddbmm_(out[b].transpose(0, 1), attn_h[b].transpose(1, 2), grads[b].transpose(0, 1))
    return out


def _channels_first(tp: Tensor, channels_last: bool) -> Tensor:
    """(B, H, W, c) → (B, C, H, W): a view if the original layout was channels_last, else a copy."""
    if channels_last:
        return tp.permute(0, 3, 1, 2)
    out = tp.new_empty(tp.shape[0], tp.shape[3], tp.shape[1], tp.shape[2])
    _commit(out, slice(0, tp.shape[3]), False, tp)
    return out


def criss_cross_attention_forward(qp: Tensor, kp: Tensor, v: Tensor, out: Tensor) -> Tensor:
    """Criss-cross aggregation into ``out``; returns the softmax statistics the backward needs.

    Args:
        qp: queries, positions-last.
        kp: keys, positions-last.
        v: values.
        out: receives ``out_H + out_W`` (any dense layout; v's dtype).

    Returns:
        The log-sum-exp (float32, or float64 for float64 inputs) of each position's H + W − 1
        energies.

    Shape:
        qp, kp: (B, H, W, C') contiguous. v, out: (B, C, H, W). Returns (B, H, W).
    """
    acc = _accumulation_dtype(qp)
    energy_h, energy_w = _energies(qp.to(acc), kp.to(acc))
    lse = _softmax_(energy_h, energy_w)
    attn_h, attn_w = energy_h.to(v.dtype), energy_w.to(v.dtype)
    v_cl, out_cl = _is_channels_last(v), _is_channels_last(out)
    for channels in _channel_slices(v.shape[1]):
        target = _target(out, channels, out_cl)
        _gather(attn_h, attn_w, _read(v, channels, v_cl, v.dtype), target)
        _commit(out, channels, out_cl, target)
    return lse


def criss_cross_attention_backward(grad_y: Tensor, qp: Tensor, kp: Tensor, v: Tensor, lse: Tensor,
                                   gamma: Optional[Tensor] = None,
                                   needs: Tuple[bool, bool, bool, bool] = (True, True, True, True)
                                   ) -> Tuple[Optional[Tensor], ...]:
    """Gradients of ``y = γ · (out_H + out_W)`` (+ residual), recomputing the attention from ``lse``.

    Args:
        grad_y: gradient of the loss w.r.t. ``y`` (any layout, e.g. an expanded tensor).
        qp, kp: the forward's queries and keys, positions-last.
        v: the forward's values.
        lse: the forward's log-sum-exp.
        gamma: the forward's one-element scale (``None``: 1).
        needs: which of (dq, dk, dv, dγ) to compute; the others are returned as ``None``.

    Returns:
        ``(dq, dk, dv, dγ)``: dq, dk positions-last in the dtypes of q, k; dv like v (layout and
        dtype); dγ shaped like γ.

    Shape:
        grad_y, v: (B, C, H, W). qp, kp: (B, H, W, C'). lse: (B, H, W).
    """
    need_q, need_k, need_v, need_gamma = needs
    need_gamma = need_gamma and gamma is not None
    need_scores = need_q or need_k or need_gamma
    acc = _accumulation_dtype(qp)
    q_acc, k_acc = qp.to(acc), kp.to(acc)
    energy_h, energy_w = _energies(q_acc, k_acc)
    attn_h = energy_h.sub_(lse.transpose(1, 2).unsqueeze(-1)).exp_()  # A = exp(E - lse)
    attn_w = energy_w.sub_(lse.unsqueeze(-1)).exp_()
    grad_q = grad_k = grad_v = grad_gamma = None
    v_cl, grad_cl = _is_channels_last(v), _is_channels_last(grad_y)
    slices = _channel_slices(v.shape[1])
    if need_scores:
        # dA' = dY_u · v_i, accumulated over channel chunks (in float32 for half inputs)
        grad_h, grad_w = attn_h.new_empty(attn_h.shape), attn_w.new_empty(attn_w.shape)
        for n, channels in enumerate(slices):
            grad_c, v_c = _read(grad_y, channels, grad_cl, v.dtype), _read(v, channels, v_cl, v.dtype)
            _add_pair_products(grad_c, v_c, grad_h, grad_w, first=n == 0)
        dot = torch.linalg.vecdot(attn_h, grad_h).transpose(1, 2) + torch.linalg.vecdot(attn_w, grad_w)  # D'
        if need_gamma:
            grad_gamma = dot.sum().to(gamma.dtype).reshape(gamma.shape)
        # softmax backward in place on dA': dE = γ A ⊙ (dA' − D')
        grad_h = grad_h.sub_(dot.transpose(1, 2).unsqueeze(-1)).mul_(attn_h)
        grad_w = grad_w.sub_(dot.unsqueeze(-1)).mul_(attn_w)
        if gamma is not None:
            grad_h.mul_(gamma.to(acc))
            grad_w.mul_(gamma.to(acc))
        if need_q:  # dq_u = Σ_i dE[u, i] k_i
            grad_q = _gather(grad_h, grad_w, k_acc, torch.empty_like(k_acc)).to(qp.dtype)
        if need_k:  # dk_i = Σ_u dE[u, i] q_u
            grad_k = _scatter(grad_h, grad_w, q_acc, torch.empty_like(q_acc)).to(kp.dtype)
        del grad_h, grad_w  # freed before dv exists: the two never add to the peak together
    if need_v:
        attn_h, attn_w = attn_h.to(v.dtype), attn_w.to(v.dtype)
        grad_v = _new_like_layout(v, v_cl, tuple(v.shape), v.dtype)
        for channels in slices:
            target = _target(grad_v, channels, v_cl)
            _scatter(attn_h, attn_w, _read(grad_y, channels, grad_cl, v.dtype), target)
            _commit(grad_v, channels, v_cl, target)
        if gamma is not None:
            grad_v.mul_(gamma.to(v.dtype))
    return grad_q, grad_k, grad_v, grad_gamma


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
    out = _new_like_layout(v, _is_channels_last(layout), tuple(v.shape), v.dtype)
    return out, dtype == v.dtype


def _finish(out: Tensor, in_place: bool, gamma: Optional[Tensor], residual: Optional[Tensor]) -> Tensor:
    """``residual + γ · out``, in place on ``out`` when its dtype is the result's."""
    if not in_place:
        if residual is None:
            return out * gamma
        return residual + out if gamma is None else torch.addcmul(residual, gamma, out)
    if gamma is not None:
        out.mul_(gamma)
    return out if residual is None else out.add_(residual)


class LeanCrissCrossAttention(torch.autograd.Function):
    """``y = residual + γ · CCA(q, k, v)`` saving (q, k, v, γ, lse); attention recomputed in backward.

    q and k (C/8 channels) are kept positions-last (the inputs themselves when channels_last,
    otherwise copies that replace them); v is kept as it is. ``gamma`` and ``residual`` may be
    ``None`` (scale 1, no residual). Once differentiable: the backward is not itself tracked.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor],
                residual: Optional[Tensor]) -> Tensor:
        qp, kp = _positions_last(q), _positions_last(k)
        out, in_place = _output(v, gamma, residual)
        lse = criss_cross_attention_forward(qp, kp, v, out)
        ctx.save_for_backward(qp, kp, v, gamma, lse)
        ctx.channels_last = (_is_channels_last(q), _is_channels_last(k))
        ctx.residual_dtype = None if residual is None else residual.dtype
        return _finish(out, in_place, gamma, residual)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> Tuple[Optional[Tensor], ...]:
        qp, kp, v, gamma, lse = ctx.saved_tensors
        grad_q, grad_k, grad_v, grad_gamma = criss_cross_attention_backward(
            grad_y, qp, kp, v, lse, gamma, tuple(ctx.needs_input_grad[:4]))
        grad_q, grad_k = (None if g is None else _channels_first(g, cl)
                          for g, cl in zip((grad_q, grad_k), ctx.channels_last))
        grad_residual = grad_y.to(ctx.residual_dtype) if ctx.needs_input_grad[4] else None
        return grad_q, grad_k, grad_v, grad_gamma, grad_residual


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
        ``residual + γ · (out_H + out_W)`` with PyTorch's type promotion of those operands, in the
        residual's memory layout (else the values').

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
    out, in_place = _output(v, gamma, residual)
    criss_cross_attention_forward(_positions_last(q), _positions_last(k), v, out)
    return _finish(out, in_place, gamma, residual)


# --- the fused module application ------------------------------------------------------------------


def _channels_last_only(t: Tensor) -> bool:
    """channels_last memory that is not also contiguous (H = W = 1 or C = 1 is both: take contiguous)."""
    return _is_channels_last(t) and not t.is_contiguous()


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
    """dx = dY + dqk Wqk + dv Wv (dW must already have been taken from dv), ROW_CHUNK positions at
    a time, in x's layout: for a channels_last x in dv's own memory (through a small buffer, then
    over the dv rows just read: no (B, H, W, C) buffer for dx), for a contiguous x channels-first
    (the products write the transposed view directly; as fast as positions-last, and autograd gets
    dx with no layout copy).

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
            target = chunk[:part.stop - start] if channels_last else grad_x[b].view(channels, pixels)[:, part].t()
            torch.addmm(grad_rows[part], dv_rows[part], weight[inner2:], out=target)
            target.addmm_(dqk_rows[part], weight[:inner2])
            if channels_last:
                dv_rows[part].copy_(target)
    return grad_x


class LeanCrissCrossBlock(torch.autograd.Function):
    """``y = x + γ · CCA(Wq x + bq, Wk x + bk, Wv x + bv)`` — a whole criss-cross module application
    (1×1 projections, attention, residual) with a hand-written backward.

    Saves x, the stacked (2C' + C, C) weight, the positions-last (B, H, W, 2C' + C) q/k/v buffer,
    γ and the (B, H, W) log-sum-exp; ``y`` is channels_last memory, dx has x's layout (channels_last
    or contiguous). All tensors share one dtype. Once differentiable.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, wq: Tensor, bq: Tensor, wk: Tensor, bk: Tensor, wv: Tensor,
                bv: Tensor, gamma: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        inner = wq.shape[0]
        weight = torch.cat([wq.reshape(inner, channels), wk.reshape(inner, channels), wv.reshape(channels, channels)])
        bias = torch.cat([bq, bk, bv])
        stacked = weight.shape[0]
        qkv = x.new_empty(batch, height, width, stacked)
        for b, rows in enumerate(_position_rows(x)):  # (HW, C) @ (C, 2C' + C), written positions-last
            torch.addmm(bias, rows, weight.t(), out=qkv[b].view(height * width, stacked))
        q, k, v = qkv.split([inner, inner, channels], dim=-1)
        acc = _accumulation_dtype(x)
        energy_h, energy_w = _energies(q.to(acc), k.to(acc))
        lse = _softmax_(energy_h, energy_w)
        # y = x + Σ_i (γ A)[u, i] v_i: the attention (H + W − 1 per position) scaled rather than the
        # C-channel output, and the products accumulated onto a positions-last copy of x
        scale = gamma.to(energy_h.dtype)
        attn_h, attn_w = energy_h.mul_(scale).to(v.dtype), energy_w.mul_(scale).to(v.dtype)
        del energy_h, energy_w
        out = _read(x, slice(0, channels), False, x.dtype)  # a positions-last copy, whatever x's layout
        _gather(attn_h, attn_w, v, out, accumulate=True)
        del attn_h, attn_w
        y = out.permute(0, 3, 1, 2)  # channels_last memory
        ctx.save_for_backward(x, weight, qkv, gamma, lse)
        ctx.inner = inner
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, weight, qkv, gamma, lse = ctx.saved_tensors
        inner = ctx.inner
        batch, channels, height, width = x.shape
        stacked = weight.shape[0]
        grad_y = grad_y.to(x.dtype)
        q, k, v = qkv.split([inner, inner, channels], dim=-1)
        acc = _accumulation_dtype(x)
        q_acc, k_acc = q.to(acc), k.to(acc)
        attn_h, attn_w = _energies(q_acc, k_acc)
        attn_h.sub_(lse.transpose(1, 2).unsqueeze(-1)).exp_()  # A = exp(E - lse), in place
        attn_w.sub_(lse.unsqueeze(-1)).exp_()
        pixels = height * width
        grad_v = v.new_empty(batch, height, width, channels)
        # one pass over dY (positions-last: a view of channels_last memory, else CHANNEL_CHUNK channels
        # at a time) for both of its products: dA' = dY_u · v_i (accumulated over the chunks) and
        # dv_i = Σ_u A[u, i] dY_u
        grad_cl = _is_channels_last(grad_y)
        slices = [slice(0, channels)] if grad_cl else _channel_slices(channels)
        grad_h, grad_w = torch.empty_like(attn_h), torch.empty_like(attn_w)
        attn_h_v, attn_w_v = attn_h.to(v.dtype), attn_w.to(v.dtype)
        for n, part in enumerate(slices):
            grad_c, v_c = _read(grad_y, part, grad_cl, x.dtype), v[..., part]
            _scatter(attn_h_v, attn_w_v, grad_c, grad_v[..., part])
            _add_pair_products(grad_c, v_c, grad_h, grad_w, first=n == 0)
            del grad_c
        del attn_h_v, attn_w_v
        grad_v.mul_(gamma.to(v.dtype))
        # softmax backward, dE = γ (A ⊙ dA' − A D') with D' = Σ A ⊙ dA', in place (no temporaries)
        grad_h.mul_(attn_h)
        grad_w.mul_(attn_w)
        dot = grad_h.sum(-1).transpose(1, 2) + grad_w.sum(-1)  # D' (B, H, W)
        grad_gamma = dot.sum().to(gamma.dtype).reshape(gamma.shape)
        scale = gamma.to(acc)
        grad_h.addcmul_(attn_h, dot.transpose(1, 2).unsqueeze(-1), value=-1).mul_(scale)
        grad_w.addcmul_(attn_w, dot.unsqueeze(-1), value=-1).mul_(scale)
        del attn_h, attn_w, dot
        grad_qk = qkv.new_empty(batch, height, width, 2 * inner)
        grad_qk[..., :inner].copy_(_gather(grad_h, grad_w, k_acc, torch.empty_like(k_acc)))  # dq_u = Σ_i dE[u, i] k_i
        grad_qk[..., inner:].copy_(_scatter(grad_h, grad_w, q_acc, torch.empty_like(q_acc)))  # dk_i = Σ_u dE[u, i] q_u
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
                for grads, part in ((grad_qk[b].view(pixels, 2 * inner), slice(0, 2 * inner)),
                                    (grad_v[b].view(pixels, channels), slice(2 * inner, stacked))):
                    torch.addmm(grad_weight[part], grads.t(), rows, beta=beta, out=grad_weight[part])
                    grad_bias[part].addmv_(grads.t(), ones)
            grad_wq, grad_wk, grad_wv = (g.reshape(g.shape[0], channels, 1, 1)
                                         for g in grad_weight.split([inner, inner, channels]))
            grad_bq, grad_bk, grad_bv = grad_bias.split([inner, inner, channels])
            grad_projections = (grad_wq, grad_bq, grad_wk, grad_bk, grad_wv, grad_bv)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _grad_input(grad_v, grad_qk, grad_y, weight, _channels_last_only(x))
        return (grad_x, *grad_projections, grad_gamma)


def criss_cross_block_lean(x: Tensor, projections: Sequence[Tensor], gamma: Tensor) -> Tensor:
    """One criss-cross module application, ``x + γ · CCA(Wq x + bq, Wk x + bk, Wv x + bv)``, through
    :class:`LeanCrissCrossBlock`.

    Under autocast, x and the projections are cast to the autocast dtype (as the convolutions would
    be) and the result is in that dtype; γ stays in its own dtype and so does its gradient.

    Args:
        x: the module input.
        projections: ``(Wq, bq, Wk, bk, Wv, bv)``, the 1×1 convolutions' weights and biases.
        gamma: one-element scale of the aggregation.

    Returns:
        y, in channels_last memory (the same values as the convolution form; a following layer that
        needs another layout converts once, as :class:`ccnet.models.heads.RCCAHead` does).

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
            raise TypeError(f"criss-cross attention: input is {x.dtype} but {name} is {t.dtype}; "
                            f"cast the module (module.to(dtype)) or run under torch.autocast")
    return LeanCrissCrossBlock.apply(x, wq, bq, wk, bk, wv, bv, gamma.reshape(1))
