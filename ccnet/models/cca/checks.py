"""Input checks every criss-cross attention implementation shares."""

from __future__ import annotations

from typing import Optional

from torch import Tensor


def check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    """q and k of one (B, C', H, W) shape, v (B, C, H, W) over the same batch and positions.

    Raises:
        ValueError: naming the shapes received.
    """
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4:
        raise ValueError(
            f"criss_cross_attention expects q, k of equal shape (B, C', H, W) and v (B, C, H, W); "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if v.shape[0] != q.shape[0] or v.shape[2:] != q.shape[2:]:
        raise ValueError(f"v {tuple(v.shape)} must share batch and spatial size with q {tuple(q.shape)}")


def check_scale_and_residual(v: Tensor, gamma: Optional[Tensor], residual: Optional[Tensor]) -> None:
    """γ must be one number (its gradient is a single sum) and the residual shaped like v.

    Raises:
        ValueError: naming the shape received.
    """
    if gamma is not None and gamma.numel() != 1:
        raise ValueError(f"gamma must have one element (the module's scalar γ), got shape {tuple(gamma.shape)}")
    if residual is not None and residual.shape != v.shape:
        raise ValueError(f"residual {tuple(residual.shape)} must have the values' shape {tuple(v.shape)}")
