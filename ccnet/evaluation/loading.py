"""Rebuild a trained model from a checkpoint for evaluation and inference: the ``model`` and ``dataset``
sections stored under its ``"config"``, with command-line settings merged over them (a config group
replaces the values it defines, a single key just itself).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from omegaconf import OmegaConf
from torch import nn

from ccnet.checkpoint import CheckpointError, load_checkpoint, model_state_from, non_finite_tensors, stored_config
from ccnet.errors import UserError

log = logging.getLogger(__name__)


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint does not fit what it is used with (weights vs model config, class count vs dataset), or
    neither it nor the command line holds a model/dataset config.
    """


def merge_section(
    stored: Optional[Mapping[str, Any]], given: Optional[Mapping[str, Any]], whole_group: bool
) -> Dict[str, Any]:
    """Merge a command-line config section over the one stored in a checkpoint; interpolations unresolved.

    Args:
        stored: the checkpoint's section (plain dict) or None.
        given: the composed command-line section (may contain ``${…}`` interpolations).
        whole_group: a config group was chosen (``dataset=cityscapes``): every key of ``given`` applies,
            nulls included. False: only non-null keys apply (null means "not given").
    """
    merged: Dict[str, Any] = dict(stored or {})
    for key, value in (given or {}).items():
        if whole_group or value is not None:
            merged[key] = value
    return merged


def resolve_model_and_dataset(
    checkpoint_config: Optional[Mapping[str, Any]],
    model_given: Mapping[str, Any],
    dataset_given: Mapping[str, Any],
    model_group: bool,
    dataset_group: bool,
    checkpoint_path: Union[str, Path],
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The ``model`` and ``dataset`` configs to use: the checkpoint's, with command-line overrides, resolved
    against the merged result (so ``num_classes: ${dataset.num_classes}`` follows the dataset).

    Raises:
        CheckpointMismatchError: neither the checkpoint nor the command line defines a model or a dataset.
    """
    stored = dict(checkpoint_config or {})
    model = merge_section(stored.get("model"), model_given, model_group)
    dataset = merge_section(stored.get("dataset"), dataset_given, dataset_group)
    for section, values, example in (("model", model, "model=ccnet_r101"), ("dataset", dataset, "dataset=cityscapes")):
        if not values.get("name"):
            raise CheckpointMismatchError(
                f"checkpoint {checkpoint_path} stores no '{section}' config (it was not written by tools/train.py, "
                f"or was converted); choose one on the command line, e.g. {example}"
            )
    resolved = OmegaConf.to_container(OmegaConf.create({"model": model, "dataset": dataset}), resolve=True)
    assert isinstance(resolved, dict)
    trained = stored.get("dataset") or {}
    for key in ("mean", "std"):
        before, now = trained.get(key), resolved["dataset"].get(key)
        if before is not None and now is not None and [float(v) for v in before] != [float(v) for v in now]:
            log.warning(
                "checkpoint %s was trained with dataset.%s=%s, the evaluation uses %s (dataset=%s); "
                "inputs normalised differently from training usually lower the scores. Pass "
                "dataset.%s=%s to keep the training normalisation",
                checkpoint_path,
                key,
                list(before),
                list(now),
                resolved["dataset"].get("name"),
                key,
                list(before),
            )
    return resolved["model"], resolved["dataset"]


def load_model(
    model_cfg: Mapping[str, Any], checkpoint: Mapping[str, Any], checkpoint_path: Union[str, Path], device: torch.device
) -> nn.Module:
    """Build the model of ``model_cfg``, load the checkpoint's weights strictly, move it to ``device``.

    No ImageNet weights are loaded: evaluation neither needs nor downloads them.

    Raises:
        CheckpointError: a weight or statistic holds NaN or inf (names the file, the first tensors and
            their count).
        CheckpointMismatchError: the weights do not fit the model (names the checkpoint, the class counts
            and the mismatching keys).
    """
    from ccnet.models import build_model

    state = model_state_from(dict(checkpoint), checkpoint_path)
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(
            f"checkpoint {checkpoint_path} holds NaN or inf in {len(bad)} tensor(s), e.g. {bad[:3]}: a model with "
            "such weights predicts nonsense. The file is damaged or was saved after training diverged; use another "
            "checkpoint (e.g. an earlier one of the same run)"
        )
    cfg = dict(model_cfg)
    model = build_model(cfg, pretrained=False)
    expected = model.state_dict()
    mismatched = {
        k: (tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    }
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if mismatched or missing or unexpected:
        details = "; ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in list(mismatched.items())[:4])
        raise CheckpointMismatchError(
            f"weights of {checkpoint_path} do not fit model {cfg.get('name')!r} with num_classes="
            f"{cfg.get('num_classes')}: {len(mismatched)} shape mismatches ({details or 'none'}), "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}. "
            "A different class count usually means the dataset (or palette) does not match the one the "
            "checkpoint was trained on; check the model=/dataset= overrides against its training config."
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def load_checkpoint_for_eval(path: Union[str, Path]) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """Read a checkpoint; returns ``(checkpoint dict, stored config or None)``.

    Raises:
        CheckpointError: unreadable file, or a stored config with interpolations (refused, never
            resolved: see :func:`ccnet.checkpoint.stored_config`).
    """
    ckpt = load_checkpoint(path)
    return ckpt, stored_config(ckpt, path)
