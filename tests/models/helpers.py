"""Helpers shared by the tests of the fast criss-cross implementations (lean, fused block, Triton):
seeded inputs, the loop oracle with the module's γ and residual, and outputs with their gradients."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from tests.models.reference import loop_criss_cross_attention


def make_inputs(
    b: int,
    cq: int,
    c: int,
    h: int,
    w: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Tuple[Tensor, ...]:
    """Seeded ``(q, k, v, gamma, x)``: normal samples drawn on the CPU in ``dtype`` and moved to
    ``device``, γ = 0.7.

    Shape:
        q, k: (b, cq, h, w). v, x: (b, c, h, w). gamma: (1,).
    """
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, cq, h, w, generator=g, dtype=dtype).to(device) for _ in range(2))
    v, x = (torch.randn(b, c, h, w, generator=g, dtype=dtype).to(device) for _ in range(2))
    return q, k, v, torch.tensor([0.7], device=device, dtype=dtype), x


def loop_reference(
    q: Tensor, k: Tensor, v: Tensor, gamma: Optional[Tensor] = None, x: Optional[Tensor] = None
) -> Tensor:
    """``x + γ · out`` around the loop oracle, each term left out when ``None`` (the operator's
    optional fusion)."""
    out = loop_criss_cross_attention(q, k, v)
    if gamma is not None:
        out = gamma * out
    return out if x is None else x + out


def outputs_and_grads(
    fn: Callable[..., Tensor], tensors: Sequence[Tensor], grad: Tensor
) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """``fn(*tensors)`` on fresh leaf copies and the gradients of all of them for the incoming ``grad``."""
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    return out, torch.autograd.grad(out, tensors, grad)
