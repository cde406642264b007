"""Segmentation heads: the recurrent criss-cross head (RCCA), its non-local peer, and the FCN
auxiliary head (CCNet, arXiv 1811.11721, Sec. 3.1 and Fig. 2).

RCCA head::

    x ─ conva (3×3, C→C/4) ─ [CCA]×R (shared weights) ─ convb (3×3) ─┐
    └──────────────────────────────────────────────────────── concat ┴─ bottleneck (3×3 → 512)
                                                                        ─ Dropout2d(0.1) ─ 1×1 classifier
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ccnet.errors import ConfigError
from ccnet.models.cca import CrissCrossAttention
from ccnet.models.cca import choices as cca_choices
from ccnet.utils.config import value_or

NormLayer = Callable[[int], nn.Module]


def make_activation(name: str) -> nn.Module:
    """``relu`` or ``leaky_relu`` (slope 0.01, the activation inside the official release's
    InPlace-ABN layers of the head)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    raise ConfigError(f"unknown activation {name!r}: expected 'relu' or 'leaky_relu'")


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    norm_layer: NormLayer,
    activation: str = "relu",
    bias: bool = False,
) -> nn.Sequential:
    """``Conv2d`` (same padding) → norm → activation, indexed 0, 1, 2 like the official release."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
        norm_layer(out_channels),
        make_activation(activation),
    )


class ContextHead(nn.Module):
    """What :class:`ccnet.models.segmentor.CCNet` calls on a context head: logits of layer4 features,
    and the same in two steps, :meth:`features` then :meth:`classify`."""

    @property
    def shows_attention(self) -> bool:
        """Whether :func:`ccnet.models.attention_maps.rcca_attention_maps` can draw its attention."""
        return False

    def features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def classify(self, features: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


class RCCAHead(ContextHead):
    """Recurrent criss-cross attention head.

    Args:
        in_channels: channels of the backbone's last stage (2048 for ResNet-50/101).
        num_classes: number of output classes.
        recurrence: how many times the (weight-shared) criss-cross module is applied; 0 gives the
            plain baseline without attention.
        inter_channels: channels after ``conva``; default ``in_channels // 4`` (512 for ResNet).
        bottleneck_channels: channels of the fused features before the classifier (paper: 512).
        dropout: Dropout2d probability before the classifier.
        norm_layer: normalisation constructor taking the channel count.
        activation: ``relu`` or ``leaky_relu``.
        context_init: initial scale of the context branch's residual (the attention's ``gamma``);
            0, the paper's choice, starts the head as the plain baseline.
        cca_implementation: the criss-cross module's ``implementation`` (``auto``, ``reference``,
            ``lean``, ``triton``); ``None`` inherits ``CCNET_CCA_IMPL``, else ``auto``
            (:class:`ccnet.models.cca.CrissCrossAttention`).

    Shape:
        x: (B, in_channels, h, w) -> logits (B, num_classes, h, w).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        recurrence: int = 2,
        inter_channels: Optional[int] = None,
        bottleneck_channels: int = 512,
        dropout: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        activation: str = "relu",
        context_init: float = 0.0,
        cca_implementation: Optional[str] = None,
    ) -> None:
        super().__init__()
        if recurrence < 0:
            raise ConfigError(f"recurrence must be >= 0, got {recurrence}")
        inter_channels = inter_channels or in_channels // 4
        self.inter_channels = inter_channels
        self.recurrence = recurrence
        self.conva = conv_norm_act(in_channels, inter_channels, 3, norm_layer, activation)
        self.cca = (
            CrissCrossAttention(inter_channels, gamma_init=context_init, implementation=cca_implementation)
            if recurrence > 0
            else None
        )
        self.convb = conv_norm_act(inter_channels, inter_channels, 3, norm_layer, activation)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + inter_channels, bottleneck_channels, 3, padding=1, bias=False),
            norm_layer(bottleneck_channels),
            make_activation(activation),
            nn.Dropout2d(dropout),
            nn.Conv2d(bottleneck_channels, num_classes, kernel_size=1),
        )

    def context(self, x: Tensor) -> Tensor:
        """Features after ``convb``: the aggregated context, before fusion with ``x``."""
        out = self.conva(x)
        channels_last = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        for _ in range(self.recurrence):
            assert self.cca is not None  # built whenever recurrence >= 1
            out = self.cca(out)
        # the lean criss-cross path returns channels_last memory (its positions-last layout), so
        # recurrences after the first read it without conversion; convb gets conva's layout back
        return self.convb(
            out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        )

    def features(self, x: Tensor) -> Tensor:
        """Fused features after the bottleneck's activation (input to dropout and classifier)."""
        fused = torch.cat([x, self.context(x)], dim=1)
        return self.bottleneck[:3](fused)

    def classify(self, features: Tensor) -> Tensor:
        """Logits of :meth:`features`' output (dropout, then the 1×1 classifier)."""
        return self.bottleneck[3:](features)

    @property
    def shows_attention(self) -> bool:
        return self.cca is not None and self.recurrence > 0


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al., CVPR 2018) with a residual connection.

    ``y = x + W_z(softmax(θ(x)ᵀ φ(x)) g(x))`` over all HW positions; θ, φ, g are 1×1 convs to
    ``inter_channels`` and ``W_z`` a 1×1 conv + norm back to C, its norm's scale initialised to
    ``out_scale_init``: zero (the original paper) starts the block as the identity.

    Shape:
        x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: Optional[int] = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        out_scale_init: float = 0.0,
    ) -> None:
        super().__init__()
        inter_channels = inter_channels or max(in_channels // 2, 1)
        self.theta = nn.Conv2d(in_channels, inter_channels, 1)
        self.phi = nn.Conv2d(in_channels, inter_channels, 1)
        self.g = nn.Conv2d(in_channels, inter_channels, 1)
        self.out = nn.Sequential(nn.Conv2d(inter_channels, in_channels, 1, bias=False), norm_layer(in_channels))
        norm = self.out[1]
        assert isinstance(norm.weight, Tensor), "NonLocalBlock's norm layer needs an affine weight"
        nn.init.constant_(norm.weight, float(out_scale_init))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        phi = self.phi(x).flatten(2)  # (B, C', HW)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        attn = torch.softmax(torch.bmm(theta, phi).float(), dim=-1).to(g.dtype)  # (B, HW, HW)
        y = torch.bmm(attn, g).transpose(1, 2).reshape(b, -1, h, w)  # (B, C', H, W)
        return x + self.out(y)


class NonLocalHead(RCCAHead):
    """The RCCA head's skeleton with one non-local block (inter channels C/2) in place of the
    criss-cross loop — the ablation peer of the paper's Table 4.

    Args:
        in_channels, num_classes, inter_channels, bottleneck_channels, dropout, norm_layer,
        activation: as in :class:`RCCAHead`.
        context_init: initial scale of the block's ``W_z`` norm (0 = identity at the start).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        inter_channels: Optional[int] = None,
        bottleneck_channels: int = 512,
        dropout: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        activation: str = "relu",
        context_init: float = 0.0,
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            recurrence=0,
            inter_channels=inter_channels,
            bottleneck_channels=bottleneck_channels,
            dropout=dropout,
            norm_layer=norm_layer,
            activation=activation,
        )
        self.nonlocal_block = NonLocalBlock(self.inter_channels, norm_layer=norm_layer, out_scale_init=context_init)

    def context(self, x: Tensor) -> Tensor:
        return self.convb(self.nonlocal_block(self.conva(x)))


class FCNHead(nn.Module):
    """Auxiliary FCN head (deep supervision on layer3): 3×3 conv → norm → act → Dropout2d → 1×1.

    Args:
        in_channels: channels of layer3 (1024 for ResNet-50/101).
        num_classes: number of output classes.
        channels: hidden channels (official release 512, mmsegmentation 256).
        dropout: Dropout2d probability.
        conv_bias: bias in the 3×3 conv (the official release has one).
        norm_layer, activation: as in :class:`RCCAHead`.

    Shape:
        x: (B, in_channels, h, w) -> logits (B, num_classes, h, w).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        dropout: float = 0.1,
        conv_bias: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=conv_bias),
            norm_layer(channels),
            make_activation(activation),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_classes, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _common(cfg: Mapping[str, Any], norm_layer: NormLayer) -> Dict[str, Any]:
    """The keyword arguments every context head takes, from the model config."""
    return dict(
        inter_channels=cfg.get("head_channels"),
        bottleneck_channels=int(value_or(cfg, "bottleneck_channels", 512)),
        dropout=float(value_or(cfg, "dropout", 0.1)),
        norm_layer=norm_layer,
        activation=value_or(cfg, "activation", "relu"),
    )


