"""Criss-cross attention (CCNet, Huang et al., ICCV 2019 / TPAMI 2020, arXiv 1811.11721).

For a feature map with queries Q, keys K (C' = C/8 channels) and values V (C channels), every
position u = (h, w) attends to the H + W - 1 positions of its row and column (the criss-cross path
Ω_u, with u itself counted once):

    d_{u,i} = Q_u · K_{Ω_u,i}                      (affinity, Eq. 1)
    A_u     = softmax_i(d_{u,i})                    (joint softmax over the whole cross)
    H'_u    = Σ_i A_{u,i} V_{Ω_u,i} + H_u           (aggregation, Eq. 2; scaled by γ in the module)

A full non-local block costs O((HW)²); the cross costs O(HW·(H+W−1)). Two recurrent applications
with shared weights give every pixel information from every other pixel: u → (h_u, w_v) → v.

The vertical branch masks its diagonal (i == h), so u is counted once — through the horizontal
branch. The mask is a boolean ``masked_fill`` rather than an added H×H −inf matrix; softmax is always
taken in float32, so bf16/fp16 inputs lose no precision in the normalisation and a row of the joint
softmax always has at least one finite entry (u itself), which rules out NaN for H = 1 or W = 1.

This module is the one front door to the operator: it holds the einsum ``reference`` (the readable
definition), the input checks every implementation shares, and the choice between the
implementations — ``reference``, ``lean`` (:mod:`ccnet.models.cca_lean`, hand-written autograd;
:mod:`ccnet.models.cca_lean_block` for the fused module application) and ``triton`` (fused kernels,
:mod:`ccnet.models.cca_triton`); see :func:`select_implementation` for who decides.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ccnet.errors import ConfigError

IMPLEMENTATIONS = ("auto", "reference", "lean", "triton")
IMPL_ENV = "CCNET_CCA_IMPL"  # the outermost default, for runs that cannot pass a setting in
# Looked up once without importing Triton (its import is slow and only CUDA tensors use it).
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


class _ScopedChoices(threading.local):
    """The names of the :func:`use_implementation` blocks active in this thread, innermost last:
    a thread running one model under ``reference`` (an export) leaves another thread's choice alone."""

    def __init__(self) -> None:
        self.stack: List[str] = []


_scoped = _ScopedChoices()


