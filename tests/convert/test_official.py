"""Official CCNet release -> ccnet_r101_official: strict mapping and identical outputs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ccnet.convert import ConversionError, convert_state_dict, remap_state_dict
from ccnet.convert.official import ABN_EPS, ABN_NOTE, FORMAT
from ccnet.models import build_model
from tests.convert.upstream import OfficialCCNet, randomize_

NUM_CLASSES = 19


@pytest.fixture(scope="module")
def official():
    torch.manual_seed(0)
    return randomize_(OfficialCCNet(NUM_CLASSES))


@pytest.fixture(scope="module")
def converted(official):
    # as the release saves it: DataParallel prefix, plus the OHEM criterion's class-weight buffer
    state = {f"module.{k}": v for k, v in official.state_dict().items()}
    state["module.criterion.criterion1.criterion.weight"] = torch.rand(NUM_CLASSES)
    return convert_state_dict(state, "official")


@pytest.fixture(scope="module")
def ours(converted):
    state, model_cfg, _ = converted
    model = build_model(model_cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _abn_weight_keys(model):
    return [f"{name}.weight" for name, module in model.named_modules() if hasattr(module, "running_var")]


def test_every_key_mapped(official, converted):
    _, model_cfg, report = converted
    assert model_cfg["name"] == "ccnet_r101_official" and model_cfg["num_classes"] == NUM_CLASSES
    assert report.ok and report.dropped == ["criterion.criterion1.criterion.weight"]
    assert len(report.mapped) == len(official.state_dict())
    # InPlace-ABN has no num_batches_tracked: every BatchNorm of ours gets the 0 default
    assert report.defaulted and all(k.endswith("num_batches_tracked") for k in report.defaulted)


def test_every_abn_weight_is_folded_to_inplace_abn_scale(official, converted):
    state, _, report = converted
    abn_keys = _abn_weight_keys(official)
    assert len(abn_keys) == 3 + 33 * 3 + 4 + 3 + 1  # stem, block norms, downsamples, head, dsn
    assert sorted(report.transformed[ABN_NOTE]) == sorted(abn_keys)
    assert "|weight| + 1e-05" in report.format()
    source = official.state_dict()
    assert any((source[k] < 0).any() for k in abn_keys)  # the test data has negative ABN weights
    for key in abn_keys:
        expected = (source[key].double().abs() + ABN_EPS).float()
        assert torch.equal(state[report.mapped[key]], expected), key


def test_outputs_match_the_release(official, ours):
    """float64 on both sides, so 1e-6 relative is far above rounding and far below the difference
    a plain BatchNorm reading of the ABN weights makes (it fails with the negative weights)."""
    official64, ours64 = copy.deepcopy(official).double(), copy.deepcopy(ours).double()
    x = torch.randn(1, 3, 33, 45, dtype=torch.float64)  # RGB, as our pipeline feeds it
    feats = {}
    ours64.backbone.register_forward_hook(lambda module, args, output: feats.update(output))
    with torch.no_grad():
        out = ours64(x)["out"]
        aux = ours64.aux_head(feats["layer3"])  # eval mode skips the aux head; run it on the same features
        head, dsn = official64(x.flip(1))  # the release reads BGR
        ref = F.interpolate(head, size=x.shape[2:], mode="bilinear", align_corners=True)
    assert out.shape == ref.shape == (1, NUM_CLASSES, 33, 45)
    assert (out - ref).abs().max() <= 1e-6 * ref.abs().max()
    assert (aux - dsn).abs().max() <= 1e-6 * dsn.abs().max()


def test_earlier_head_naming_is_accepted(official, converted):
    renames = {"head.conva.": "head.conv1a.", "head.cca.": "head.pc.", "head.convb.": "head.conv1b."}
    state = {}
    for k, v in official.state_dict().items():
        for old, new in renames.items():
            k = k.replace(old, new)
        state[k] = v
    assert any(k.startswith("head.pc.") for k in state)
    again, _ = remap_state_dict(state, converted[0], FORMAT.rules, FORMAT.drop)
    assert again.keys() == converted[0].keys()
    assert all(torch.equal(again[k], converted[0][k]) for k in again)


def test_strictness_lists_the_offending_keys(official):
    state = dict(official.state_dict())
    state["head.extra.weight"] = torch.zeros(3)
    del state["dsn.3.bias"]
    state["head.cca.query_conv.weight"] = torch.zeros(32, 512, 1, 1)
    with pytest.raises(ConversionError) as info:
        convert_state_dict(state, "official")
    report = info.value.report
    assert report.unconsumed == ["head.extra.weight"]
    assert report.missing == ["aux_head.layers.4.bias"]
    assert [m[:2] for m in report.mismatched] == [("head.cca.query_conv.weight", "head.cca.query_conv.weight")]
    message = str(info.value)
    assert "head.extra.weight" in message and "aux_head.layers.4.bias" in message and "(32, 512, 1, 1)" in message


def test_wrong_format_and_class_count_are_explained(official):
    state = official.state_dict()
    with pytest.raises(ConversionError, match="use --from official"):
        convert_state_dict(state, "mmseg")
    with pytest.raises(ConversionError, match="predicts 19 classes"):
        convert_state_dict(state, "official", num_classes=21)
