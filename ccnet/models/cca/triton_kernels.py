"""Fused Triton kernels for criss-cross attention, forward and backward (CCNet, arXiv 1811.11721, Eq. 1–2).

``y = residual + γ · (out_H + out_W)`` (γ and the residual optional) with energies recomputed tile by tile
in registers; autograd keeps q, k, v, γ and the log-sum-exp ``lse`` (B, H, W), and the backward formulas
are those of :mod:`ccnet.models.cca.lean_ops`. Each kernel works on one *line* (B·S lines × T positions,
a query block per program) and is launched with column strides (S = W, T = H, diagonal masked), then
with row strides (S = H, T = W; its line contains u, so its statistics are finite), accumulating into the
column launch's output::

    forward:  lse(column) → lse(row, combine) → out(column) → out(row, add + γ·, + residual)
    backward: D'(column) → D'(row)  (D'_u = Σ A·(dY_u·v), the softmax backward's row sum; dγ = ΣD')
              dq(column) → dq(row) → dk(column) → dk(row) → dv(column) → dv(row)

Dots accumulate in float32 (float32 inputs exact unless TF32 is allowed). Under the CPU interpreter
(``TRITON_INTERPRET=1``) half dot operands are widened to float32, since its bf16 dot is wrong; the
products are exact, only the summation order changes. Registered as the custom operators
``ccnet::cca_triton_forward`` / ``ccnet::cca_triton_backward`` (fake implementations, autograd formula),
which ``torch.compile`` treats as opaque calls.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ccnet.models.cca.checks import check_scale_and_residual

# Largest tile sizes; tests lower them to exercise the multi-block loops on small shapes.
MAX_BLOCK_POSITIONS = 32  # query/key positions per tile
MAX_BLOCK_QK = 64  # query/key channels per tile (C' = C/8 = 64 for the RCCA head)
BLOCK_VALUES = 64  # value channels per tile
NUM_WARPS = 4

# (branch, strides of a (B, C, H, W) tensor as (batch, channel, line, position), MASK_DIAG).
# The column comes first: only the row's statistics are guaranteed finite (they contain u).
_BRANCHES = (("column", True), ("row", False))


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _line_products(
    a_base,
    sa_c,
    sa_t,
    b_base,
    sb_c,
    sb_t,
    offs_r,
    offs_k,
    T,
    CH,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_CH: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """(BLOCK_R, BLOCK_K) float32 tile of Σ_c a[c, r] · b[c, k] over CH channels of one line."""
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    for c0 in range(0, CH, BLOCK_CH):
        offs_c = c0 + tl.arange(0, BLOCK_CH)
        a = tl.load(
            a_base + offs_r[:, None] * sa_t + offs_c[None, :] * sa_c,
            mask=(offs_r[:, None] < T) & (offs_c[None, :] < CH),
            other=0.0,
        )
        b = tl.load(
            b_base + offs_c[:, None] * sb_c + offs_k[None, :] * sb_t,
            mask=(offs_c[:, None] < CH) & (offs_k[None, :] < T),
            other=0.0,
        )
        acc = _dot(a, b, acc, PRECISION, UPCAST)
    return acc


@triton.jit
def _masked(e, offs_r, offs_k, T, MASK_DIAG: tl.constexpr):
    """−inf outside the line and, for the column, on the diagonal (u counted once, in the row)."""
    valid = (offs_r[:, None] < T) & (offs_k[None, :] < T)
    if MASK_DIAG:
        valid = valid & (offs_r[:, None] != offs_k[None, :])
    return tl.where(valid, e, float("-inf"))


@triton.jit
def _lse_kernel(
    Q,
    sqb,
    sqc,
    sql,
    sqt,
    K,
    skb,
    skc,
    skl,
    skt,
    LSE,
    slb,
    sll,
    slt,
    S,
    T,
    CQ,
    MASK_DIAG: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    b = (tl.program_id(0) // S).to(tl.int64)
    s = (tl.program_id(0) % S).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_base = Q + b * sqb + s * sql
    k_base = K + b * skb + s * skl
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, T, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        e = _line_products(
            q_base, sqc, sqt, k_base, skc, skt, offs_m, offs_n, T, CQ, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST
        )
        e = _masked(e, offs_m, offs_n, T, MASK_DIAG)
        m_new = tl.maximum(m_i, tl.max(e, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a fully masked block so far
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(e - m_safe[:, None]), 1)
        m_i = m_new
    lse = m_i + tl.log(l_i)  # −inf for an empty column (H = 1)
    ptrs = LSE + b * slb + s * sll + offs_m * slt
    if ACCUMULATE:
        prev = tl.load(ptrs, mask=offs_m < T, other=0.0)
        top = tl.maximum(prev, lse)  # finite: this (row) launch always contains u itself
        lse = top + tl.log(tl.exp(prev - top) + tl.exp(lse - top))
    tl.store(ptrs, lse, mask=offs_m < T)


@triton.jit
def _out_kernel(
    Q,
    sqb,
    sqc,
    sql,
    sqt,
    K,
    skb,
    skc,
    skl,
    skt,
    V,
    svb,
    svc,
    svl,
    svt,
    LSE,
    slb,
    sll,
    slt,
    Y,
    syb,
    syc,
    syl,
    syt,
    R,
    srb,
    src,
    srl,
    srt,
    GAMMA,
    S,
    T,
    CQ,
    C,
    MASK_DIAG: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    HAS_GAMMA: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    b = (tl.program_id(0) // S).to(tl.int64)
    s = (tl.program_id(0) % S).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_base = Q + b * sqb + s * sql
    k_base = K + b * skb + s * skl
    v_base = V + b * svb + s * svl
    lse = tl.load(LSE + b * slb + s * sll + offs_m * slt, mask=offs_m < T, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for n0 in range(0, T, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        e = _line_products(
            q_base, sqc, sqt, k_base, skc, skt, offs_m, offs_n, T, CQ, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST
        )
        p = tl.exp(_masked(e, offs_m, offs_n, T, MASK_DIAG) - lse[:, None])
        v = tl.load(
            v_base + offs_n[:, None] * svt + offs_c[None, :] * svc,
            mask=(offs_n[:, None] < T) & (offs_c[None, :] < C),
            other=0.0,
        )
        acc = _dot(p.to(v.dtype), v, acc, PRECISION, UPCAST)
    mask = (offs_m[:, None] < T) & (offs_c[None, :] < C)
    y_ptrs = Y + b * syb + s * syl + offs_m[:, None] * syt + offs_c[None, :] * syc
    if ACCUMULATE:  # second launch: add the first's partial sum, then the module's epilogue
        acc += tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
        if HAS_GAMMA:
            acc = acc * tl.load(GAMMA).to(tl.float32)
        if HAS_RESIDUAL:
            r_ptrs = R + b * srb + s * srl + offs_m[:, None] * srt + offs_c[None, :] * src
            acc += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _delta_kernel(
    Q,
    sqb,
    sqc,
    sql,
    sqt,
    K,
    skb,
    skc,
    skl,
    skt,
    V,
    svb,
    svc,
    svl,
    svt,
    DY,
    sdb,
    sdc,
    sdl,
    sdt,
    LSE,
    slb,
    sll,
    slt,
    DELTA,
    S,
    T,
    CQ,
    C,
    MASK_DIAG: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """D'_u = Σ_i A[u, i] (dY_u · v_i); DELTA has LSE's strides."""
    b = (tl.program_id(0) // S).to(tl.int64)
    s = (tl.program_id(0) % S).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_base = Q + b * sqb + s * sql
    k_base = K + b * skb + s * skl
    v_base = V + b * svb + s * svl
    dy_base = DY + b * sdb + s * sdl
    lse = tl.load(LSE + b * slb + s * sll + offs_m * slt, mask=offs_m < T, other=0.0)
    delta = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, T, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        e = _line_products(
            q_base, sqc, sqt, k_base, skc, skt, offs_m, offs_n, T, CQ, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST
        )
        p = tl.exp(_masked(e, offs_m, offs_n, T, MASK_DIAG) - lse[:, None])
        da = _line_products(
            dy_base, sdc, sdt, v_base, svc, svt, offs_m, offs_n, T, C, BLOCK_M, BLOCK_N, BLOCK_C, PRECISION, UPCAST
        )
        delta += tl.sum(p * da, 1)
    ptrs = DELTA + b * slb + s * sll + offs_m * slt
    if ACCUMULATE:
        delta += tl.load(ptrs, mask=offs_m < T, other=0.0)
    tl.store(ptrs, delta, mask=offs_m < T)


@triton.jit
def _dq_kernel(
    Q,
    sqb,
    sqc,
    sql,
    sqt,
    K,
    skb,
    skc,
    skl,
    skt,
    V,
    svb,
    svc,
    svl,
    svt,
    DY,
    sdb,
    sdc,
    sdl,
    sdt,
    LSE,
    slb,
    sll,
    slt,
    DELTA,
    GAMMA,
    DQ,
    sob,
    soc,
    sol,
    sot,
    S,
    T,
    CQ,
    C,
    MASK_DIAG: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    HAS_GAMMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """dq_u += Σ_i dE[u, i] k_i with dE = γ A ⊙ (dA' − D'), into the float32 buffer DQ."""
    b = (tl.program_id(0) // S).to(tl.int64)
    s = (tl.program_id(0) % S).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    q_base = Q + b * sqb + s * sql
    k_base = K + b * skb + s * skl
    v_base = V + b * svb + s * svl
    dy_base = DY + b * sdb + s * sdl
    lse = tl.load(LSE + b * slb + s * sll + offs_m * slt, mask=offs_m < T, other=0.0)
    delta = tl.load(DELTA + b * slb + s * sll + offs_m * slt, mask=offs_m < T, other=0.0)
    gamma = 1.0
    if HAS_GAMMA:
        gamma = tl.load(GAMMA).to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, T, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        e = _line_products(
            q_base, sqc, sqt, k_base, skc, skt, offs_m, offs_n, T, CQ, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST
        )
        p = tl.exp(_masked(e, offs_m, offs_n, T, MASK_DIAG) - lse[:, None])
        da = _line_products(
            dy_base, sdc, sdt, v_base, svc, svt, offs_m, offs_n, T, C, BLOCK_M, BLOCK_N, BLOCK_C, PRECISION, UPCAST
        )
        ds = p * (da - delta[:, None]) * gamma
        k = tl.load(
            k_base + offs_n[:, None] * skt + offs_d[None, :] * skc,
            mask=(offs_n[:, None] < T) & (offs_d[None, :] < CQ),
            other=0.0,
        )
        acc = _dot(ds.to(k.dtype), k, acc, PRECISION, UPCAST)
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < CQ)
    ptrs = DQ + b * sob + s * sol + offs_m[:, None] * sot + offs_d[None, :] * soc
    if ACCUMULATE:
        acc += tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, acc, mask=mask)


@triton.jit
def _dk_kernel(
    Q,
    sqb,
    sqc,
    sql,
    sqt,
    K,
    skb,
    skc,
    skl,
    skt,
    V,
    svb,
    svc,
    svl,
    svt,
    DY,
    sdb,
    sdc,
    sdl,
    sdt,
    LSE,
    slb,
    sll,
    slt,
    DELTA,
    GAMMA,
    DK,
    sob,
    soc,
    sol,
    sot,
    S,
    T,
    CQ,
    C,
    MASK_DIAG: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    HAS_GAMMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """dk_i += Σ_u dE[u, i] q_u, one block of keys per program, into the float32 buffer DK."""
    b = (tl.program_id(0) // S).to(tl.int64)
    s = (tl.program_id(0) % S).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    q_base = Q + b * sqb + s * sql
    k_base = K + b * skb + s * skl
    v_base = V + b * svb + s * svl
    dy_base = DY + b * sdb + s * sdl
    gamma = 1.0
    if HAS_GAMMA:
        gamma = tl.load(GAMMA).to(tl.float32)
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for m0 in range(0, T, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        lse = tl.load(LSE + b * slb + s * sll + offs_m * slt, mask=offs_m < T, other=0.0)
        delta = tl.load(DELTA + b * slb + s * sll + offs_m * slt, mask=offs_m < T, other=0.0)
        # transposed tiles: rows are keys, columns queries
        et = _line_products(
            k_base, skc, skt, q_base, sqc, sqt, offs_n, offs_m, T, CQ, BLOCK_N, BLOCK_M, BLOCK_D, PRECISION, UPCAST
        )
        pt = tl.exp(_masked(et, offs_n, offs_m, T, MASK_DIAG) - lse[None, :])
        dat = _line_products(
            v_base, svc, svt, dy_base, sdc, sdt, offs_n, offs_m, T, C, BLOCK_N, BLOCK_M, BLOCK_C, PRECISION, UPCAST
        )
        dst = pt * (dat - delta[None, :]) * gamma
        q = tl.load(
            q_base + offs_m[:, None] * sqt + offs_d[None, :] * sqc,
            mask=(offs_m[:, None] < T) & (offs_d[None, :] < CQ),
            other=0.0,
        )
        acc = _dot(dst.to(q.dtype), q, acc, PRECISION, UPCAST)
    mask = (offs_n[:, None] < T) & (offs_d[None, :] < CQ)
    ptrs = DK + b * sob + s * sol + offs_n[:, None] * sot + offs_d[None, :] * soc
    if ACCUMULATE:
        acc += tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, acc, mask=mask)


@triton.jit
def _dv_kernel(
    Q,
    sqb,
    sqc,
    sql,
    sqt,
    K,
    skb,
    skc,
    skl,
    skt,
    DY,
    sdb,
    sdc,
    sdl,
    sdt,
    LSE,
    slb,
    sll,
    slt,
    GAMMA,
    DV,
    sob,
    soc,
    sol,
    sot,
    S,
    T,
    CQ,
    C,
    MASK_DIAG: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    HAS_GAMMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """dv_i += γ Σ_u A[u, i] dY_u, one block of keys × value channels per program."""
    b = (tl.program_id(0) // S).to(tl.int64)
    s = (tl.program_id(0) % S).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_base = Q + b * sqb + s * sql
    k_base = K + b * skb + s * skl
    dy_base = DY + b * sdb + s * sdl
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for m0 in range(0, T, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        lse = tl.load(LSE + b * slb + s * sll + offs_m * slt, mask=offs_m < T, other=0.0)
        et = _line_products(
            k_base, skc, skt, q_base, sqc, sqt, offs_n, offs_m, T, CQ, BLOCK_N, BLOCK_M, BLOCK_D, PRECISION, UPCAST
        )
        pt = tl.exp(_masked(et, offs_n, offs_m, T, MASK_DIAG) - lse[None, :])
        dy = tl.load(
            dy_base + offs_m[:, None] * sdt + offs_c[None, :] * sdc,
            mask=(offs_m[:, None] < T) & (offs_c[None, :] < C),
            other=0.0,
        )
        acc = _dot(pt.to(dy.dtype), dy, acc, PRECISION, UPCAST)
    if HAS_GAMMA:
        acc = acc * tl.load(GAMMA).to(tl.float32)
    mask = (offs_n[:, None] < T) & (offs_c[None, :] < C)
    ptrs = DV + b * sob + s * sol + offs_n[:, None] * sot + offs_c[None, :] * soc
    if ACCUMULATE:
        acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, acc.to(DV.dtype.element_ty), mask=mask)


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter: ``TRITON_INTERPRET=1`` was set when Triton was first imported."""
    return not isinstance(tl.zeros, triton.JITFunction)