def _check_name(name: str, source: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ConfigError(f"unknown criss-cross attention implementation {name!r} from {source}: "
                          f"expected one of {', '.join(IMPLEMENTATIONS)}")
    return name


@contextmanager
def use_implementation(name: str) -> Iterator[None]:
    """Run the criss-cross attention as ``name`` for the code inside the block (this thread only).

    Blocks nest (the innermost wins) and the previous choice comes back on exit, also when the block
    raises. Inside a block only an explicit ``implementation=`` argument of
    :func:`criss_cross_attention` overrides ``name``; a module's own setting does not (see
    :func:`select_implementation`), so ``with use_implementation("reference"):`` exports any model.
    Like ``torch.no_grad``, the choice belongs to the thread that enters the block: a forward run in
    another thread (``nn.DataParallel`` replicas) does not see it.

    Args:
        name: ``auto``, ``reference``, ``lean`` or ``triton``.

    Raises:
        ValueError: ``name`` is not one of those (on entering the block).
    """
    _scoped.stack.append(_check_name(name, "use_implementation()"))
    try:
        yield
    finally:
        _scoped.stack.pop()


def select_implementation(implementation: Optional[str], device: torch.device,
                          module_setting: Optional[str] = None) -> str:
    """Resolve which implementation :func:`criss_cross_attention` runs.

    The first of these that is set decides:

    1. ``implementation``, the explicit argument of the call;
    2. the innermost active :func:`use_implementation` block;
    3. ``module_setting``, the ``implementation`` a :class:`CrissCrossAttention` was built with
       (``model.cca_impl``);
    4. the environment variable ``CCNET_CCA_IMPL``;
    5. ``auto``.

    A block outranks a module's setting because it is the caller's decision for one stretch of work
    on any model it is handed — exporting (``reference``: graphs the exporters can record), measuring
    the operator as the paper defines it — while the setting is the model's build-time default; a
    model built for ``triton`` must still export.

    Args:
        implementation: ``"reference"`` (readable einsum definition, plain autograd), ``"lean"``
            (:mod:`ccnet.models.cca_lean`), ``"triton"`` (fused kernels, :mod:`ccnet.models.cca_triton`)
            or ``"auto"``; ``None`` defers to the next rule.
        device: device of the inputs; ``auto`` picks ``triton`` for CUDA tensors when Triton is
            installed and ``lean`` otherwise, and ``reference`` while ``torch.jit.trace`` or an ONNX
            export records the graph (plain tensor operations that both can represent).
        module_setting: the calling module's setting; ``None`` defers to the environment.

    Returns:
        One of ``"reference"``, ``"lean"``, ``"triton"``.

    Raises:
        ValueError: the deciding name is not one of :data:`IMPLEMENTATIONS` (the message says where
            it came from).
    """
    if implementation is not None:
        choice = _check_name(implementation, "the implementation argument")
    elif _scoped.stack:
        choice = _scoped.stack[-1]  # checked on entering the block
    elif module_setting is not None:
        choice = _check_name(module_setting, "the module's implementation setting")
    else:
        choice = _check_name(os.environ.get(IMPL_ENV, "auto"), f"the environment variable {IMPL_ENV}")
    if choice == "auto":
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return "reference"
        return "triton" if device.type == "cuda" and TRITON_INSTALLED else "lean"
    return choice


def _check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    """q and k of one (B, C', H, W) shape, v (B, C, H, W) over the same batch and positions."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4:
        raise ValueError(f"criss_cross_attention expects q, k of equal shape (B, C', H, W) and v (B, C, H, W); "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if v.shape[0] != q.shape[0] or v.shape[2:] != q.shape[2:]:
        raise ValueError(f"v {tuple(v.shape)} must share batch and spatial size with q {tuple(q.shape)}")


def check_scale_and_residual(v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor]) -> None:
    """γ must be one number (its gradient is a single sum) and the residual shaped like v."""
    if gamma is not None and gamma.numel() != 1:
        raise ValueError(f"gamma must have one element (the module's scalar γ), got shape {tuple(gamma.shape)}")
    if residual is not None and residual.shape != v.shape:
        raise ValueError(f"residual {tuple(residual.shape)} must have the values' shape {tuple(v.shape)}")


def criss_cross_attention_weights(q: Tensor, k: Tensor) -> Tuple[Tensor, Tensor]:
    """Attention of every position over its column and its row, normalised jointly.

    Args:
        q: queries.
        k: keys.

    Returns:
        ``(attn_h, attn_w)`` in float32 (float64 for float64 inputs): ``attn_h[b, h, w, i]`` is the
        weight of position (i, w) of u's column, ``attn_w[b, h, w, j]`` that of (h, j) in u's row.
        ``attn_h[..., h, w, h]`` is 0 (the masked diagonal), and for every u the two together sum to 1.

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
    """Straightforward einsum implementation of the criss-cross aggregation (no γ, no residual).

    Kept as the readable definition of the operator; :func:`criss_cross_attention` may route to
    faster equivalent implementations.

    Shape:
        q, k: (B, C', H, W). v: (B, C, H, W). Returns (B, C, H, W) in v's dtype.
    """
    _check_inputs(q, k, v)
    attn_h, attn_w = criss_cross_attention_weights(q, k)
    attn_h = attn_h.to(v.dtype)
    attn_w = attn_w.to(v.dtype)
    out_h = torch.einsum("bhwi,bciw->bchw", attn_h, v)  # column aggregation
    out_w = torch.einsum("bhwj,bchj->bchw", attn_w, v)  # row aggregation
    return out_h + out_w


def criss_cross_attention(q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor] = None,
                          residual: Optional[Tensor] = None, implementation: Optional[str] = None) -> Tensor:
    """Criss-cross aggregation ``out_H + out_W`` of values over each position's row and column,
    optionally fused with the module's residual: ``residual + gamma * (out_H + out_W)``.

    All implementations compute the same function (tested against a loop-based reference); they
    differ in speed and in what autograd keeps:

    * ``reference``: :func:`criss_cross_attention_reference`, plain autograd;
    * ``lean``: :func:`ccnet.models.cca_lean.criss_cross_attention_lean`, saves (q, k, v, γ) and a
      (B, H, W) log-sum-exp and recomputes the attention in backward;
    * ``triton``: fused Triton kernels (:mod:`ccnet.models.cca_triton`), CUDA tensors (or the
      Triton interpreter, ``TRITON_INTERPRET=1``), same saved tensors as ``lean``.

    ``auto`` (the default) runs ``triton`` for CUDA tensors when Triton is installed and ``lean``
    otherwise. Force one with ``implementation=``, a :func:`use_implementation` block or the
    environment variable ``CCNET_CCA_IMPL``, in that order of precedence (:func:`select_implementation`).

    Args:
        q: queries.
        k: keys.
        v: values.
        gamma: one-element scale of the aggregation (the module's γ); ``None`` for 1.
        residual: added after scaling (the module's input); ``None`` for none. Fusing γ and the
            residual lets ``lean``/``triton`` skip saving ``out`` for γ's gradient.
        implementation: ``auto``, ``reference``, ``lean`` or ``triton``; ``None`` leaves the choice to
            an active :func:`use_implementation` block, else ``CCNET_CCA_IMPL``, else ``auto``.

    Returns:
        ``residual + gamma * (out_H + out_W)`` (terms left out when ``None``).

    Shape:
        q, k: (B, C', H, W). v, residual: (B, C, H, W). gamma: one element, e.g. (1,).
        Returns (B, C, H, W), in v's dtype when gamma and residual are ``None``.
    """
    _check_inputs(q, k, v)
    check_scale_and_residual(v, gamma, residual)
    choice = select_implementation(implementation, q.device)
    # The fast paths are imported on first use: they import this module's checks, and Triton is
    # optional (only CUDA tensors, or its interpreter, use it).
    if choice == "lean":
        from ccnet.models.cca_lean import criss_cross_attention_lean

        return criss_cross_attention_lean(q, k, v, gamma, residual)
    if choice == "triton":
        from ccnet.models.cca_triton import criss_cross_attention_triton

        return criss_cross_attention_triton(q, k, v, gamma, residual)
    out = criss_cross_attention_reference(q, k, v)
    if gamma is not None:
        out = gamma * out
    return out if residual is None else residual + out


