"""ImageNet backbone weights: every naming (torchvision, timm, mmseg/open-mmlab, the release's) lands
tensor for tensor in the backbone of the configs it fits, strictly; downloads that fail and a
missing timm say what to do; nothing is read or downloaded when a checkpoint provides the weights."""

from __future__ import annotations

import logging
import sys
import urllib.error

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from ccnet.checkpoint import CheckpointError, save_checkpoint
from ccnet.models import build_model
from ccnet.models.backbones import ResNetBackbone, TinyBackbone
from ccnet.models.pretrained import PretrainedWeightsError, detect_layout, load_backbone_weights
from tests.conftest import CONFIGS
from tests.convert.upstream import ResNetV1c, randomize_

timm = pytest.importorskip("timm", reason="timm is a test extra (requirements-dev.txt)")

# our stem key -> the same tensor's key in timm's deep-stem ResNets / in mmseg's ResNetV1c
TIMM_STEM = {
    "conv1.weight": "conv1.0.weight",
    "bn1": "conv1.1",
    "conv2.weight": "conv1.3.weight",
    "bn2": "conv1.4",
    "conv3.weight": "conv1.6.weight",
    "bn3": "bn1",
}
MMSEG_STEM = {
    "conv1.weight": "stem.0.weight",
    "bn1": "stem.1",
    "conv2.weight": "stem.3.weight",
    "bn2": "stem.4",
    "conv3.weight": "stem.6.weight",
    "bn3": "stem.7",
}


def _source_key(ours: str, stem: dict) -> str:
    if ours in stem:
        return stem[ours]
    module, _, leaf = ours.rpartition(".")
    return f"{stem[module]}.{leaf}" if module in stem else ours


def _model_cfg(name: str, weights) -> dict:
    cfg = OmegaConf.load(CONFIGS / "model" / f"{name}.yaml")
    cfg.num_classes = 19
    cfg.weights = None if weights is None else str(weights)
    return OmegaConf.to_container(cfg)


def _randomize_(module: torch.nn.Module, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = (
                    torch.rand(tensor.shape, generator=gen) + 0.5
                    if name.endswith("running_var")
                    else torch.randn(tensor.shape, generator=gen)
                )
                tensor.copy_(values)
            else:
                tensor.fill_(7)
    return module.state_dict()


@pytest.mark.parametrize(
    "config, timm_name",
    [
        ("ccnet_r101_official", "resnet101s.gluon_in1k"),
        ("ccnet_r101_mmseg", "resnet101c.gluon_in1k"),
        ("ccnet_r50_mmseg", "resnet50c.gluon_in1k"),
    ],
)
def test_timm_file_fills_every_backbone_tensor_unchanged(tmp_path, config, timm_name):
    source = timm.create_model(timm_name, pretrained=False)
    state = _randomize_(source)
    torch.save(state, tmp_path / "in1k.pth")  # the README's offline recipe: torch.save(model.state_dict(), PATH)
    model = build_model(_model_cfg(config, tmp_path / "in1k.pth"))
    ours = model.backbone.state_dict()
    assert detect_layout(state) == "timm"
    used = set()
    for key, tensor in ours.items():
        if key.endswith("num_batches_tracked"):
            continue
        src = _source_key(key, TIMM_STEM)
        assert torch.equal(tensor, state[src]), (key, src)
        used.add(src)
    assert {k for k in state if not k.endswith("num_batches_tracked")} - used == {"fc.weight", "fc.bias"}
    # The same computation up to layer2 (dilation only starts at layer3). 66 px keeps the release's
    # ceil-mode max-pool at timm's output size.
    model.eval(), source.eval()
    x = torch.randn(1, 3, 66, 66)
    with torch.no_grad():
        b = model.backbone
        mine = b.relu(b.bn1(b.conv1(x)))
        mine = b.relu(b.bn3(b.conv3(b.relu(b.bn2(b.conv2(mine))))))
        mine = b.layer2(b.layer1(b.maxpool(mine)))
        theirs = source.layer2(source.layer1(source.maxpool(source.act1(source.bn1(source.conv1(x))))))
    torch.testing.assert_close(mine, theirs)


def test_timm_name_is_created_with_pretrained_weights(monkeypatch):
    calls = []

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        return timm.models.resnet.resnet50c(pretrained=False)  # no download here

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    model = build_model(_model_cfg("ccnet_r50_mmseg", "timm:resnet50c.gluon_in1k"))
    assert calls == [("resnet50c.gluon_in1k", True)]
    assert torch.isfinite(model.backbone.conv1.weight).all()


def test_timm_download_failure_says_how_to_get_the_file(monkeypatch):
    def offline(name, pretrained=False, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedWeightsError) as info:
        build_model(_model_cfg("ccnet_r101_official", "timm:resnet101s.gluon_in1k"))
    message = str(info.value)
    assert "torch.save(timm.create_model('resnet101s.gluon_in1k', pretrained=True).state_dict()" in message
    assert "model.weights=PATH" in message and "huggingface.co" in message


def test_missing_timm_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(PretrainedWeightsError, match="needs the timm package: pip install timm"):
        build_model(_model_cfg("ccnet_r101_official", "timm:resnet101s.gluon_in1k"))


def test_unknown_timm_model_lists_the_fitting_ones():
    with pytest.raises(PretrainedWeightsError, match="no model 'resnet_nope'.*resnet101s.gluon_in1k"):
        build_model(_model_cfg("ccnet_r101_official", "timm:resnet_nope"))


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "state_dict+backbone"])
def test_mmseg_v1c_file_gives_mmsegs_features(tmp_path, wrap):
    """open-mmlab's resnet50_v1c naming (stem.N), as published or saved from a segmentor's backbone:
    the loaded backbone computes what the independent ResNetV1c of tests/convert computes."""
    upstream = randomize_(ResNetV1c(50))  # statistics that keep 50 random layers finite
    state = dict(upstream.state_dict())
    state.update({"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)})
    if wrap == "state_dict+backbone":
        state = {f"backbone.{k}": v for k, v in state.items()}
    save_checkpoint(state if wrap == "bare" else {"state_dict": state, "meta": {"epoch": 100}}, tmp_path / "v1c.pth")
    model = build_model(_model_cfg("ccnet_r50_mmseg", tmp_path / "v1c.pth")).eval()
    x = torch.randn(1, 3, 65, 49)
    with torch.no_grad():
        expected = upstream(x)[3]
        assert torch.isfinite(expected).all() and expected.abs().max() > 0
        torch.testing.assert_close(model.backbone(x)["layer4"], expected)


def test_release_and_torchvision_namings_load_as_they_are(tmp_path):
    release = _randomize_(ResNetBackbone(101, deep_stem=True, ceil_mode=True, contract_dilation=False))
    save_checkpoint(
        {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000), **release},
        tmp_path / "resnet101-imagenet.pth",
    )
    model = build_model(_model_cfg("ccnet_r101_official", tmp_path / "resnet101-imagenet.pth"))
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in release.items())

    tv = _randomize_(torchvision.models.resnet50())
    save_checkpoint({"model": tv}, tmp_path / "r50.pth")
    model = build_model(_model_cfg("ccnet_r50", tmp_path / "r50.pth"))
    assert all(torch.equal(v, tv[k]) for k, v in model.backbone.state_dict().items())


