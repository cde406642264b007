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
from ccnet.models.backbones import ResNetBackbone, TinyBackbone
from ccnet.models.cca import choices as cca_choices
from ccnet.models.heads import FCNHead, NonLocalHead, RCCAHead
from ccnet.models.pretrained import load_backbone_weights

log = logging.getLogger(__name__)

CONTEXTS = ("rcca", "nonlocal", "none")
NORMS = ("bn", "syncbn", "frozen_bn")
BACKBONES = ("resnet50", "resnet101", "resnet101_official", "resnet50_v1c", "resnet101_v1c", "tiny")
TORCHVISION_DEPTHS = {"resnet50": 50, "resnet101": 101}  # backbones torchvision weight names resolve for


class CCNet(nn.Module):
    """Backbone, context head and optional auxiliary head.

    ``forward`` returns a dict of logits upsampled to the input size: ``"out"`` always, ``"aux"``
    in training mode when an auxiliary head exists. With ``return_features=True`` it also returns
    ``"features"``, the head's fused features before the classifier (at feature resolution). With a
    ``ccl_proj`` it returns ``"ccl_features"`` in training mode: those features projected by it, the
    input of the category-consistent loss (:class:`ccnet.engine.losses.CategoryConsistentLoss`).

    Args:
        backbone: module returning ``{"layer3", "layer4"}`` features.
        head: context head mapping layer4 features to logits.
        aux_head: optional head mapping layer3 features to logits.
        num_classes: number of classes the heads predict.
        align_corners: ``align_corners`` of the final bilinear upsampling.
        ccl_proj: optional 1×1 conv reducing the fused features for the category-consistent loss.
    """

    def __init__(self, backbone: nn.Module, head: RCCAHead, aux_head: Optional[nn.Module],
                 num_classes: int, align_corners: bool = False, ccl_proj: Optional[nn.Module] = None) -> None:
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
            if with_ccl:
                outputs["ccl_features"] = self.ccl_proj(fused)
            logits = self.head.bottleneck[3:](fused)
        else:
            logits = self.head(feats["layer4"])
        outputs["out"] = self._upsample(logits, size)
        if self.training and self.aux_head is not None:
            outputs["aux"] = self._upsample(self.aux_head(feats["layer3"]), size)
        return outputs


def make_norm_layer(name: str) -> Callable[[int], nn.Module]:
    """``bn`` (BatchNorm2d), ``syncbn`` (BatchNorm2d, converted to SyncBatchNorm by the trainer when a
    process group exists — ``nn.SyncBatchNorm.convert_sync_batchnorm``) or ``frozen_bn`` (fixed
    statistics and affine parameters, for small per-GPU batches when fine-tuning)."""
    if name in ("bn", "syncbn"):
        return nn.BatchNorm2d
    if name == "frozen_bn":
        return FrozenBatchNorm2d
    raise ConfigError(f"unknown model.norm {name!r}: expected one of {', '.join(NORMS)}")


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def build_backbone(cfg: Mapping[str, Any], norm_layer: Callable[[int], nn.Module]) -> nn.Module:
    name = cfg["backbone"]
    if name in ("resnet50", "resnet101"):
        return ResNetBackbone(depth=int(name[len("resnet"):]), norm_layer=norm_layer)
    if name == "resnet101_official":
        return ResNetBackbone(depth=101, norm_layer=norm_layer, deep_stem=True, ceil_mode=True,
                              contract_dilation=False, multi_grid=tuple(_get(cfg, "multi_grid", (1, 1, 1))))
    if name in ("resnet50_v1c", "resnet101_v1c"):
        # mmsegmentation's ResNetV1c: deep stem 32-32-64, plain max-pool, contracted dilation
        return ResNetBackbone(depth=int(name[len("resnet"):-len("_v1c")]), norm_layer=norm_layer, deep_stem=True,
                              stem_channels=64)
    if name == "tiny":
        return TinyBackbone(widths=tuple(_get(cfg, "tiny_widths", (32, 64, 128))),
                            layer4_convs=int(_get(cfg, "tiny_layer4_convs", 1)), norm_layer=norm_layer)
    raise ConfigError(f"unknown model.backbone {name!r}: expected one of {', '.join(BACKBONES)}")


