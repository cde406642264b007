"""Convert a foreign CCNet checkpoint file into a checkpoint of this framework (:mod:`ccnet.checkpoint`):
``{"model", "config": {"model", "dataset"}, "iteration": 0, "converted_from": {"format", "path"}}``, the
model config ours (``configs/model/<name>.yaml``, ``num_classes`` from the classifier), the dataset config
``configs/dataset/<name>.yaml`` with the source model's ``mean``/``std``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from omegaconf import OmegaConf
from torch import Tensor

from ccnet.checkpoint import load_checkpoint, model_state_from, save_checkpoint
from ccnet.convert import mmseg, official
from ccnet.convert.core import ConversionError, ConversionReport, SourceFormat, remap_state_dict, strip_prefix
from ccnet.errors import ConfigError
from ccnet.utils.manifest import OutputFiles
from ccnet.utils.paths import CONFIGS_DIR

log = logging.getLogger(__name__)

FORMATS: Dict[str, SourceFormat] = {official.FORMAT.name: official.FORMAT, mmseg.FORMAT.name: mmseg.FORMAT}
# dataset config used when --dataset is not given, by the number of classes of the classifier
DATASET_BY_CLASSES = {19: "cityscapes", 150: "ade20k"}

PathLike = Union[str, Path]
TOOL = "convert"  # the name its files are recorded under in the manifest.txt of dst's folder


def get_format(name: str) -> SourceFormat:
    """The :class:`SourceFormat` called ``name`` (``official`` or ``mmseg``)."""
    if name not in FORMATS:
        raise ConfigError(f"unknown source format {name!r}: expected one of {', '.join(FORMATS)}")
    return FORMATS[name]


def _load_yaml(configs_dir: Path, group: str, name: str) -> Dict[str, Any]:
    path = configs_dir / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (configs_dir / group).glob("*.yaml"))
        raise ConfigError(f"no {group} config {name!r} at {path}: expected one of {', '.join(known)}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(cfg, dict)
    return {str(k): v for k, v in cfg.items()}


def model_config_for(
    name: str,
    num_classes: int,
    align_corners: Optional[bool] = None,
    recurrence: Optional[int] = None,
    configs_dir: Path = CONFIGS_DIR,
) -> Dict[str, Any]:
    """``configs/model/<name>.yaml`` as a plain dict with ``num_classes`` (and ``align_corners``, ``recurrence``
    when given) set and no ImageNet weights to load.
    """
    cfg = _load_yaml(configs_dir, "model", name)
    cfg["num_classes"] = num_classes
    cfg["weights"] = None
    if align_corners is not None:
        cfg["align_corners"] = align_corners
    if recurrence is not None:
        if recurrence < 1:
            raise ConfigError(f"recurrence must be >= 1 for a criss-cross checkpoint, got {recurrence}")
        cfg["recurrence"] = recurrence
    return cfg


def dataset_config_for(
    name: str, num_classes: int, fmt: SourceFormat, configs_dir: Path = CONFIGS_DIR
) -> Dict[str, Any]:
    """``configs/dataset/<name>.yaml`` with the source model's input normalisation.

    Raises:
        ConfigError: the dataset's class count differs from the checkpoint's.
    """
    cfg = _load_yaml(configs_dir, "dataset", name)
    if cfg.get("num_classes") != num_classes:
        raise ConfigError(
            f"dataset config {name!r} has num_classes={cfg.get('num_classes')}, the checkpoint's "
            f"classifier predicts {num_classes}; pass --dataset with a config of {num_classes} classes"
        )
    cfg["mean"] = [round(v, 8) for v in fmt.mean]
    cfg["std"] = [round(v, 8) for v in fmt.std]
    return cfg


def _guess_format(state: Mapping[str, Tensor]) -> Optional[str]:
    return next((f.name for f in FORMATS.values() if f.classifier_key in state), None)


def convert_state_dict(
    state: Mapping[str, Tensor],
    source_format: str,
    num_classes: Optional[int] = None,
    align_corners: Optional[bool] = None,
    recurrence: Optional[int] = None,
    configs_dir: Path = CONFIGS_DIR,
) -> Tuple[Dict[str, Tensor], Dict[str, Any], ConversionReport]:
    """Convert a foreign state dict (``module.`` prefixes allowed) to our model.

    Args:
        source_format: ``official`` or ``mmseg``.
        num_classes: expected class count, checked against the source classifier (None: take it).
        align_corners: override of the model config's ``align_corners`` (None: keep the config's).
        recurrence: criss-cross loops R the source model was trained with, which the weights do not record
            (None: the config's, 2).
        configs_dir: the repository's ``configs/`` folder.

    Returns:
        ``(our state dict, our model config, report)``; the state dict loads strictly into
        ``build_model(model config)``.

    Raises:
        ConversionError: wrong format, class count mismatch, or keys/shapes that do not map exactly.
    """
    from ccnet.models import build_model

    fmt = get_format(source_format)
    state = strip_prefix(state)
    if fmt.classifier_key not in state:
        guess = _guess_format(state)
        hint = f" It looks like a {guess!r} checkpoint: use --from {guess}." if guess else ""
        raise ConversionError(
            f"no {fmt.classifier_key!r} in the checkpoint, so it is not in the {fmt.description} "
            f"layout.{hint} First keys: {sorted(state)[:5]}"
        )
    found = int(state[fmt.classifier_key].shape[0])
    if num_classes is not None and num_classes != found:
        raise ConversionError(
            f"--num-classes {num_classes} given, but the checkpoint's classifier "
            f"{fmt.classifier_key} predicts {found} classes"
        )
    model_cfg = model_config_for(fmt.model_config(state), found, align_corners, recurrence, configs_dir)
    target = build_model(model_cfg, pretrained=False).state_dict()
    converted, report = remap_state_dict(state, target, fmt.rules, fmt.drop)
    return converted, model_cfg, report


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    source_format: str,
    num_classes: Optional[int] = None,
    dataset: Optional[str] = None,
    align_corners: Optional[bool] = None,
    recurrence: Optional[int] = None,
    configs_dir: Path = CONFIGS_DIR,
) -> ConversionReport:
    """Convert the checkpoint file ``src`` and write ours to ``dst`` (checked first, recorded once written).

    Args:
        src: the published checkpoint (a state dict, or a dict with ``state_dict``/``model``).
        source_format: ``official`` or ``mmseg``.
        num_classes: expected class count (checked), or None.
        dataset: dataset config stored with the model (None: cityscapes for 19 classes, ade20k for 150).
        align_corners: None derives it from the format (official: True; mmseg: from the file name).
        recurrence: criss-cross loops R of the source model (None: 2).
        configs_dir: the repository's ``configs/`` folder.

    Raises:
        OutputConflictError: ``dst`` is ``src``, or a file no conversion wrote; nothing is written.
        ConversionError: see :func:`convert_state_dict`.
        ConfigError: an unknown --dataset, a recurrence below 1, or no dataset config fits the class count.
        ccnet.checkpoint.CheckpointError: ``src`` is missing or not loadable with ``weights_only=True``.
    """
    fmt = get_format(source_format)
    output = OutputFiles(TOOL, {"DST": dst})
    output.check(inputs=[src])
    state = model_state_from(load_checkpoint(src), src)
    if align_corners is None:
        align_corners = fmt.align_corners(str(src))
    converted, model_cfg, report = convert_state_dict(
        state, source_format, num_classes, align_corners, recurrence, configs_dir
    )
    k = model_cfg["num_classes"]
    if dataset is None:
        if k not in DATASET_BY_CLASSES:
            raise ConfigError(
                f"the checkpoint predicts {k} classes; no default dataset config has that many. "
                "Pass --dataset NAME (a configs/dataset/NAME.yaml with that num_classes)"
            )
        dataset = DATASET_BY_CLASSES[k]
    dataset_cfg = dataset_config_for(dataset, k, fmt, configs_dir)
    save_checkpoint(
        {
            "model": converted,
            "config": {"model": model_cfg, "dataset": dataset_cfg},
            "iteration": 0,
            "converted_from": {"format": fmt.name, "path": str(src)},
        },
        dst,
    )
    output.record(dst)
    log.info(
        "converted %s (%s) -> %s: model %s, %d classes, R=%s, align_corners=%s, dataset %s\n%s",
        src,
        fmt.description,
        dst,
        model_cfg["name"],
        k,
        model_cfg.get("recurrence"),
        model_cfg.get("align_corners"),
        dataset,
        report.format(),
    )
    return report
