"""Dilated backbones for CCNet: torchvision ResNet-50/101 and the official release's layout (output
stride 8), and a tiny CNN for CPU demos and tests. Their ImageNet weights: :mod:`ccnet.models.pretrained`.

Every backbone returns the features of its last two stages, ``{"layer3": ..., "layer4": ...}``:
layer4 feeds the context head, layer3 the auxiliary FCN head.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Sequence

import torch.nn as nn
from torch import Tensor
from torchvision.models.resnet import Bottleneck

from ccnet.errors import ConfigError
from ccnet.utils.config import value_or

NormLayer = Callable[[int], nn.Module]

RESNET_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class Backbone(nn.Module):
    """What :class:`ccnet.models.segmentor.CCNet` reads from a backbone: ``forward`` returns the
    features of its last two stages, ``{"layer3": ..., "layer4": ...}``, with ``out_channels`` channels."""

    out_channels: Dict[str, int]


class ResNetBackbone(Backbone):
    """ResNet with dilated layer3/layer4 (output stride 8).

    Args:
        depth: 50, 101 or 152.
        norm_layer: normalisation constructor taking the channel count.
        deep_stem: three 3×3 convs (stride 2 first) instead of one 7×7 conv, as in the official
            CCNet release; its modules are named conv1/bn1, conv2/bn2, conv3/bn3.
        stem_channels: output channels of the deep stem; its first two convs have half as many.
            128 gives the official release's 64-64-128, 64 mmsegmentation's ResNetV1c 32-32-64.
        ceil_mode: ``ceil_mode`` of the stem's max-pool (official release: True).
        contract_dilation: True gives torchvision's/mmsegmentation's layout where the first block
            of a dilated stage uses half the stage's dilation (1 in layer3, 2 in layer4); False dilates
            every block fully (official release: 2 in all of layer3, 4 in all of layer4).
        multi_grid: per-block dilation multipliers of layer4, cycled (official release: (1, 1, 1)).

    Shape:
        x: (B, 3, H, W) -> {"layer3": (B, 1024, H/8, W/8), "layer4": (B, 2048, H/8, W/8)}.
    """

    def __init__(
        self,
        depth: int = 101,
        norm_layer: NormLayer = nn.BatchNorm2d,
        deep_stem: bool = False,
        ceil_mode: bool = False,
        contract_dilation: bool = True,
        multi_grid: Sequence[int] = (1,),
        stem_channels: int = 128,
    ) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ConfigError(f"unsupported ResNet depth {depth}: expected one of {sorted(RESNET_LAYERS)}")
        self.deep_stem = deep_stem
        if deep_stem:
            mid = stem_channels // 2
            self.conv1 = nn.Conv2d(3, mid, 3, stride=2, padding=1, bias=False)
            self.bn1 = norm_layer(mid)
            self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
            self.bn2 = norm_layer(mid)
            self.conv3 = nn.Conv2d(mid, stem_channels, 3, padding=1, bias=False)
            self.bn3 = norm_layer(stem_channels)
            inplanes = stem_channels
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = norm_layer(64)
            inplanes = 64
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=ceil_mode)
        blocks = RESNET_LAYERS[depth]
        self.inplanes = inplanes
        self.layer1 = self._make_layer(64, blocks[0], 1, [1] * blocks[0], norm_layer)
        self.layer2 = self._make_layer(128, blocks[1], 2, [1] * blocks[1], norm_layer)
        self.layer3 = self._make_layer(
            256, blocks[2], 1, self._dilations(2, blocks[2], contract_dilation, (1,)), norm_layer
        )
        self.layer4 = self._make_layer(
            512, blocks[3], 1, self._dilations(4, blocks[3], contract_dilation, multi_grid), norm_layer
        )
        del self.inplanes
        self.out_channels = {"layer3": 1024, "layer4": 2048}
        self.torchvision_depth = None if deep_stem else depth  # torchvision's weight names fit this layout

    @staticmethod
    def _dilations(dilation: int, blocks: int, contract: bool, multi_grid: Sequence[int]) -> list:
        rates = [dilation * multi_grid[i % len(multi_grid)] for i in range(blocks)]
        if contract:
            rates[0] = dilation // 2
        return rates

    def _make_layer(
        self, planes: int, blocks: int, stride: int, dilations: Sequence[int], norm_layer: NormLayer
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                norm_layer(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, dilation=dilations[0], norm_layer=norm_layer)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=d, norm_layer=norm_layer) for d in dilations[1:]]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.deep_stem:
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        x = self.layer2(self.layer1(self.maxpool(x)))
        c3 = self.layer3(x)
        return {"layer3": c3, "layer4": self.layer4(c3)}


class TinyBackbone(Backbone):
    """A small conv/BN/ReLU network for CPU demos and tests (< 1 M parameters), output stride 8.

    Three stride-2 3×3 convs (to OS 8, ``layer3``) and ``layer4_convs`` further 3×3 convs at OS 8.
    The receptive field of ``layer4`` is 15 + 16·``layer4_convs`` input pixels (31 px by default),
    far below the 64–128 px images it is used on, so long-range context has to come from the head's
    attention — not from the backbone.

    Args:
        widths: channels of the three stride-2 stages.
        layer4_convs: number of 3×3 convs after layer3.
        norm_layer: normalisation constructor.

    Shape:
        x: (B, 3, H, W) -> {"layer3": (B, widths[2], H/8, W/8), "layer4": (B, widths[2], H/8, W/8)}.
    """

    def __init__(
        self, widths: Sequence[int] = (32, 64, 128), layer4_convs: int = 1, norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), norm_layer(cout), nn.ReLU(inplace=True)
            )

        c1, c2, c3 = widths
        self.layer1 = block(3, c1, 2)
        self.layer2 = block(c1, c2, 2)
        self.layer3 = block(c2, c3, 2)
        self.layer4 = nn.Sequential(*[block(c3, c3, 1) for _ in range(layer4_convs)])
        self.out_channels = {"layer3": c3, "layer4": c3}
        self.trains_from_scratch = True  # no ImageNet weights exist for it: no warning without model.weights

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        c3 = self.layer3(self.layer2(self.layer1(x)))
        return {"layer3": c3, "layer4": self.layer4(c3)}


BackboneFactory = Callable[[Mapping[str, Any], NormLayer], Backbone]

# model.backbone -> factory(model config, norm layer). mmsegmentation's ResNetV1c: deep stem 32-32-64, plain
# max-pool, contracted dilation; the official release: deep stem 64-64-128, ceil-mode pool, full dilation.
BACKBONES: Dict[str, BackboneFactory] = {
    "resnet50": lambda cfg, norm: ResNetBackbone(50, norm_layer=norm),
    "resnet101": lambda cfg, norm: ResNetBackbone(101, norm_layer=norm),
    "resnet101_official": lambda cfg, norm: ResNetBackbone(
        101,
        norm_layer=norm,
        deep_stem=True,
        ceil_mode=True,
        contract_dilation=False,
        multi_grid=tuple(value_or(cfg, "multi_grid", (1, 1, 1))),
    ),
    "resnet50_v1c": lambda cfg, norm: ResNetBackbone(50, norm_layer=norm, deep_stem=True, stem_channels=64),
    "resnet101_v1c": lambda cfg, norm: ResNetBackbone(101, norm_layer=norm, deep_stem=True, stem_channels=64),
    "tiny": lambda cfg, norm: TinyBackbone(
        widths=tuple(value_or(cfg, "tiny_widths", (32, 64, 128))),
        layer4_convs=int(value_or(cfg, "tiny_layer4_convs", 1)),
        norm_layer=norm,
    ),
}


def build_backbone(cfg: Mapping[str, Any], norm_layer: NormLayer) -> Backbone:
    """The backbone ``cfg["backbone"]`` names (a key of :data:`BACKBONES`).

    Raises:
        ConfigError: an unknown name, listing the valid ones.
    """
    name = cfg.get("backbone")
    if name not in BACKBONES:
        raise ConfigError(f"unknown model.backbone {name!r}: expected one of {', '.join(BACKBONES)}")
    return BACKBONES[name](cfg, norm_layer)
