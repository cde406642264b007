"""mmsegmentation CCNet checkpoints (``ccnet_r{50,101}-d8_*``) → ``ccnet_r{50,101}_mmseg``.

Source (under ``state_dict``): a ResNetV1c ``backbone`` (deep stem ``stem.{0,1,3,4,6,7}``, 32-32-64),
``decode_head`` = ``CCHead`` (``convs.{0,1}`` around ``cca``, ``conv_cat``, ``conv_seg``) in the order of our
:class:`~ccnet.models.heads.RCCAHead`, ``auxiliary_head`` = ``FCNHead``. γ is accepted as mmcv's
``cca.gamma.scale`` (0-d) or an early ``cca.gamma``. Input: RGB with ImageNet mean/std, our default;
``align_corners`` is True for the 769×769 recipes, False for 512×1024, read from the file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from torch import Tensor

from ccnet.convert.core import ConversionError, Rule, SourceFormat, num_blocks

_DEPTH_BY_LAYER3 = {6: 50, 23: 101}


def _model_config(state: Mapping[str, Tensor]) -> str:
    blocks = num_blocks(state, "backbone.layer3")
    if blocks not in _DEPTH_BY_LAYER3:
        raise ConversionError(
            f"backbone.layer3 has {blocks} blocks; expected 6 (ResNet-50) or 23 (ResNet-101). "
            "Is it an mmsegmentation CCNet checkpoint?"
        )
    return f"ccnet_r{_DEPTH_BY_LAYER3[blocks]}_mmseg"


def _align_corners(filename: str) -> bool:
    # mmseg's recipe names carry the crop size; only the 769×769 configs switch align_corners on
    return "769x769" in Path(filename).name


_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}

FORMAT = SourceFormat(
    name="mmseg",
    description="mmsegmentation CCNet (ResNetV1c-D8 + CCHead + FCNHead)",
    rules=tuple(Rule(rf"backbone\.stem\.{i}\.(\w+)", rf"backbone.{name}.\1") for i, name in _STEM.items())
    + (
        Rule(r"backbone\.(layer[1-4]\..+)", r"backbone.\1"),
        Rule(r"decode_head\.convs\.0\.conv\.weight", "head.conva.0.weight"),
        Rule(r"decode_head\.convs\.0\.bn\.(\w+)", r"head.conva.1.\1"),
        Rule(r"decode_head\.convs\.1\.conv\.weight", "head.convb.0.weight"),
        Rule(r"decode_head\.convs\.1\.bn\.(\w+)", r"head.convb.1.\1"),
        Rule(r"decode_head\.cca\.(query_conv|key_conv|value_conv)\.(weight|bias)", r"head.cca.\1.\2"),
        Rule(r"decode_head\.cca\.gamma(?:\.scale)?", "head.cca.gamma", reshape=True),
        Rule(r"decode_head\.conv_cat\.conv\.weight", "head.bottleneck.0.weight"),
        Rule(r"decode_head\.conv_cat\.bn\.(\w+)", r"head.bottleneck.1.\1"),
        Rule(r"decode_head\.conv_seg\.(weight|bias)", r"head.bottleneck.4.\1"),
        Rule(r"auxiliary_head\.convs\.0\.conv\.weight", "aux_head.layers.0.weight"),
        Rule(r"auxiliary_head\.convs\.0\.bn\.(\w+)", r"aux_head.layers.1.\1"),
        Rule(r"auxiliary_head\.conv_seg\.(weight|bias)", r"aux_head.layers.4.\1"),
    ),
    drop=(),
    classifier_key="decode_head.conv_seg.weight",
    model_config=_model_config,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    align_corners=_align_corners,
)
