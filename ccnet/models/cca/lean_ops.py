"""Building blocks of the memory-lean criss-cross attention (arXiv 1811.11721, Eq. 1–2), shared by
:mod:`ccnet.models.cca.lean` and :mod:`ccnet.models.cca.lean_block`: energies, the joint softmax in place
and its backward, and the gathers and scatters over each position's column and row, on positions-last
(B, H, W, C) views (why: docs/design.md, "The lean path").

Backward, with ``dY`` the incoming gradient, ``A``/``E`` the column (·_h) and row (·_w) blocks and
``dO = γ dY`` the gradient of ``out``::

    dA'_h[u, i] = dY_u · v_(i, w)           dA'_w[u, j] = dY_u · v_(h, j)
    D'_u        = Σ_i A_h dA'_h + Σ_j A_w dA'_w        (= dY_u · out_u;  dγ = Σ_u D'_u)
    dE          = γ A ⊙ (dA' − D'_u)                    (softmax backward; 0 on the masked diagonal)
    dq_u        = Σ_i dE_h[u, i] k_(i, w) + Σ_j dE_w[u, j] k_(h, j)
    dk_(i, w)  += Σ_h dE_h[(h, w), i] q_(h, w)         dk_(h, j) += Σ_w dE_w[(h, w), j] q_(h, w)
    dv_(i, w)  += γ Σ_h A_h[(h, w), i] dY_(h, w)       dv_(h, j) += γ Σ_w A_w[(h, w), j] dY_(h, w)
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

# Value (or gradient) channels converted per step for non-channels_last tensors: bounds the
# temporary copies (64: the fused block's training peak stays under half the baseline's).
CHANNEL_CHUNK = 64


def accumulation_dtype(t: Tensor) -> torch.dtype:
    """float32 for half inputs, the input's own dtype for float32/float64."""
    return torch.promote_types(t.dtype, torch.float32)


def is_channels_last(t: Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last)


def channel_slices(channels: int) -> List[slice]:
    return [slice(c, min(c + CHANNEL_CHUNK, channels)) for c in range(0, channels, CHANNEL_CHUNK)]


def read_positions_last(t: Tensor, channels: slice, channels_last: bool, dtype: torch.dtype) -> Tensor:
    """Channels of a (B, C, H, W) tensor as positions-last (B, H, W, c): a strided view of channels_last
    memory, else a contiguous copy of just these channels (one 2-D transpose per image).
    """
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
    """Store a :func:`_target` result into ``t`` (nothing to do when computed in place), one 2-D transpose per image."""
    if channels_last:
        return
    batch, height, width, count = result.shape
    for b in range(batch):
        t[b, channels].view(count, height * width).copy_(result[b].view(height * width, count).t())


def new_like_layout(like: Tensor, channels_last: bool, shape: Tuple[int, ...], dtype: torch.dtype) -> Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=memory_format)


def _baddbmm_(out: Tensor, a: Tensor, b: Tensor, beta: float = 1) -> None:
    """``out = beta · out + a @ b`` in place on a (possibly strided) view; the ``out=`` form FlopCounterMode counts."""
    torch.baddbmm(out, a, b, beta=beta, out=out)


def _pair_products(
    a: Tensor, b: Tensor, cols: Optional[Tensor] = None, rows: Optional[Tensor] = None, accumulate: bool = False
) -> Tuple[Tensor, Tensor]:
    """``a_u · b_i`` for every position u and every position i of its column and of its row,
    written into (or, with ``accumulate``, added to) ``cols`` and ``rows`` when given.

    Shape:
        a, b: (B, H, W, c) positions-last. cols: (B, W, H, H) indexed [b, w, h, i] (u = (h, w),
        i = (i, w)); rows: (B, H, W, W) indexed [b, h, w, j].
    """
    batch, height, width, channels = a.shape
    if cols is None or rows is None:
        cols, rows = a.new_empty(batch, width, height, height), a.new_empty(batch, height, width, width)
    beta = 1 if accumulate else 0  # beta 0: the buffers' previous (uninitialised) contents are ignored
    # rows: (B*H, W, c) @ (B*H, c, W)
    _baddbmm_(
        rows.view(-1, width, width),
        a.reshape(-1, width, channels),
        b.reshape(-1, width, channels).transpose(1, 2),
        beta,
    )
    for i in range(batch):  # columns: (W, H, c) @ (W, c, H), strided views
        _baddbmm_(cols[i], a[i].transpose(0, 1), b[i].permute(1, 2, 0), beta)
    return cols, rows