def test_mismatch_lists_keys_and_names_the_assumed_layout(tmp_path):
    state = timm.create_model("resnet50c.gluon_in1k", pretrained=False).state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["layer4.2.bn3.bias"]
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(PretrainedWeightsError) as info:
        build_model(_model_cfg("ccnet_r50_mmseg", tmp_path / "bad.pth"))
    message = str(info.value)
    assert "read as the timm layout" in message
    assert "extra.weight" in message and "layer4.2.bn3.bias" in message and "(64, 64, 3, 3)" in message
    # a timm deep-stem file into the torchvision-stem config: the stem keys are listed
    torch.save(timm.create_model("resnet50c.gluon_in1k", pretrained=False).state_dict(), tmp_path / "c.pth")
    with pytest.raises(PretrainedWeightsError, match=r"(?s)timm layout.*conv2.weight"):
        build_model(_model_cfg("ccnet_r50", tmp_path / "c.pth"))


def test_non_strict_loads_the_overlap_with_a_warning(tmp_path, caplog):
    state = torchvision.models.resnet50().state_dict()
    del state["layer4.2.bn3.bias"]
    torch.save(state, tmp_path / "partial.pth")
    cfg = {**_model_cfg("ccnet_r50", tmp_path / "partial.pth"), "weights_strict": False}
    with caplog.at_level(logging.WARNING, logger="ccnet.models.pretrained"):
        model = build_model(cfg)
    assert "layer4.2.bn3.bias" in caplog.text
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])


def test_missing_file_and_unknown_enum():
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_weights(TinyBackbone(), "/nonexistent/weights.pth")
    with pytest.raises(PretrainedWeightsError, match="IMAGENET1K_V1"):
        load_backbone_weights(ResNetBackbone(50), "IMAGENET_BOGUS", depth=50)
    with pytest.raises(PretrainedWeightsError, match="torchvision weight names exist only"):
        load_backbone_weights(ResNetBackbone(101, deep_stem=True), "IMAGENET1K_V2")


def test_torchvision_enum_resolves_through_torchvision(monkeypatch):
    """The enum path asks torchvision for the weights (no download here: get_state_dict is faked)."""
    calls = []

    def fake_get_state_dict(self, *args, **kwargs):
        calls.append(self)
        return torchvision.models.resnet50().state_dict()

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_get_state_dict)
    load_backbone_weights(ResNetBackbone(50), "ResNet50_Weights.IMAGENET1K_V2", depth=50)
    assert calls == [torchvision.models.ResNet50_Weights.IMAGENET1K_V2]


def test_offline_enum_download_says_where_the_file_goes(monkeypatch, tmp_path):
    """What torchvision's downloader raises without network: one message naming the file, the cache
    folder and the two alternatives."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(PretrainedWeightsError) as info:
        build_model(_model_cfg("ccnet_r50", "IMAGENET1K_V2"))
    message = str(info.value)
    assert "resnet50-11ad3fa6.pth" in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message
    assert "model.weights=PATH" in message and "model.weights=null" in message


def test_null_weights_warn_on_resnets_only_and_pretrained_false_reads_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="ccnet.models.segmentor"):
        build_model(_model_cfg("ccnet_r50", None))
        assert "starts from random weights" in caplog.text
        caplog.clear()
        build_model(_model_cfg("ccnet_tiny", None))
        build_model(_model_cfg("ccnet_r50", "/nonexistent/never_read.pth"), pretrained=False)
    assert caplog.text == ""