class CrissCrossAttention(nn.Module):
    """Criss-cross attention module: ``x + γ · CCA(Wq x, Wk x, Wv x)``.

    Parameter names (``query_conv``, ``key_conv``, ``value_conv``, ``gamma``) match the official
    release so its checkpoints load without renaming. ``gamma`` starts at ``gamma_init``, 0 by default
    (the paper and official release): a freshly built module is then the identity and attention is
    blended in as training finds it useful.

    Args:
        in_channels: channels C of the input (and of the values).
        reduction: queries and keys have ``in_channels // reduction`` channels (paper: 8).
        gamma_init: initial ``gamma``. 0 makes the start a saddle point (the value path gets no
            gradient until ``gamma`` moves), which pretrained backbones and long schedules escape; a
            small model trained from scratch on a short schedule may not (``ccnet_tiny`` uses 1).
        implementation: ``auto``, ``reference``, ``lean`` or ``triton`` for this module; ``None``
            (default) inherits ``CCNET_CCA_IMPL``, else ``auto``. An active :func:`use_implementation`
            block overrides it (see :func:`select_implementation`). Not part of the state dict.

    With the ``lean`` implementation (the CPU default) one application is a single fused autograd
    function — the three convolutions as one stacked matrix product, the attention, the residual —
    and the output is channels_last memory whatever the input's layout; other implementations
    return the input's layout. The values are the same. On that path the three convolutions'
    parameters are used directly, so forward hooks registered on ``query_conv``/``key_conv``/
    ``value_conv`` do not fire (the ``reference`` implementation calls them as modules).

    Shape:
        x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, in_channels: int, reduction: int = 8, gamma_init: float = 0.0,
                 implementation: Optional[str] = None) -> None:
        super().__init__()
        if in_channels // reduction < 1:
            raise ConfigError(f"in_channels={in_channels} // reduction={reduction} leaves no query/key channels")
        if implementation is not None:
            _check_name(implementation, "CrissCrossAttention(implementation=...)")
        self.implementation = implementation
        inner = in_channels // reduction
        self.query_conv = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init)))

    def forward(self, x: Tensor) -> Tensor:
        choice = select_implementation(None, x.device, self.implementation)
        if choice == "lean":
            # the whole application fused: one stacked 1×1 projection written positions-last, the
            # attention, the residual; backward by hand (imported on use, like the operator's fast paths)
            from ccnet.models.cca_lean_block import criss_cross_block_lean

            projections = (self.query_conv.weight, self.query_conv.bias, self.key_conv.weight,
                           self.key_conv.bias, self.value_conv.weight, self.value_conv.bias)
            return criss_cross_block_lean(x, projections, self.gamma)
        # x + γ·out fused into the operator: autograd then keeps no copy of out for γ's gradient
        return criss_cross_attention(self.query_conv(x), self.key_conv(x), self.value_conv(x),
                                     gamma=self.gamma, residual=x, implementation=choice)

    def attention_weights(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """The (column, row) attention this module computes for ``x``; see
        :func:`criss_cross_attention_weights`."""
        return criss_cross_attention_weights(self.query_conv(x), self.key_conv(x))