def add_pair_products(a: Tensor, b: Tensor, cols: Tensor, rows: Tensor, first: bool) -> None:
    """Add :func:`_pair_products` of one channel chunk to the ``cols``/``rows`` accumulators (set
    them on the ``first`` chunk). Half inputs give half products, accumulated in the buffers'
    float32; otherwise the products accumulate in place."""
    if a.dtype == cols.dtype:
        _pair_products(a, b, cols, rows, accumulate=not first)
        return
    chunk_cols, chunk_rows = _pair_products(a, b)
    for total, chunk in ((cols, chunk_cols), (rows, chunk_rows)):
        total.copy_(chunk) if first else total.add_(chunk)


def energies(qp: Tensor, kp: Tensor) -> Tuple[Tensor, Tensor]:
    """Column and row energies (layout of :func:`_pair_products`), the column diagonal −inf."""
    energy_h, energy_w = _pair_products(qp, kp)
    energy_h.diagonal(dim1=2, dim2=3).fill_(float("-inf"))  # u counted once, in its row; a strided view
    return energy_h, energy_w


def softmax_(energy_h: Tensor, energy_w: Tensor) -> Tensor:
    """Turn both energy blocks into the joint softmax in place; return the log-sum-exp (B, H, W).

    The row block always contains u itself, so every position's maximum is finite, even for H = 1 or W = 1.
    """
    row_max = torch.maximum(energy_h.amax(-1).transpose(1, 2), energy_w.amax(-1))  # (B, H, W)
    attn_h = energy_h.sub_(row_max.transpose(1, 2).unsqueeze(-1)).exp_()
    attn_w = energy_w.sub_(row_max.unsqueeze(-1)).exp_()
    total = attn_h.sum(-1).transpose(1, 2) + attn_w.sum(-1)  # (B, H, W)
    attn_h.div_(total.transpose(1, 2).unsqueeze(-1))
    attn_w.div_(total.unsqueeze(-1))
    return row_max + total.log()


def softmax_backward_(
    attn_h: Tensor, attn_w: Tensor, grad_h: Tensor, grad_w: Tensor, gamma: Optional[Tensor]
) -> Tensor:
    """Softmax backward in place on dA': ``grad_h``/``grad_w`` become dE = γ (A ⊙ dA' − A D'), with
    D' = Σ A ⊙ dA' per position returned (B, H, W) for γ's gradient; no block-sized temporary.

    Shape:
        attn_h, grad_h: (B, W, H, H) as from :func:`energies`; attn_w, grad_w: (B, H, W, W).
    """
    grad_h.mul_(attn_h)
    grad_w.mul_(attn_w)
    dot = grad_h.sum(-1).transpose(1, 2) + grad_w.sum(-1)  # D' (B, H, W)
    grad_h.addcmul_(attn_h, dot.transpose(1, 2).unsqueeze(-1), value=-1)
    grad_w.addcmul_(attn_w, dot.unsqueeze(-1), value=-1)
    if gamma is not None:
        scale = gamma.to(grad_h.dtype)
        grad_h.mul_(scale)
        grad_w.mul_(scale)
    return dot


def gather(attn_h: Tensor, attn_w: Tensor, values: Tensor, out: Tensor, accumulate: bool = False) -> Tensor:
    """``out_u = Σ_i A[u, i] values_i`` over each position's cross, written into (or, with
    ``accumulate``, added to) ``out``.

    Shape:
        attn_h, attn_w: as from :func:`energies`. values, out: (B, H, W, c) positions-last, rows of
        W·c contiguous or strided with unit channel stride (views of channels_last memory).
    """
    batch, height, width, channels = values.shape
    # rows: (B*H, W, W) @ (B*H, W, c)
    _baddbmm_(
        out.view(-1, width, channels),
        attn_w.view(-1, width, width),
        values.view(-1, width, channels),
        beta=1 if accumulate else 0,
    )
    for b in range(batch):  # columns: accumulated in place into the strided (W, H, c) view
        _baddbmm_(out[b].transpose(0, 1), attn_h[b], values[b].transpose(0, 1))
    return out


def scatter(attn_h: Tensor, attn_w: Tensor, grads: Tensor, out: Tensor) -> Tensor:
    """Transpose of :func:`gather`: ``out_i = Σ_u A[u, i] grads_u`` over the queries u whose
    cross contains i, written into ``out``. Same shapes as :func:`gather`."""
    batch, height, width, channels = grads.shape
    torch.bmm(
        attn_w.view(-1, width, width).transpose(1, 2),
        grads.view(-1, width, channels),
        out=out.view(-1, width, channels),
    )
    for b in range(batch):
        _baddbmm_(out[b].transpose(0, 1), attn_h[b].transpose(1, 2), grads[b].transpose(0, 1))
    return out


