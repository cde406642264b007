"""ImageNet weights for the ResNet backbones (``model.weights``): a torchvision enum member (downloaded into
``$TORCH_HOME/hub/checkpoints``), ``timm:NAME`` (timm optional), or a local file holding a backbone state
dict (bare or under ``state_dict`` / ``model``, keys optionally prefixed ``backbone.`` or ``module.``).

A state dict may use any naming of :data:`LAYOUTS` (torchvision, the release's ``ccnet``, timm, mmseg),
told apart by its stem keys; residual stages are named alike in all. The mapping is strict: every
backbone tensor must be filled with one of its shape and only an ImageNet ``fc.*`` may be left over
(docs/models.md#imagenet-weights).
"""

from __future__ import annotations

import http.client
import logging
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch.hub
import torchvision
from torch import Tensor, nn

from ccnet.checkpoint import load_checkpoint, model_state_from
from ccnet.errors import UserError
from ccnet.utils.state_dict import Rule, remap_state_dict, strip_prefix

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
WEIGHT_FILE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}

_SAME = (Rule(r"(.+)", r"\1"),)
# Per layout: rules from its stem names to ours; residual stages keep their names (the last rule).
LAYOUTS: Dict[str, Tuple[str, Tuple[Rule, ...]]] = {
    "torchvision": ("torchvision ResNet (7x7 stem conv1/bn1)", _SAME),
    "ccnet": ("deep stem named conv1/bn1 ... conv3/bn3 (the official CCNet release, this framework)", _SAME),
    "timm": (
        "timm deep-stem ResNet (conv1.0/1/3/4/6, bn1 = the stem's last norm)",
        (
            Rule(r"conv1\.0\.weight", "conv1.weight"),
            Rule(r"conv1\.1\.(\w+)", r"bn1.\1"),
            Rule(r"conv1\.3\.weight", "conv2.weight"),
            Rule(r"conv1\.4\.(\w+)", r"bn2.\1"),
            Rule(r"conv1\.6\.weight", "conv3.weight"),
            Rule(r"bn1\.(\w+)", r"bn3.\1"),
        )
        + _SAME,
    ),
    "mmseg": (
        "mmsegmentation / open-mmlab ResNetV1c (stem.0/1/3/4/6/7)",
        (
            Rule(r"stem\.0\.weight", "conv1.weight"),
            Rule(r"stem\.1\.(\w+)", r"bn1.\1"),
            Rule(r"stem\.3\.weight", "conv2.weight"),
            Rule(r"stem\.4\.(\w+)", r"bn2.\1"),
            Rule(r"stem\.6\.weight", "conv3.weight"),
            Rule(r"stem\.7\.(\w+)", r"bn3.\1"),
        )
        + _SAME,
    ),
}
CLASSIFIER = (r"fc\..+",)  # an ImageNet classifier: the only thing a backbone may leave over


class PretrainedWeightsError(UserError, ValueError):
    """Backbone weights that cannot be obtained or do not fit the backbone."""


def detect_layout(state: Mapping[str, Tensor]) -> str:
    """The naming of a backbone state dict (a key of :data:`LAYOUTS`), from its stem keys."""
    if "stem.0.weight" in state:
        return "mmseg"
    if "conv1.0.weight" in state:
        return "timm"
    if "conv2.weight" in state:
        return "ccnet"
    return "torchvision"


def _offline_help(file_name: str) -> str:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"Without network access, put {file_name} into {checkpoints}/ (torch.hub's cache, "
        f"$TORCH_HOME/hub/checkpoints), or give a local file with model.weights=PATH, or start from random "
        "weights with model.weights=null"
    )


def _torchvision_state_dict(weights: str, depth: int) -> Tuple[Dict[str, Tensor], str]:
    enum_name = f"ResNet{depth}_Weights"
    member = weights.split(".", 1)[1] if weights.startswith(enum_name + ".") else weights
    enum = torchvision.models.get_model_weights(f"resnet{depth}")
    if member not in enum.__members__:
        valid = ", ".join(enum.__members__)
        raise PretrainedWeightsError(
            f"model.weights={weights!r} is neither an existing file nor a torchvision weight of resnet{depth}: "
            f"expected a path to a .pth file, timm:NAME, or one of {valid}"
        )
    w = enum[member]
    source = f"torchvision {enum_name}.{member}"
    try:
        return w.get_state_dict(progress=False), source
    except (OSError, http.client.HTTPException) as exc:  # URLError, socket, SSL and proxy errors are OSErrors
        file_name = os.path.basename(w.url)
        raise PretrainedWeightsError(
            f"could not download {source} from {w.url} ({type(exc).__name__}: {exc}). " + _offline_help(file_name)
        ) from None


