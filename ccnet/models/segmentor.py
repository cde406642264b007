"""The CCNet segmentor (arXiv 1811.11721, Fig. 2): dilated backbone → context head (+ auxiliary FCN
head on layer3 during training) → bilinear upsampling to the input size; and ``build_model``."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Mapping, Optional

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops.misc import FrozenBatchNorm2d

from ccnet.errors import ConfigError
from ccnet.models.backbones import Backbone, build_backbone
from ccnet.models.heads import ContextHead, FCNHead, build_head
from ccnet.models.pretrained import load_backbone_weights
from ccnet.utils.config import value_or

log = logging.getLogger(__name__)

NORMS = ("bn", "syncbn", "frozen_bn")


class CCNet(nn.Module):
    """Backbone, context head and optional auxiliary head.

    ``forward`` returns logits upsampled to the input size: ``"out"``, and in training mode ``"aux"`` (with
    an auxiliary head) and ``"ccl_features"`` (with ``ccl_proj``: the fused features it projects, the input
    of :class:`ccnet.engine.losses.CategoryConsistentLoss`). ``return_features=True`` adds ``"features"``,
    the head's fused features before the classifier, at feature resolution.

    Args:
        backbone: module returning ``{"layer3", "layer4"}`` features.
        head: context head mapping layer4 features to logits.
        aux_head: optional head mapping layer3 features to logits.
        num_classes: number of classes the heads predict.
        align_corners: ``align_corners`` of the final bilinear upsampling.
        ccl_proj: optional 1×1 conv reducing the fused features for the category-consistent loss.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: ContextHead,
        aux_head: Optional[nn.Module],
        num_classes: int,
        align_corners: bool = False,
        ccl_proj: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.ccl_proj = ccl_proj

    def _upsample(self, logits: Tensor, size) -> Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, images: Tensor, return_features: bool = False) -> Dict[str, Tensor]:
        size = images.shape[-2:]
        feats = self.backbone(images)
        outputs: Dict[str, Tensor] = {}
        with_ccl = self.training and self.ccl_proj is not None
        if return_features or with_ccl:
            fused = self.head.features(feats["layer4"])
            if return_features:
                outputs["features"] = fused
            if with_ccl and self.ccl_proj is not None:
                outputs["ccl_features"] = self.ccl_proj(fused)
            logits = self.head.classify(fused)
        else:
            logits = self.head(feats["layer4"])
        outputs["out"] = self._upsample(logits, size)
        if self.training and self.aux_head is not None:
            outputs["aux"] = self._upsample(self.aux_head(feats["layer3"]), size)
        return outputs


def make_norm_layer(name: str) -> Callable[[int], nn.Module]:
    """``bn`` (BatchNorm2d), ``syncbn`` (BatchNorm2d, converted to SyncBatchNorm by the trainer under a process
    group) or ``frozen_bn`` (fixed statistics and affine parameters, for small per-GPU batches).
    """
    if name in ("bn", "syncbn"):
        return nn.BatchNorm2d
    if name == "frozen_bn":
        return FrozenBatchNorm2d
    raise ConfigError(f"unknown model.norm {name!r}: expected one of {', '.join(NORMS)}")


def build_model(cfg: Mapping[str, Any], pretrained: bool = True) -> CCNet:
    """Build a CCNet from a model config (``configs/model/*.yaml``; every key: docs/models.md): backbone
    ``BACKBONES[cfg.backbone]``, context head ``HEADS[cfg.context]``, the auxiliary FCN head (``aux``) and the
    CCL projection (``ccl``).

    Args:
        cfg: the ``model`` config node (a DictConfig or plain dict) with ``num_classes`` resolved.
        pretrained: load ``weights`` into the backbone; False when a checkpoint will overwrite every tensor
            (nothing is read or downloaded then).

    Returns:
        The model, in training mode.

    Raises:
        PretrainedWeightsError: the backbone weights cannot be obtained or do not fit.
    """
    num_classes = cfg.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model.num_classes must be a positive integer, got {num_classes!r}")
    norm_layer = make_norm_layer(value_or(cfg, "norm", "bn"))
    backbone = build_backbone(cfg, norm_layer)
    weights = cfg.get("weights")
    if pretrained and weights:
        load_backbone_weights(
            backbone,
            str(weights),
            depth=getattr(backbone, "torchvision_depth", None),
            strict=bool(value_or(cfg, "weights_strict", True)),
        )
    elif pretrained and not getattr(backbone, "trains_from_scratch", False):
        log.warning(
            "model.weights is null: the %s backbone starts from random weights, not ImageNet "
            "(docs/models.md lists the weights each model config takes)",
            cfg["backbone"],
        )
    activation = value_or(cfg, "activation", "relu")
    head = build_head(backbone.out_channels["layer4"], num_classes, cfg, norm_layer)
    aux_head = None
    if value_or(cfg, "aux", True):
        aux_head = FCNHead(
            backbone.out_channels["layer3"],
            num_classes,
            channels=int(value_or(cfg, "aux_channels", 256)),
            dropout=float(value_or(cfg, "dropout", 0.1)),
            conv_bias=bool(value_or(cfg, "aux_conv_bias", False)),
            norm_layer=norm_layer,
            activation=activation,
        )
    ccl_proj = None
    if value_or(cfg, "ccl", False):
        ccl_proj = nn.Conv2d(
            int(value_or(cfg, "bottleneck_channels", 512)), int(value_or(cfg, "ccl_channels", 16)), kernel_size=1
        )
    return CCNet(
        backbone,
        head,
        aux_head,
        num_classes,
        align_corners=bool(value_or(cfg, "align_corners", False)),
        ccl_proj=ccl_proj,
    )