def _pow2(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))  # tl.dot needs tiles of >= 16


def _strides(t: Tensor, branch: str) -> Tuple[int, ...]:
    """(batch, channel, line, position) strides of a (B, C, H, W) tensor, or (batch, line, position)
    of a (B, H, W) statistic, for the row (lines = rows) or column (lines = columns) launch."""
    if t.dim() == 3:
        sb, sh, sw = t.stride()
        return (sb, sh, sw) if branch == "row" else (sb, sw, sh)
    sb, sc, sh, sw = t.stride()
    return (sb, sc, sh, sw) if branch == "row" else (sb, sc, sw, sh)


def _launch_config(q: Tensor, v: Tensor, branch: str) -> dict:
    batch, cq, height, width = q.shape
    lines, positions = (height, width) if branch == "row" else (width, height)
    # float32 products are exact unless the user allowed TF32 for matmuls; half inputs ignore this
    precision = "tf32" if q.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return dict(
        lines=lines,
        positions=positions,
        batch_lines=batch * lines,
        cq=cq,
        c=v.shape[1],
        meta=dict(
            BLOCK_M=_pow2(positions, MAX_BLOCK_POSITIONS),
            BLOCK_N=_pow2(positions, MAX_BLOCK_POSITIONS),
            BLOCK_D=_pow2(cq, MAX_BLOCK_QK),
            PRECISION=precision,
            UPCAST=interpreting() and q.dtype != torch.float32,
            num_warps=NUM_WARPS,
        ),
    )


