"""Export a trained CCNet to ONNX and TorchScript, and check the exported graphs against PyTorch.

Both exports trace the model in eval mode and keep only the main logits, ``images (B, 3, H, W) ->
logits (B, K, H, W)`` (inputs normalised with the dataset's mean/std, as in training). Batch, height
and width are dynamic in the ONNX graph; the traced TorchScript module records sizes through
``aten::size``, so it also runs at other input sizes (both are checked by the tests).

The criss-cross attention has several implementations (:func:`ccnet.models.cca.criss_cross_attention`):
the fast ones are a custom ``autograd.Function`` and Triton kernels, which neither the ONNX exporter
nor TorchScript can serialise. Export therefore runs inside ``use_implementation("reference")``
(:func:`ccnet.models.cca.use_implementation`), which selects the einsum reference (plain
``einsum``/``masked_fill``/``softmax`` ops) whatever ``model.cca_impl`` or ``CCNET_CCA_IMPL`` say.
The parity checks compare the exported graph with the eager model as it normally runs (fast
path), so they also confirm that both paths compute the same function.

ONNX uses the TorchScript-based exporter (``dynamo=False``): it needs only the ``onnx`` package,
exports the R101 model in seconds, and handles the dynamic H/W of the attention; the ``torch.export``
-based exporter additionally requires ``onnxscript``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from ccnet.models.cca import use_implementation

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
MIN_OPSET = 17


def _require(module: str):
    """Import an optional export dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is needed for ONNX export and its parity check: pip install -e '.[export]' "
                          "(or pip install -r requirements-dev.txt)") from exc


class LogitsOnly(nn.Module):
    """The model's main output as a plain tensor (exporters need tensors, not dicts).

    Shape:
        images: (B, 3, H, W) -> logits (B, K, H, W).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)["out"]


@contextmanager
def _tracing() -> Iterator[None]:
    """Reference attention, no autograd, and no warnings that are not actionable: tracing warns
    about Python-side shape checks (they only validate, so a constant result is right for any size)
    and the TorchScript-based ONNX exporter warns that it is the legacy one."""
    with warnings.catch_warnings(), use_implementation("reference"), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed.*")  # inside that exporter
        yield


def export_onnx(model: nn.Module, path: PathLike, example: Tensor, opset: int = MIN_OPSET, dynamic: bool = True,
                metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` (eval mode, main logits) as an ONNX file.

    Args:
        model: a :class:`~ccnet.models.CCNet` (or any module returning ``{"out": logits}``).
        path: output ``.onnx`` file.
        example: a (B, 3, H, W) input to trace with.
        opset: ONNX opset, at least 17.
        dynamic: make batch, height and width dynamic axes.
        metadata: written to the model's ``metadata_props`` as JSON strings (e.g. mean/std).

    Returns:
        The path written.
    """
    onnx = _require("onnx")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: need >= {MIN_OPSET}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = LogitsOnly(model).eval()
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    with _tracing():
        torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes=axes if dynamic else None, do_constant_folding=True)
    proto = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    log.info("wrote ONNX (opset %d, %s input shape) to %s", opset, "dynamic" if dynamic else "static", path)
    return path


