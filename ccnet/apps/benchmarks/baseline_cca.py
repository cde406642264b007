"""The widely copied criss-cross attention formulation (arXiv 1811.11721, Eq. 1–2), the baseline of
``tools/benchmark.py cca``; no model uses it.

The official release's pure-PyTorch form that mmsegmentation and most ports copy: permuted contiguous
copies into (B·W, ·, H) and (B·H, ·, W) batches, ``bmm`` energies, a (B·W, H, H) −inf diagonal matrix
created on every call, softmax over the concatenated energies, two more ``bmm`` and permutes back. The one
change: the −inf matrix is built on the input's device, not with ``.cuda()``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


def _inf_diagonal(batch_width: int, height: int, like: Tensor) -> Tensor:
    """The per-call (B·W, H, H) matrix with −inf on the diagonal and 0 elsewhere (as copied)."""
    inf = torch.tensor(float("inf"), device=like.device, dtype=like.dtype)
    return -torch.diag(inf.repeat(height), 0).unsqueeze(0).repeat(batch_width, 1, 1)


def baseline_criss_cross_attention(proj_query: Tensor, proj_key: Tensor, proj_value: Tensor) -> Tensor:
    """``out_H + out_W`` exactly as the copied formulation computes it from the three projections.

    Shape:
        proj_query, proj_key: (B, C', H, W). proj_value: (B, C, H, W). Returns (B, C, H, W).
    """
    batch, _, height, width = proj_query.size()
    # (B*W, H, C') and (B*H, W, C')
    proj_query_h = proj_query.permute(0, 3, 1, 2).contiguous().view(batch * width, -1, height).permute(0, 2, 1)
    proj_query_w = proj_query.permute(0, 2, 1, 3).contiguous().view(batch * height, -1, width).permute(0, 2, 1)
    # (B*W, C', H) and (B*H, C', W)
    proj_key_h = proj_key.permute(0, 3, 1, 2).contiguous().view(batch * width, -1, height)
    proj_key_w = proj_key.permute(0, 2, 1, 3).contiguous().view(batch * height, -1, width)
    # (B*W, C, H) and (B*H, C, W)
    proj_value_h = proj_value.permute(0, 3, 1, 2).contiguous().view(batch * width, -1, height)
    proj_value_w = proj_value.permute(0, 2, 1, 3).contiguous().view(batch * height, -1, width)
    # (B, H, W, H) and (B, H, W, W)
    energy_h = torch.bmm(proj_query_h, proj_key_h) + _inf_diagonal(batch * width, height, proj_query_h)
    energy_h = energy_h.view(batch, width, height, height).permute(0, 2, 1, 3)
    energy_w = torch.bmm(proj_query_w, proj_key_w).view(batch, height, width, width)
    concate = torch.softmax(torch.cat([energy_h, energy_w], 3), dim=3)  # (B, H, W, H+W)
    # (B*W, H, H) and (B*H, W, W)
    att_h = concate[:, :, :, 0:height].permute(0, 2, 1, 3).contiguous().view(batch * width, height, height)
    att_w = concate[:, :, :, height : height + width].contiguous().view(batch * height, width, width)
    # back to (B, C, H, W)
    out_h = torch.bmm(proj_value_h, att_h.permute(0, 2, 1)).view(batch, width, -1, height).permute(0, 2, 3, 1)
    out_w = torch.bmm(proj_value_w, att_w.permute(0, 2, 1)).view(batch, height, -1, width).permute(0, 2, 1, 3)
    return out_h + out_w


class BaselineCrissCrossAttention(nn.Module):
    """Baseline criss-cross attention module, ``γ · (out_H + out_W) + x``.

    Parameter names match :class:`ccnet.models.cca.CrissCrossAttention`, so both load each other's state dict.

    Args:
        in_channels: channels C of the input.
        reduction: queries and keys have ``in_channels // reduction`` channels.

    Shape:
        x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, in_channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = in_channels // reduction
        self.query_conv = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        out = baseline_criss_cross_attention(self.query_conv(x), self.key_conv(x), self.value_conv(x))
        return self.gamma * out + x
