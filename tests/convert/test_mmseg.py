"""mmsegmentation CCNet (ResNetV1c + CCHead + FCNHead) -> ccnet_r{50,101}_mmseg: strict mapping and
identical outputs."""

from __future__ import annotations

import pytest
import torch

from ccnet.convert import ConversionError, convert_state_dict, remap_state_dict
from ccnet.convert.mmseg import FORMAT
from ccnet.models import build_model
from tests.convert.upstream import MMSegCCNet, randomize_

NUM_CLASSES = 19


@pytest.fixture(scope="module")
def mmseg_model():
    torch.manual_seed(1)
    return randomize_(MMSegCCNet(NUM_CLASSES, depth=50), seed=1)


@pytest.fixture(scope="module")
def converted(mmseg_model):
    return convert_state_dict(mmseg_model.state_dict(), "mmseg")


def test_every_key_mapped(mmseg_model, converted):
    _, model_cfg, report = converted
    assert model_cfg["name"] == "ccnet_r50_mmseg" and model_cfg["num_classes"] == NUM_CLASSES
    assert report.ok and not report.dropped and not report.defaulted
    assert len(report.mapped) == len(mmseg_model.state_dict())
    assert report.mapped["backbone.stem.6.weight"] == "backbone.conv3.weight"
    assert report.mapped["decode_head.conv_cat.bn.running_var"] == "head.bottleneck.1.running_var"
    assert report.mapped["decode_head.cca.gamma.scale"] == "head.cca.gamma"


@pytest.fixture(scope="module")
def ours(converted):
    state, model_cfg, _ = converted
    model = build_model(model_cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_outputs_match_encode_decode(mmseg_model, ours):
    # the 769x769 recipes' align_corners=True, which the converter derives from the file name
    ours.align_corners = mmseg_model.align_corners = True
    x = torch.randn(1, 3, 33, 49)
    feats, ref_feats = {}, []
    hooks = [
        ours.backbone.register_forward_hook(lambda module, args, output: feats.update(output)),
        mmseg_model.backbone.register_forward_hook(lambda module, args, output: ref_feats.extend(output)),
    ]
    with torch.no_grad():
        out = ours(x)["out"]
        aux = ours.aux_head(feats["layer3"])  # eval mode skips the aux head; run it on the same features
        ref = mmseg_model(x)
        aux_ref = mmseg_model.auxiliary_head(ref_feats[2])
    for hook in hooks:
        hook.remove()
    assert out.shape == ref.shape == (1, NUM_CLASSES, 33, 49)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max().clamp_min(1.0)
    assert (aux - aux_ref).abs().max() <= 1e-5 * aux_ref.abs().max().clamp_min(1.0)


@pytest.mark.parametrize(
    "filename,expected",
    [
        ("ccnet_r101-d8_769x769_80k_cityscapes_20200618_011502-ad3cd481.pth", True),
        ("ccnet_r50-d8_512x1024_40k_cityscapes_20200616_142517-4123f401.pth", False),
    ],
)
def test_align_corners_follows_the_recipe_name(filename, expected):
    assert FORMAT.align_corners(f"/downloads/{filename}") is expected


def test_early_mmseg_gamma_parameter(mmseg_model, converted):
    # mmseg's own CUDA op era stored γ as a (1,) parameter named cca.gamma
    state = dict(mmseg_model.state_dict())
    state["decode_head.cca.gamma"] = state.pop("decode_head.cca.gamma.scale").reshape(1)
    again, report = remap_state_dict(state, converted[0], FORMAT.rules, FORMAT.drop)
    assert report.mapped["decode_head.cca.gamma"] == "head.cca.gamma"
    assert torch.equal(again["head.cca.gamma"], converted[0]["head.cca.gamma"])


@pytest.mark.parametrize("blocks,name", [(6, "ccnet_r50_mmseg"), (23, "ccnet_r101_mmseg")])
def test_depth_picks_the_config(blocks, name):
    state = {f"backbone.layer3.{i}.conv1.weight": torch.zeros(1) for i in range(blocks)}
    assert FORMAT.model_config(state) == name


def test_unknown_depth_is_rejected():
    state = {f"backbone.layer3.{i}.conv1.weight": torch.zeros(1) for i in range(36)}
    with pytest.raises(ConversionError, match="36 blocks"):
        FORMAT.model_config(state)


def test_official_checkpoint_given_as_mmseg_is_explained():
    state = {"head.bottleneck.3.weight": torch.zeros(19, 512, 1, 1)}
    with pytest.raises(ConversionError, match="use --from official"):
        convert_state_dict(state, "mmseg")