def export_torchscript(model: nn.Module, path: PathLike, example: Tensor,
                       metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` (eval mode, main logits) as a traced TorchScript module.

    Args:
        model: a :class:`~ccnet.models.CCNet`.
        path: output file (``torch.jit.load`` reads it).
        example: a (B, 3, H, W) input to trace with.
        metadata: stored as the extra file ``meta.json`` (read it with ``_extra_files``).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _tracing():
        traced = torch.jit.trace(LogitsOnly(model).eval(), example)
    torch.jit.save(traced, str(path), _extra_files={"meta.json": json.dumps(dict(metadata or {}))})
    log.info("wrote TorchScript to %s", path)
    return path


def _eager_logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return LogitsOnly(model).eval()(x)


def onnx_max_abs_diff(model: nn.Module, path: PathLike, inputs: Sequence[Tensor]) -> float:
    """Largest |ONNX Runtime − PyTorch| over the logits of ``inputs`` (CPU execution provider)."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    diff = 0.0
    for x in inputs:
        out = torch.from_numpy(session.run(None, {name: x.cpu().numpy()})[0])
        diff = max(diff, (out - _eager_logits(model, x).cpu()).abs().max().item())
    return diff


def torchscript_max_abs_diff(model: nn.Module, path: PathLike, inputs: Sequence[Tensor]) -> float:
    """Largest |TorchScript − PyTorch| over the logits of ``inputs``."""
    scripted = torch.jit.load(str(path), map_location="cpu")
    diff = 0.0
    with torch.no_grad():
        for x in inputs:
            diff = max(diff, (scripted(x.cpu()) - _eager_logits(model, x).cpu()).abs().max().item())
    return diff


def export_checkpoint(checkpoint: PathLike, onnx_path: Optional[PathLike] = None,
                      torchscript_path: Optional[PathLike] = None, size: Sequence[int] = (512, 512),
                      opset: int = MIN_OPSET, dynamic: bool = True, check_sizes: Sequence[Sequence[int]] = (),
                      seed: int = 0) -> Dict[str, Any]:
    """Rebuild the model stored in ``checkpoint`` and export it; check each export on random inputs.

    Args:
        checkpoint: a checkpoint of this framework (trained, or from ``tools/convert_checkpoint.py``)
            with its ``config`` (``model`` and ``dataset`` sections).
        onnx_path: ONNX output, or None.
        torchscript_path: TorchScript output, or None.
        size: (H, W) of the example input used for tracing.
        opset: ONNX opset (>= 17).
        dynamic: dynamic batch/H/W axes in the ONNX graph.
        check_sizes: further (H, W) sizes to check parity at (needs ``dynamic`` for ONNX).
        seed: seed of the random check inputs.

    Returns:
        ``{"model", "num_classes", "mean", "std", "onnx": {"path", "max_abs_diff"},
        "torchscript": {...}}`` with the entries of the formats exported.

    Raises:
        ValueError: nothing to export, or the checkpoint has no stored model config.
    """
    from ccnet.evaluation.loading import load_checkpoint_for_eval, load_model

    if onnx_path is None and torchscript_path is None:
        raise ValueError("nothing to export: give an ONNX path, a TorchScript path, or both")
    ckpt, stored = load_checkpoint_for_eval(checkpoint)
    if not stored or not isinstance(stored.get("model"), Mapping):
        raise ValueError(f"checkpoint {checkpoint} stores no model config ('config' -> 'model'); export needs "
                         "a checkpoint written by tools/train.py or tools/convert_checkpoint.py")
    model_cfg = dict(stored["model"])
    dataset_cfg = dict(stored.get("dataset") or {})
    model = load_model(model_cfg, ckpt, checkpoint, torch.device("cpu"))
    meta = {"model": model_cfg.get("name"), "num_classes": model.num_classes, "mean": dataset_cfg.get("mean"),
            "std": dataset_cfg.get("std"), "input": "RGB, (x / 255 - mean) / std, NCHW float32"}
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(1, 3, *size, generator=gen)
    checks = [example] + [torch.randn(1, 3, *hw, generator=gen) for hw in check_sizes]
    result: Dict[str, Any] = {k: meta[k] for k in ("model", "num_classes", "mean", "std")}
    if onnx_path is not None:
        export_onnx(model, onnx_path, example, opset=opset, dynamic=dynamic, metadata=meta)
        result["onnx"] = {"path": str(onnx_path), "opset": opset,
                          "max_abs_diff": onnx_max_abs_diff(model, onnx_path, checks if dynamic else [example])}
    if torchscript_path is not None:
        export_torchscript(model, torchscript_path, example, metadata=meta)
        result["torchscript"] = {"path": str(torchscript_path),
                                 "max_abs_diff": torchscript_max_abs_diff(model, torchscript_path, checks)}
    return result