def _result_dtype(v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor]) -> torch.dtype:
    dtype = v.dtype
    for t in (gamma, residual):
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _new_output(v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor]) -> Tensor:
    # y takes the residual's layout when there is one (y = x + …), else the values'
    return torch.empty_like(residual if residual is not None else v, dtype=_result_dtype(v, gamma, residual))


@torch.library.custom_op("ccnet::cca_triton_forward", mutates_args=())
def _forward_op(
    q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    batch, _, height, width = q.shape
    y = _new_output(v, gamma, residual)
    lse = torch.empty((batch, height, width), device=q.device, dtype=torch.float32)
    gamma_arg = gamma if gamma is not None else lse  # placeholder pointer, never read
    res = residual if residual is not None else y
    for i, (branch, mask_diag) in enumerate(_BRANCHES):
        cfg = _launch_config(q, v, branch)
        meta = cfg["meta"]
        grid: Tuple[int, ...] = (cfg["batch_lines"], triton.cdiv(cfg["positions"], meta["BLOCK_M"]))
        _lse_kernel[grid](
            q,
            *_strides(q, branch),
            k,
            *_strides(k, branch),
            lse,
            *_strides(lse, branch),
            cfg["lines"],
            cfg["positions"],
            cfg["cq"],
            MASK_DIAG=mask_diag,
            ACCUMULATE=i > 0,
            **meta,
        )
    for i, (branch, mask_diag) in enumerate(_BRANCHES):
        cfg = _launch_config(q, v, branch)
        meta = cfg["meta"]
        grid = (cfg["batch_lines"], triton.cdiv(cfg["positions"], meta["BLOCK_M"]), triton.cdiv(cfg["c"], BLOCK_VALUES))
        _out_kernel[grid](
            q,
            *_strides(q, branch),
            k,
            *_strides(k, branch),
            v,
            *_strides(v, branch),
            lse,
            *_strides(lse, branch),
            y,
            *_strides(y, branch),
            res,
            *_strides(res, branch),
            gamma_arg,
            cfg["lines"],
            cfg["positions"],
            cfg["cq"],
            cfg["c"],
            MASK_DIAG=mask_diag,
            ACCUMULATE=i > 0,
            HAS_GAMMA=gamma is not None,
            HAS_RESIDUAL=residual is not None,
            BLOCK_C=BLOCK_VALUES,
            **meta,
        )
    return y, lse


@_forward_op.register_fake
def _forward_fake(
    q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    batch, _, height, width = q.shape
    return _new_output(v, gamma, residual), q.new_empty((batch, height, width), dtype=torch.float32)


@torch.library.custom_op("ccnet::cca_triton_backward", mutates_args=())
def _backward_op(
    grad_y: Tensor, q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], lse: Tensor
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    grad_y = grad_y.to(v.dtype)  # y is float32 for half values with a float32 γ (autocast)
    delta = torch.empty_like(lse)
    grad_q = torch.empty_like(q, dtype=torch.float32)
    grad_k = torch.empty_like(k, dtype=torch.float32)
    grad_v = torch.empty_like(v)
    gamma_arg = gamma if gamma is not None else lse  # placeholder pointer, never read
    for kernel in (_delta_kernel, _dq_kernel, _dk_kernel):
        for i, (branch, mask_diag) in enumerate(_BRANCHES):
            cfg = _launch_config(q, v, branch)
            meta = cfg["meta"]
            args = [
                q,
                *_strides(q, branch),
                k,
                *_strides(k, branch),
                v,
                *_strides(v, branch),
                grad_y,
                *_strides(grad_y, branch),
                lse,
                *_strides(lse, branch),
                delta,
            ]
            flags = dict(MASK_DIAG=mask_diag, ACCUMULATE=i > 0, BLOCK_C=BLOCK_VALUES, **meta)
            if kernel is _delta_kernel:
                grid: Tuple[int, ...] = (cfg["batch_lines"], triton.cdiv(cfg["positions"], meta["BLOCK_M"]))
            else:  # dq: a block of queries per program; dk: a block of keys
                grad = grad_q if kernel is _dq_kernel else grad_k
                args += [gamma_arg, grad, *_strides(grad, branch)]
                flags["HAS_GAMMA"] = gamma is not None
                block = meta["BLOCK_M"] if kernel is _dq_kernel else meta["BLOCK_N"]
                grid = (
                    cfg["batch_lines"],
                    triton.cdiv(cfg["positions"], block),
                    triton.cdiv(cfg["cq"], meta["BLOCK_D"]),
                )
            kernel[grid](*args, cfg["lines"], cfg["positions"], cfg["cq"], cfg["c"], **flags)
    for i, (branch, mask_diag) in enumerate(_BRANCHES):
        cfg = _launch_config(q, v, branch)
        meta = cfg["meta"]
        grid = (cfg["batch_lines"], triton.cdiv(cfg["positions"], meta["BLOCK_N"]), triton.cdiv(cfg["c"], BLOCK_VALUES))
        _dv_kernel[grid](
            q,
            *_strides(q, branch),
            k,
            *_strides(k, branch),
            grad_y,
            *_strides(grad_y, branch),
            lse,
            *_strides(lse, branch),
            gamma_arg,
            grad_v,
            *_strides(grad_v, branch),
            cfg["lines"],
            cfg["positions"],
            cfg["cq"],
            cfg["c"],
            MASK_DIAG=mask_diag,
            ACCUMULATE=i > 0,
            HAS_GAMMA=gamma is not None,
            BLOCK_C=BLOCK_VALUES,
            **meta,
        )
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v, delta


@_backward_op.register_fake
def _backward_fake(
    grad_y: Tensor, q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor], lse: Tensor
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(lse)


def _setup_context(ctx, inputs: Tuple, output: Tuple[Tensor, Tensor]) -> None:
    q, k, v, gamma, residual = inputs
    ctx.save_for_backward(q, k, v, gamma, output[1])
    ctx.residual_dtype = None if residual is None else residual.dtype


def _backward(ctx, grad_y: Tensor, grad_lse: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    q, k, v, gamma, lse = ctx.saved_tensors
    grad_q, grad_k, grad_v, delta = _backward_op(grad_y, q, k, v, gamma, lse)
    grad_gamma = None if gamma is None else delta.sum().to(gamma.dtype).reshape(gamma.shape)
    grad_residual = None if ctx.residual_dtype is None else grad_y.to(ctx.residual_dtype)
    return grad_q, grad_k, grad_v, grad_gamma, grad_residual


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def criss_cross_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor] = None, residual: Optional[Tensor] = None
) -> Tensor:
    """Fused criss-cross aggregation ``residual + γ · (out_H + out_W)`` (terms optional).

    Args:
        k: keys, in q's dtype.
        gamma: one-element scale (the module's γ); ``None`` for 1.
        residual: added after scaling, shaped like v; ``None`` for none.

    Returns:
        The aggregation, in the promoted dtype of v, γ and the residual.

    Shape:
        q, k: (B, C', H, W). v, residual: (B, C, H, W). Returns (B, C, H, W).
    """
    if not (q.is_cuda or interpreting()):
        raise ValueError(
            f"the Triton criss-cross attention needs CUDA tensors, got {q.device}: use "
            f"implementation='lean' (or use_implementation('lean'), CCNET_CCA_IMPL=lean) on CPU, "
            f"or set TRITON_INTERPRET=1 before importing triton to run its (slow) CPU interpreter"
        )
    supported = (torch.float32, torch.float16, torch.bfloat16)
    if q.dtype not in supported or v.dtype not in supported or k.dtype != q.dtype:
        raise ValueError(
            f"the Triton criss-cross attention takes float32/float16/bfloat16 inputs with q and k of "
            f"one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}: use implementation='lean' otherwise"
        )
    check_scale_and_residual(v, gamma, residual)
    if gamma is not None:
        gamma = gamma.reshape(1)  # y's dtype promotes v, γ and the residual alike (as in the lean path)
    return _forward_op(q, k, v, gamma, residual)[0]
