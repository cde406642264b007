"""The official CCNet release (github.com/speedinghzl/CCNet, ``networks/ccnet.py``) → ``ccnet_r101_official``.

Source: ResNet-101 with a deep stem ``conv1/bn1 … conv3/bn3``, ``head`` = ``RCCAModule`` (``conva``, ``cca``,
``convb``, ``bottleneck``; earlier ``conv1a``, ``pc``, ``conv1b``), ``dsn`` on layer3, every norm InPlace-ABN.
ABN scales by ``|w| + eps``, so each ABN weight is folded to that; ``criterion.*`` is dropped. The release
reads BGR minus ``IMG_MEAN`` without a std: ``conv1``'s input channels are reversed to take RGB, and the
stored ``mean = IMG_MEAN/255`` (RGB), ``std = 1/255`` make ``(x/255 − mean)/std`` equal ``x − IMG_MEAN``
(docs/interop.md#published-checkpoints-toolsconvert_checkpointpy).
"""

from __future__ import annotations

from typing import Mapping

from torch import Tensor

from ccnet.convert.core import ConversionError, Rule, SourceFormat, num_blocks

# The release's IMG_MEAN is BGR (104.008, 116.669, 122.679) on the 0..255 scale.
_MEAN_RGB_255 = (122.67891434, 116.66876762, 104.00698793)


ABN_EPS = 1e-5  # InPlaceABN / InPlaceABNSync default, used by every norm of the release
ABN_NOTE = f"InPlace-ABN weights folded to |weight| + {ABN_EPS:g} (InPlace-ABN's scale)"


def _bgr_to_rgb(weight: Tensor) -> Tensor:
    """Reverse the input channels of the first convolution: (out, 3 BGR, k, k) -> (out, 3 RGB, k, k)."""
    return weight.flip(1)


def _abn_scale(weight: Tensor) -> Tensor:
    """The scale InPlace-ABN applies, ``|w| + eps``, as a BatchNorm weight (summed in float64 to keep the eps)."""
    return weight.abs().double() + ABN_EPS


def _abn(pattern: str, template: str) -> Rule:
    """Rule for an ABN layer's ``weight``, folded; its other entries go through the plain rules below."""
    return Rule(pattern, template, transform=_abn_scale, note=ABN_NOTE)


def _model_config(state: Mapping[str, Tensor]) -> str:
    blocks = num_blocks(state, "layer3")
    if blocks != 23:
        raise ConversionError(
            f"the official release is a ResNet-101 (23 blocks in layer3); this checkpoint has "
            f"{blocks}. Is it an official CCNet checkpoint?"
        )
    return "ccnet_r101_official"


FORMAT = SourceFormat(
    name="official",
    description="official CCNet release (speedinghzl/CCNet), ResNet-101 with InPlace-ABN",
    rules=(
        # ABN weights first: the first matching rule wins
        _abn(r"(bn[123])\.weight", r"backbone.\1.weight"),
        _abn(r"(layer[1-4]\.\d+\.(?:bn[123]|downsample\.1))\.weight", r"backbone.\1.weight"),
        _abn(r"head\.(?:conva|conv1a)\.1\.weight", "head.conva.1.weight"),
        _abn(r"head\.(?:convb|conv1b)\.1\.weight", "head.convb.1.weight"),
        _abn(r"head\.bottleneck\.1\.weight", "head.bottleneck.1.weight"),
        _abn(r"dsn\.1\.weight", "aux_head.layers.1.weight"),
        Rule(r"conv1\.weight", "backbone.conv1.weight", transform=_bgr_to_rgb),
        Rule(r"(conv[23]\.weight|bn[123]\.\w+)", r"backbone.\1"),
        Rule(r"(layer[1-4]\..+)", r"backbone.\1"),
        Rule(r"head\.(?:conva|conv1a)\.([01])\.(\w+)", r"head.conva.\1.\2"),
        Rule(r"head\.(?:convb|conv1b)\.([01])\.(\w+)", r"head.convb.\1.\2"),
        Rule(r"head\.(?:cca|pc)\.(query_conv|key_conv|value_conv)\.(weight|bias)", r"head.cca.\1.\2"),
        Rule(r"head\.(?:cca|pc)\.gamma", "head.cca.gamma"),
        Rule(r"head\.bottleneck\.([01])\.(\w+)", r"head.bottleneck.\1.\2"),
        # official index 2 is the dropout; our bottleneck has the activation at 2 and dropout at 3
        Rule(r"head\.bottleneck\.3\.(weight|bias)", r"head.bottleneck.4.\1"),
        Rule(r"dsn\.([01])\.(\w+)", r"aux_head.layers.\1.\2"),
        Rule(r"dsn\.3\.(weight|bias)", r"aux_head.layers.4.\1"),
    ),
    drop=(r"criterion\..+",),
    classifier_key="head.bottleneck.3.weight",
    model_config=_model_config,
    mean=(_MEAN_RGB_255[0] / 255.0, _MEAN_RGB_255[1] / 255.0, _MEAN_RGB_255[2] / 255.0),
    std=(1.0 / 255.0,) * 3,
    align_corners=lambda filename: True,  # the release upsamples every output with align_corners=True
)