def _timm_state_dict(name: str) -> Tuple[Dict[str, Tensor], str]:
    save = (
        f"python -c \"import timm, torch; torch.save(timm.create_model('{name}', pretrained=True)"
        f".state_dict(), '{name}.pth')\""
    )
    try:
        import timm
    except ImportError:
        raise PretrainedWeightsError(
            f"model.weights=timm:{name} needs the timm package: pip install timm. Or, on a machine that has it, "
            f"{save} and pass model.weights=PATH/{name}.pth"
        ) from None
    try:
        model = timm.create_model(name, pretrained=True)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise PretrainedWeightsError(
                f"timm has no model {name!r} (model.weights=timm:{name}); ResNet layouts that fit: "
                "resnet101s.gluon_in1k (ccnet_r101_official), resnet101c.gluon_in1k (ccnet_r101_mmseg), "
                "resnet50c.gluon_in1k (ccnet_r50_mmseg)"
            ) from None
        raise
    except (OSError, http.client.HTTPException) as exc:  # also huggingface_hub's offline/connection errors
        raise PretrainedWeightsError(
            f"could not download timm weights {name!r} ({type(exc).__name__}: {exc}). On a machine with network "
            f"access: {save}, then copy the file here and pass model.weights=PATH/{name}.pth (or "
            "model.weights=null for random weights)"
        ) from None
    return model.state_dict(), f"timm {name}"


def _file_state_dict(path: Path) -> Tuple[Dict[str, Tensor], str]:
    state = model_state_from(load_checkpoint(path), path)
    return strip_prefix(state, "backbone."), str(path)


def read_backbone_state(weights: str, depth: Optional[int] = None) -> Tuple[Dict[str, Tensor], str]:
    """Fetch the state dict ``weights`` names and describe where it came from.

    Args:
        weights: a file path, ``timm:NAME``, or a torchvision enum member (``IMAGENET1K_V2``).
        depth: ResNet depth, needed to resolve a torchvision enum member.

    Returns:
        ``(state dict, source description)``.

    Raises:
        PretrainedWeightsError: unknown name, missing timm, or a download that failed (the message
            says where to put the file on an offline machine).
        ccnet.checkpoint.CheckpointError: the file is missing or not loadable.
    """
    if weights.startswith(TIMM_PREFIX):
        return _timm_state_dict(weights[len(TIMM_PREFIX) :])
    path = Path(weights).expanduser()
    if path.suffix in WEIGHT_FILE_SUFFIXES or path.exists():
        return _file_state_dict(path)
    if depth is None:
        raise PretrainedWeightsError(
            f"model.weights={weights!r} is neither an existing file nor timm:NAME; torchvision weight names "
            "exist only for the torchvision-layout backbones (resnet50, resnet101)"
        )
    return _torchvision_state_dict(weights, depth)


def load_backbone_weights(backbone: nn.Module, weights: str, depth: Optional[int] = None, strict: bool = True) -> None:
    """Initialise ``backbone`` from ``weights`` (see :func:`read_backbone_state`), in any layout.

    Args:
        weights: a file path, ``timm:NAME``, or a torchvision enum member.
        depth: ResNet depth, needed to resolve a torchvision enum member.
        strict: fail unless every backbone tensor is filled and only ``fc.*`` is left over; False loads the
            overlap and logs what did not fit.

    Raises:
        PretrainedWeightsError: as :func:`read_backbone_state`, or the weights do not fit (the message lists
            the keys and names the assumed layout).
    """
    state, source = read_backbone_state(weights, depth)
    layout = detect_layout(state)
    description, rules = LAYOUTS[layout]
    out, report = remap_state_dict(state, backbone.state_dict(), rules, drop=CLASSIFIER, strict=False)
    if not report.ok:
        message = (
            f"backbone weights from {source} do not fit the {type(backbone).__name__} of this model "
            f"(read as the {layout} layout: {description}):\n{report.format(limit=8)}"
        )
        if strict:
            raise PretrainedWeightsError(
                message + "\nThe weights each model config takes: docs/models.md; "
                "model.weights_strict=false loads the overlap anyway."
            )
        log.warning(message)
    backbone.load_state_dict(out, strict=False)
    log.info("loaded backbone weights from %s (%s layout, %d tensors)", source, layout, len(report.mapped))
