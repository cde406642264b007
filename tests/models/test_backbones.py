"""Backbones: output stride, dilation layout, the official release's exact size, the tiny network's
receptive field, and weight loading from torchvision enums and local files."""

from __future__ import annotations

import pytest
import torch
import torchvision

from ccnet.engine.checkpoint import CheckpointError, save_checkpoint
from ccnet.models.backbones import ResNetBackbone, TinyBackbone, load_backbone_weights
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
    cfg = {"backbone": "resnet101_official", "num_classes": 19, "recurrence": 2, "activation": "leaky_relu",
           "aux": True, "aux_channels": 512, "aux_conv_bias": True}
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


def test_load_local_checkpoint_file(tmp_path):
    src = ResNetBackbone(50)
    state = {k: v for k, v in torchvision.models.resnet50().state_dict().items()}
    save_checkpoint({"model": state}, tmp_path / "r50.pth")
    dst = ResNetBackbone(50)
    load_backbone_weights(dst, str(tmp_path / "r50.pth"))  # fc.* dropped, everything else matches
    for (name, a), (_, b) in zip(dst.state_dict().items(), state.items()):
        assert torch.equal(a, state[name]), name
    del src


def test_load_reports_mismatched_keys(tmp_path):
    save_checkpoint(TinyBackbone().state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(RuntimeError, match="missing keys.*unexpected keys"):
        load_backbone_weights(ResNetBackbone(50), str(tmp_path / "tiny.pth"), depth=50)


def test_missing_weights_file_and_unknown_enum():
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_weights(TinyBackbone(), "/nonexistent/weights.pth")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        load_backbone_weights(ResNetBackbone(50), "IMAGENET_BOGUS", depth=50)


def test_torchvision_enum_resolves_through_torchvision(monkeypatch):
    """The enum path asks torchvision for the weights (no download here: get_state_dict is faked)."""
    calls = []

    def fake_get_state_dict(self, *args, **kwargs):
        calls.append(self)
        return torchvision.models.resnet50().state_dict()

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_get_state_dict)
    load_backbone_weights(ResNetBackbone(50), "ResNet50_Weights.IMAGENET1K_V2", depth=50)
    assert calls == [torchvision.models.ResNet50_Weights.IMAGENET1K_V2]