def _rcca(in_channels: int, num_classes: int, cfg: Mapping[str, Any], norm_layer: NormLayer) -> ContextHead:
    implementation = cfg.get("cca_impl")
    if implementation is not None and implementation not in cca_choices():
        raise ConfigError(
            f"unknown model.cca_impl {implementation!r}: expected one of {', '.join(cca_choices())}, "
            "or null for the CCNET_CCA_IMPL environment variable (else auto)"
        )
    recurrence = cfg.get("recurrence")
    return RCCAHead(
        in_channels,
        num_classes,
        recurrence=2 if recurrence is None else int(recurrence),
        context_init=float(cfg.get("context_init") or 0.0),
        cca_implementation=implementation,
        **_common(cfg, norm_layer),
    )


HeadFactory = Callable[[int, int, Mapping[str, Any], NormLayer], ContextHead]

# model.context -> factory(layer4 channels, classes, model config, norm layer). A head maps layer4 features
# to logits and has features(x) (the fused features) and classify(features); shows_attention is optional.
HEADS: Dict[str, HeadFactory] = {
    "rcca": _rcca,
    "none": lambda c, k, cfg, norm: RCCAHead(c, k, recurrence=0, **_common(cfg, norm)),  # the baseline, R = 0
    "nonlocal": lambda c, k, cfg, norm: NonLocalHead(
        c, k, context_init=float(cfg.get("context_init") or 0.0), **_common(cfg, norm)
    ),
}


def build_head(in_channels: int, num_classes: int, cfg: Mapping[str, Any], norm_layer: NormLayer) -> ContextHead:
    """The context head ``cfg["context"]`` names (default ``rcca``; a key of :data:`HEADS`).

    Raises:
        ConfigError: an unknown name, listing the valid ones.
    """
    name = cfg.get("context") or "rcca"
    if name not in HEADS:
        raise ConfigError(f"unknown model.context {name!r}: expected one of {', '.join(HEADS)}")
    return HEADS[name](in_channels, num_classes, cfg, norm_layer)
