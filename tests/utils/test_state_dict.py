"""The strict renaming machinery on small hand-made state dicts."""

from __future__ import annotations

import pytest
import torch

from ccnet.utils.state_dict import ConversionError, Rule, remap_state_dict, strip_prefix

TARGET = {
    "a.weight": torch.zeros(2, 3),
    "bn.running_mean": torch.zeros(2),
    "bn.num_batches_tracked": torch.zeros((), dtype=torch.long),
    "gamma": torch.zeros(1),
}
RULES = (Rule(r"x\.(weight)", r"a.\1"), Rule(r"norm\.(\w+)", r"bn.\1"), Rule(r"g\.scale", "gamma", reshape=True))


def test_maps_casts_reshapes_and_defaults_the_step_counter():
    source = {
        "x.weight": torch.ones(2, 3, dtype=torch.float64),
        "norm.running_mean": torch.ones(2),
        "g.scale": torch.tensor(0.5),
        "loss.weight": torch.ones(4),
    }
    out, report = remap_state_dict(source, TARGET, RULES, drop=(r"loss\..+",))
    assert out.keys() == TARGET.keys()
    assert out["a.weight"].dtype == torch.float32 and out["gamma"].shape == (1,) and out["gamma"].item() == 0.5
    assert report.defaulted == ["bn.num_batches_tracked"] and report.dropped == ["loss.weight"]
    assert "mapped 3 keys, dropped 1, defaulted 1" in report.format()


def test_rule_to_a_key_the_model_lacks_is_unconsumed():
    source = {
        "x.weight": torch.ones(2, 3),
        "norm.running_mean": torch.ones(2),
        "g.scale": torch.tensor(0.5),
        "norm.running_var": torch.ones(2),
    }
    with pytest.raises(ConversionError, match="norm.running_var .-> bn.running_var, which the model lacks"):
        remap_state_dict(source, TARGET, RULES)


def test_two_sources_for_one_target_are_rejected():
    rules = RULES + (Rule(r"y\.weight", "a.weight"),)
    source = {"x.weight": torch.ones(2, 3), "y.weight": torch.ones(2, 3)}
    with pytest.raises(ConversionError, match="'x.weight' and 'y.weight' both map to 'a.weight'"):
        remap_state_dict(source, TARGET, rules)


def test_reshape_only_where_allowed_and_only_same_size():
    source = {"x.weight": torch.ones(3, 2), "norm.running_mean": torch.ones(2), "g.scale": torch.ones(2)}
    with pytest.raises(ConversionError) as info:
        remap_state_dict(source, TARGET, RULES)
    assert [m[0] for m in info.value.report.mismatched] == ["x.weight", "g.scale"]
    assert info.value.report.missing == []  # mismatched targets are reported once, as mismatches


def test_strip_prefix_only_when_every_key_has_it():
    assert list(strip_prefix({"module.module.a": 1, "module.module.b": 2})) == ["a", "b"]
    assert list(strip_prefix({"module.a": 1, "b": 2})) == ["module.a", "b"]
