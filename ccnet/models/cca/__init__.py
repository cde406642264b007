"""Criss-cross attention (CCNet, Huang et al., ICCV 2019 / TPAMI 2020, arXiv 1811.11721).

Every position attends to the H + W − 1 positions of its row and column; two recurrent applications
with shared weights reach every pixel (u → (h_u, w_v) → v). Modules, lowest first:
``checks`` (input checks), ``reference`` (the einsum definition), ``lean_ops`` → ``lean`` and
``lean_block`` (the CPU path), ``triton_kernels`` (fused CUDA kernels), ``registry`` (name →
implementation, and which one runs), ``operator`` (:func:`criss_cross_attention`), ``module``
(:class:`CrissCrossAttention`).
"""

from ccnet.models.cca.module import CrissCrossAttention
from ccnet.models.cca.operator import criss_cross_attention
from ccnet.models.cca.reference import criss_cross_attention_reference, criss_cross_attention_weights
from ccnet.models.cca.registry import (
    IMPL_ENV,
    IMPLEMENTATIONS,
    TRITON_INSTALLED,
    Implementation,
    choices,
    select_implementation,
    use_implementation,
)

__all__ = [
    "IMPLEMENTATIONS",
    "IMPL_ENV",
    "TRITON_INSTALLED",
    "CrissCrossAttention",
    "Implementation",
    "choices",
    "criss_cross_attention",
    "criss_cross_attention_reference",
    "criss_cross_attention_weights",
    "select_implementation",
    "use_implementation",
]
