"""Backbones: output stride, dilation layout, the official release's exact size, the tiny network's
receptive field (their ImageNet weights: test_pretrained.py)."""

from __future__ import annotations

import torch

from ccnet.models.backbones import ResNetBackbone, TinyBackbone
from ccnet.models.segmentor import build_model


def _dilations(layer):
    return [block.conv2.dilation[0] for block in layer]


def test_torchvision_layout_contracted_dilation_and_output_stride():
    net = ResNetBackbone(50).eval()
    assert _dilations(net.layer3) == [1, 2, 2, 2, 2, 2]
    assert _dilations(net.layer4) == [2, 4, 4]
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 65, 97))
    assert feats["layer3"].shape == (1, 1024, 9, 13)
    assert feats["layer4"].shape == (1, 2048, 9, 13)


def test_official_layout_full_dilation_deep_stem():
    net = ResNetBackbone(101, deep_stem=True, ceil_mode=True, contract_dilation=False, multi_grid=(1, 1, 1))
    assert _dilations(net.layer3) == [2] * 23
    assert _dilations(net.layer4) == [4, 4, 4]
    assert [net.conv1.out_channels, net.conv2.out_channels, net.conv3.out_channels] == [64, 64, 128]
    assert net.maxpool.ceil_mode
    assert net.layer1[0].conv1.in_channels == 128


def test_official_layout_parameter_count():
    cfg = {
        "backbone": "resnet101_official",
        "num_classes": 19,
        "recurrence": 2,
        "activation": "leaky_relu",
        "aux": True,
        "aux_channels": 512,
        "aux_conv_bias": True,
    }
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == 71_287_911


def _receptive_field(net, size=96) -> int:
    """Width in pixels of the input region that influences the centre output of layer4."""
    net.eval()
    x = torch.randn(1, 3, size, size, requires_grad=True)
    out = net(x)["layer4"]
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    cols = (x.grad.abs().sum((0, 1, 2)) > 0).nonzero()
    return int(cols.max() - cols.min() + 1)


def test_tiny_backbone_is_small_with_documented_receptive_field():
    net = TinyBackbone()
    assert sum(p.numel() for p in net.parameters()) < 1_000_000
    assert _receptive_field(net) == 31
    assert _receptive_field(TinyBackbone(layer4_convs=2)) == 47
    assert net(torch.randn(2, 3, 64, 48))["layer4"].shape == (2, 128, 8, 6)