def build_model(cfg: Mapping[str, Any], pretrained: bool = True) -> CCNet:
    """Build a CCNet from a model config (``configs/model/*.yaml``).

    Keys: ``backbone`` (resnet50 | resnet101 | resnet101_official | resnet50_v1c | resnet101_v1c |
    tiny), ``weights`` (null, a torchvision enum name such as ``IMAGENET1K_V2``, ``timm:NAME``, or a
    path to a backbone state dict in torchvision, timm, mmseg or the release's naming; see
    :mod:`ccnet.models.pretrained`), ``weights_strict``,
    ``norm`` (bn | syncbn | frozen_bn), ``context`` (rcca | nonlocal | none), ``recurrence``,
    ``num_classes``, ``head_channels`` (null = backbone channels / 4), ``bottleneck_channels``,
    ``dropout``, ``activation`` (relu | leaky_relu), ``context_init`` (initial scale of the context
    residual: the attention's gamma, the non-local block's output norm; default 0), ``aux`` (bool), ``aux_channels``,
    ``aux_conv_bias``, ``align_corners``, ``ccl`` (bool), ``ccl_channels`` (default 16) and
    ``cca_impl`` (auto | reference | lean | triton: the RCCA head's criss-cross implementation, see
    :func:`ccnet.models.cca.select_implementation`; null or absent = the ``CCNET_CCA_IMPL``
    environment variable, else auto; a :func:`ccnet.models.cca.use_implementation` block, as export
    uses, overrides it); tiny backbone: ``tiny_widths``, ``tiny_layer4_convs``.

    Args:
        cfg: the ``model`` config node (a DictConfig or plain dict) with ``num_classes`` resolved.
        pretrained: load ``weights`` into the backbone. False when a checkpoint will overwrite every
            tensor anyway (evaluation, resume, fine-tuning, conversion, benchmarks): nothing is read
            or downloaded then.

    Returns:
        The model, in training mode.

    Raises:
        PretrainedWeightsError: the backbone weights cannot be obtained or do not fit.
    """
    num_classes = cfg.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model.num_classes must be a positive integer, got {num_classes!r}")
    cca_impl = cfg.get("cca_impl")
    if cca_impl is not None and cca_impl not in cca_choices():
        raise ConfigError(f"unknown model.cca_impl {cca_impl!r}: expected one of {', '.join(cca_choices())}, "
                          f"or null for the CCNET_CCA_IMPL environment variable (else auto)")
    norm_layer = make_norm_layer(_get(cfg, "norm", "bn"))
    backbone = build_backbone(cfg, norm_layer)
    weights = cfg.get("weights")
    if pretrained and weights:
        depth = TORCHVISION_DEPTHS.get(cfg["backbone"])
        load_backbone_weights(backbone, str(weights), depth=depth, strict=bool(_get(cfg, "weights_strict", True)))
    elif pretrained and isinstance(backbone, ResNetBackbone):
        log.warning("model.weights is null: the %s backbone starts from random weights, not ImageNet "
                    "(docs/models.md lists the weights each model config takes)", cfg["backbone"])
    in_channels = backbone.out_channels["layer4"]
    context = _get(cfg, "context", "rcca")
    activation = _get(cfg, "activation", "relu")
    head_kwargs = dict(inter_channels=cfg.get("head_channels"),
                       bottleneck_channels=int(_get(cfg, "bottleneck_channels", 512)),
                       dropout=float(_get(cfg, "dropout", 0.1)), norm_layer=norm_layer, activation=activation)
    context_init = float(_get(cfg, "context_init", 0.0))
    if context == "rcca":
        head = RCCAHead(in_channels, num_classes, recurrence=int(_get(cfg, "recurrence", 2)),
                        context_init=context_init, cca_implementation=cca_impl, **head_kwargs)
    elif context == "none":
        head = RCCAHead(in_channels, num_classes, recurrence=0, **head_kwargs)
    elif context == "nonlocal":
        head = NonLocalHead(in_channels, num_classes, context_init=context_init, **head_kwargs)
    else:
        raise ConfigError(f"unknown model.context {context!r}: expected one of {', '.join(CONTEXTS)}")
    aux_head = None
    if _get(cfg, "aux", True):
        aux_head = FCNHead(backbone.out_channels["layer3"], num_classes,
                           channels=int(_get(cfg, "aux_channels", 256)),
                           dropout=float(_get(cfg, "dropout", 0.1)),
                           conv_bias=bool(_get(cfg, "aux_conv_bias", False)),
                           norm_layer=norm_layer, activation=activation)
    ccl_proj = None
    if _get(cfg, "ccl", False):
        ccl_proj = nn.Conv2d(head_kwargs["bottleneck_channels"], int(_get(cfg, "ccl_channels", 16)), kernel_size=1)
    return CCNet(backbone, head, aux_head, num_classes, align_corners=bool(_get(cfg, "align_corners", False)),
                 ccl_proj=ccl_proj)
