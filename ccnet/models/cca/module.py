"""The criss-cross attention module of CCNet's RCCA head: ``x + γ · CCA(Wq x, Wk x, Wv x)``."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ccnet.errors import ConfigError
from ccnet.models.cca.operator import criss_cross_attention
from ccnet.models.cca.reference import criss_cross_attention_weights
from ccnet.models.cca.registry import IMPLEMENTATIONS, check_choice, select_implementation


class CrissCrossAttention(nn.Module):
    """Criss-cross attention module: ``x + γ · CCA(Wq x, Wk x, Wv x)``, parameters named as in the official release.

    Args:
        in_channels: channels C of the input (and of the values).
        reduction: queries and keys have ``in_channels // reduction`` channels (paper: 8).
        gamma_init: initial ``gamma``; 0 (paper) makes a new module the identity.
        implementation: ``auto``, ``reference``, ``lean`` or ``triton`` for this module; ``None`` defers to
            ``CCNET_CCA_IMPL``, else ``auto`` (:func:`~ccnet.models.cca.registry.select_implementation`).
            Not part of the state dict.

    With a fused ``block`` (``lean``), forward hooks on ``query_conv``/``key_conv``/``value_conv`` do not
    fire and the output is channels_last memory whatever the input's layout (same values).

    Shape:
        x: (B, C, H, W) -> (B, C, H, W).

    Raises:
        ConfigError: ``in_channels // reduction`` is 0, or an unknown implementation.
    """

    def __init__(
        self, in_channels: int, reduction: int = 8, gamma_init: float = 0.0, implementation: Optional[str] = None
    ) -> None:
        super().__init__()
        if in_channels // reduction < 1:
            raise ConfigError(f"in_channels={in_channels} // reduction={reduction} leaves no query/key channels")
        if implementation is not None:
            check_choice(implementation, "CrissCrossAttention(implementation=...)")
        self.implementation = implementation
        inner = in_channels // reduction
        self.query_conv = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init)))

    def forward(self, x: Tensor) -> Tensor:
        choice = select_implementation(None, x.device, self.implementation)
        block = IMPLEMENTATIONS[choice].block
        if block is not None:
            projections = (
                self.query_conv.weight,
                self.query_conv.bias,
                self.key_conv.weight,
                self.key_conv.bias,
                self.value_conv.weight,
                self.value_conv.bias,
            )
            return block(x, projections, self.gamma)
        # x + γ·out fused into the operator: autograd then keeps no copy of out for γ's gradient
        return criss_cross_attention(
            self.query_conv(x),
            self.key_conv(x),
            self.value_conv(x),
            gamma=self.gamma,
            residual=x,
            implementation=choice,
        )

    def attention_weights(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """The (column, row) attention this module computes for ``x``; see
        :func:`~ccnet.models.cca.reference.criss_cross_attention_weights`."""
        return criss_cross_attention_weights(self.query_conv(x), self.key_conv(x))
