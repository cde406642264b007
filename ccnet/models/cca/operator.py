"""The criss-cross attention operator (arXiv 1811.11721, Eq. 1–2) with the implementation chosen by
:func:`ccnet.models.cca.registry.select_implementation`."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ccnet.models.cca.checks import check_inputs, check_scale_and_residual
from ccnet.models.cca.registry import IMPLEMENTATIONS, select_implementation


def criss_cross_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gamma: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    implementation: Optional[str] = None,
) -> Tensor:
    """Criss-cross aggregation of values over each position's row and column, optionally fused with the
    module's residual: ``residual + gamma * (out_H + out_W)``.

    Every implementation (:data:`ccnet.models.cca.registry.IMPLEMENTATIONS`) computes the same function.

    Args:
        gamma: one-element scale of the aggregation (the module's γ); ``None`` for 1.
        residual: added after scaling (the module's input); ``None`` for none.
        implementation: ``auto``, ``reference``, ``lean`` or ``triton``; ``None`` leaves the choice to
            :func:`~ccnet.models.cca.registry.select_implementation`.

    Shape:
        q, k: (B, C', H, W). v, residual: (B, C, H, W). gamma: one element, e.g. (1,).
        Returns (B, C, H, W), in v's dtype when gamma and residual are ``None``.

    Raises:
        ValueError: shapes that do not fit.
        ConfigError: an unknown implementation name.
    """
    check_inputs(q, k, v)
    check_scale_and_residual(v, gamma, residual)
    choice = select_implementation(implementation, q.device)
    return IMPLEMENTATIONS[choice].attention(q, k, v, gamma, residual)
