"""Independent, loop-based criss-cross attention: the test oracle for every fast implementation.

For each pixel u = (h, w) it gathers the H + W - 1 neighbours of the criss-cross path explicitly —
the column (i, w) for i != h, then the row (h, j) for every j (u itself once) — takes one softmax
over their affinities and sums the values. Nothing is shared with ``ccnet.models.cca``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def criss_cross_neighbours(height: int, width: int, h: int, w: int) -> list:
    """Positions on the criss-cross path of (h, w), u itself exactly once."""
    column = [(i, w) for i in range(height) if i != h]
    row = [(h, j) for j in range(width)]
    return column + row


def loop_criss_cross_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Reference ``out_H + out_W`` (no γ, no residual), computed pixel by pixel in float64 when the
    input is float64 and in the input dtype otherwise (softmax in float32 for half inputs).

    Shape:
        q, k: (B, C', H, W). v: (B, C, H, W). Returns (B, C, H, W).
    """
    batch, _, height, width = q.shape
    rows = []
    for b in range(batch):
        out = torch.zeros_like(v[b])
        for h in range(height):
            for w in range(width):
                pos = criss_cross_neighbours(height, width, h, w)
                keys = torch.stack([k[b, :, i, j] for i, j in pos])  # (H+W-1, C')
                vals = torch.stack([v[b, :, i, j] for i, j in pos])  # (H+W-1, C)
                energy = keys @ q[b, :, h, w]
                acc = torch.float64 if q.dtype == torch.float64 else torch.float32
                attn = torch.softmax(energy.to(acc), dim=0).to(v.dtype)
                out[:, h, w] = attn @ vals
        rows.append(out)
    return torch.stack(rows)
