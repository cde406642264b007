"""Merging the checkpoint's model/dataset config with the command line (ccnet/evaluation/loading.py)."""

from __future__ import annotations

import logging

import pytest

from ccnet.evaluation.loading import resolve_model_and_dataset

STORED = {"model": {"name": "ccnet_tiny", "num_classes": "${dataset.num_classes}"},
          "dataset": {"name": "folder", "num_classes": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}


def test_stored_config_with_overrides_resolves_interpolations():
    model, dataset = resolve_model_and_dataset(STORED, {}, {"root": "elsewhere"}, False, False, "ck.pth")
    assert model["num_classes"] == 3 and dataset["root"] == "elsewhere" and dataset["mean"] == [0.5] * 3


@pytest.mark.parametrize("given, warns", [
    ({"name": "folder", "num_classes": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, False),
    ({"name": "folder", "num_classes": 3, "mean": [0.485, 0.456, 0.406], "std": [0.25, 0.25, 0.25]}, True),
    ({"name": "folder", "num_classes": 3, "mean": [0.5, 0.5, 0.5], "std": [0.229, 0.224, 0.225]}, True),
])
def test_a_dataset_group_with_other_normalisation_is_reported(caplog, given, warns):
    with caplog.at_level(logging.WARNING, logger="ccnet"):
        _, dataset = resolve_model_and_dataset(STORED, {}, given, False, True, "ck.pth")
    assert dataset["mean"] == given["mean"]  # the user's choice is used ...
    message = [r.getMessage() for r in caplog.records if "trained with dataset." in r.getMessage()]
    assert bool(message) == warns  # ... and a change from training is reported with the fix
    if warns:
        assert "ck.pth" in message[0] and "to keep the training normalisation" in message[0]


def test_missing_sections_are_named():
    with pytest.raises(ValueError, match="stores no 'model' config.*model=ccnet_r101"):
        resolve_model_and_dataset({}, {}, {"name": "folder"}, False, True, "ck.pth")