def channels_first(tp: Tensor, channels_last: bool) -> Tensor:
    """(B, H, W, c) → (B, C, H, W): a view if the original layout was channels_last, else a copy."""
    if channels_last:
        return tp.permute(0, 3, 1, 2)
    out = tp.new_empty(tp.shape[0], tp.shape[3], tp.shape[1], tp.shape[2])
    _commit(out, slice(0, tp.shape[3]), False, tp)
    return out


def criss_cross_attention_forward(qp: Tensor, kp: Tensor, v: Tensor, out: Tensor) -> Tensor:
    """Criss-cross aggregation into ``out``; returns the softmax statistics the backward needs.

    Args:
        qp, kp: queries and keys, positions-last.
        out: receives ``out_H + out_W`` (any dense layout; v's dtype).

    Returns:
        The log-sum-exp (float32, or float64 for float64 inputs) of each position's H + W − 1 energies.

    Shape:
        qp, kp: (B, H, W, C') contiguous. v, out: (B, C, H, W). Returns (B, H, W).
    """
    acc = accumulation_dtype(qp)
    energy_h, energy_w = energies(qp.to(acc), kp.to(acc))
    lse = softmax_(energy_h, energy_w)
    attn_h, attn_w = energy_h.to(v.dtype), energy_w.to(v.dtype)
    v_cl, out_cl = is_channels_last(v), is_channels_last(out)
    for channels in channel_slices(v.shape[1]):
        target = _target(out, channels, out_cl)
        gather(attn_h, attn_w, read_positions_last(v, channels, v_cl, v.dtype), target)
        _commit(out, channels, out_cl, target)
    return lse


def criss_cross_attention_backward(
    grad_y: Tensor,
    qp: Tensor,
    kp: Tensor,
    v: Tensor,
    lse: Tensor,
    gamma: Optional[Tensor] = None,
    needs: Tuple[bool, bool, bool, bool] = (True, True, True, True),
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
    acc = accumulation_dtype(qp)
    q_acc, k_acc = qp.to(acc), kp.to(acc)
    energy_h, energy_w = energies(q_acc, k_acc)
    attn_h = energy_h.sub_(lse.transpose(1, 2).unsqueeze(-1)).exp_()  # A = exp(E - lse)
    attn_w = energy_w.sub_(lse.unsqueeze(-1)).exp_()
    grad_q = grad_k = grad_v = grad_gamma = None
    v_cl, grad_cl = is_channels_last(v), is_channels_last(grad_y)
    slices = channel_slices(v.shape[1])
    if need_scores:
        # dA' = dY_u · v_i, accumulated over channel chunks (in float32 for half inputs)
        grad_h, grad_w = attn_h.new_empty(attn_h.shape), attn_w.new_empty(attn_w.shape)
        for n, channels in enumerate(slices):
            grad_c = read_positions_last(grad_y, channels, grad_cl, v.dtype)
            v_c = read_positions_last(v, channels, v_cl, v.dtype)
            add_pair_products(grad_c, v_c, grad_h, grad_w, first=n == 0)
        dot = softmax_backward_(attn_h, attn_w, grad_h, grad_w, gamma)  # dA' -> dE in place
        if need_gamma:
            assert gamma is not None  # needs_input_grad is False for an absent γ
            grad_gamma = dot.sum().to(gamma.dtype).reshape(gamma.shape)
        if need_q:  # dq_u = Σ_i dE[u, i] k_i
            grad_q = gather(grad_h, grad_w, k_acc, torch.empty_like(k_acc)).to(qp.dtype)
        if need_k:  # dk_i = Σ_u dE[u, i] q_u
            grad_k = scatter(grad_h, grad_w, q_acc, torch.empty_like(q_acc)).to(kp.dtype)
        del grad_h, grad_w  # freed before dv exists: the two never add to the peak together
    if need_v:
        attn_h, attn_w = attn_h.to(v.dtype), attn_w.to(v.dtype)
        grad_v = new_like_layout(v, v_cl, tuple(v.shape), v.dtype)
        for channels in slices:
            target = _target(grad_v, channels, v_cl)
            scatter(attn_h, attn_w, read_positions_last(grad_y, channels, grad_cl, v.dtype), target)
            _commit(grad_v, channels, v_cl, target)
        if gamma is not None:
            grad_v.mul_(gamma.to(v.dtype))
    return grad_q, grad_k, grad_v, grad_gamma
