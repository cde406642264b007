"""Merging the checkpoint's model/dataset config with the command line, and loading its weights
(ccnet/evaluation/loading.py): weights that do not fit or are not finite are refused with the file named."""

from __future__ import annotations

import ast
import logging
import math

import pytest
import torch

from ccnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ccnet.errors import UserError
from ccnet.evaluation.loading import CheckpointMismatchError, load_model, resolve_model_and_dataset
from tests.evaluation.helpers import load_yaml, make_checkpoint

STORED = {
    "model": {"name": "ccnet_tiny", "num_classes": "${dataset.num_classes}"},
    "dataset": {"name": "folder", "num_classes": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
}


def test_stored_config_with_overrides_resolves_interpolations():
    model, dataset = resolve_model_and_dataset(STORED, {}, {"root": "elsewhere"}, False, False, "ck.pth")
    assert model["num_classes"] == 3 and dataset["root"] == "elsewhere" and dataset["mean"] == [0.5] * 3


@pytest.mark.parametrize(
    "given, warns",
    [
        ({"name": "folder", "num_classes": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, False),
        ({"name": "folder", "num_classes": 3, "mean": [0.485, 0.456, 0.406], "std": [0.25, 0.25, 0.25]}, True),
        ({"name": "folder", "num_classes": 3, "mean": [0.5, 0.5, 0.5], "std": [0.229, 0.224, 0.225]}, True),
    ],
)
def test_a_dataset_group_with_other_normalisation_is_reported(caplog, given, warns):
    with caplog.at_level(logging.WARNING, logger="ccnet"):
        _, dataset = resolve_model_and_dataset(STORED, {}, given, False, True, "ck.pth")
    assert dataset["mean"] == given["mean"]  # the user's choice is used ...
    message = [r.getMessage() for r in caplog.records if "trained with dataset." in r.getMessage()]
    assert bool(message) == warns  # ... and a change from training is reported with the fix
    if warns:
        assert "ck.pth" in message[0] and "to keep the training normalisation" in message[0]


def test_missing_sections_are_named():
    with pytest.raises(CheckpointMismatchError, match="stores no 'model' config.*model=ccnet_r101"):
        resolve_model_and_dataset({}, {}, {"name": "folder"}, False, True, "ck.pth")


@pytest.fixture
def saved(configs_dir, tmp_path):
    path = make_checkpoint(tmp_path / "ck.pth", configs_dir, load_yaml(configs_dir, "dataset", "synthetic"))
    return path, load_checkpoint(path)


def test_weights_that_do_not_fit_are_a_user_error(saved):
    path, ckpt = saved
    model_cfg = {**ckpt["config"]["model"], "num_classes": 7}
    with pytest.raises(
        CheckpointMismatchError,
        match=f"weights of {path} do not fit model 'ccnet_tiny' with num_classes=7: [1-9]+ shape mismatches",
    ) as refused:
        load_model(model_cfg, ckpt, path, torch.device("cpu"))
    assert isinstance(refused.value, (UserError, ValueError))


def test_non_finite_weights_are_refused_naming_the_tensors(saved, tmp_path):
    path, ckpt = saved
    model_cfg = ckpt["config"]["model"]
    assert load_model(model_cfg, ckpt, path, torch.device("cpu")) is not None  # the healthy file loads
    names = sorted(k for k, v in ckpt["model"].items() if v.is_floating_point())
    state = dict(ckpt["model"])
    for name, value in ((names[3], math.nan), (names[0], math.inf), (names[-1], -math.inf), (names[5], math.nan)):
        state[name] = state[name].clone().view(-1).index_fill(0, torch.tensor([0]), value).view_as(state[name])
    bad = save_checkpoint({**ckpt, "model": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as refused:
        load_model(model_cfg, load_checkpoint(bad), bad, torch.device("cpu"))
    message = str(refused.value)
    assert message.startswith(f"checkpoint {bad} holds NaN or inf in 4 tensor(s), e.g. [")
    shown = ast.literal_eval(message.split("e.g. ")[1].split("]")[0] + "]")
    assert len(shown) == 3 and set(shown) < {names[0], names[3], names[5], names[-1]}  # three of the four named
