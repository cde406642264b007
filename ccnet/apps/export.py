"""Export a trained CCNet (arXiv 1811.11721) as ``torch.export`` (``.pt2``) and ONNX, checked against PyTorch.

Both hold the eval-mode inference function with only the main logits, ``images (B, 3, H, W) -> logits
(B, K, H, W)`` (RGB, ``(x / 255 - mean) / std``; logits at the input size), with dynamic batch (>= 2
recorded, 1 runs), height and width (>= ``MIN_SIDE``), and carry their metadata (``meta.json`` extra file,
ONNX ``metadata_props``); :func:`load_exported` reads either back. Export runs the einsum reference
attention, the one exporters can serialise; ONNX falls back to the TorchScript exporter where the dynamo
one fails. Why these limits and choices: docs/interop.md#export-toolsexportpy.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor
from torch.export import Dim, ExportedProgram

from ccnet.errors import UserError
from ccnet.models.cca import use_implementation
from ccnet.utils.manifest import OutputFiles

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
MIN_OPSET = 17
DEFAULT_OPSET = 18  # the dynamo exporter's own opset; 17 works through an ONNX version conversion
ODD_CHECK_SIZE = (301, 517)  # checked besides the export size and every --check-size
META_FILE = "meta.json"  # the .pt2 extra file holding the metadata
INPUT_CONVENTION = "RGB, (x / 255 - mean) / std, NCHW float32"
MIN_SIDE = 9  # smallest H, W: the stride-8 feature map must be >= 2 x 2 (docs/interop.md)
AXES = {0: "batch", 2: "height", 3: "width"}  # dynamic axes of images (B, 3, H, W) and logits (B, K, H, W)
TOOL = "export"  # the name its files are recorded under in the manifest.txt of each output's folder


class ExportError(UserError, RuntimeError):
    """``torch.export`` could not export the model (the message says at which size and why)."""


def _require(module: str, purpose: str = "ONNX export and its parity check"):
    """Import an optional export dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed for {purpose}: pip install -e '.[export]' (or pip install -r requirements-dev.txt)"
        ) from exc


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


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote and how.

    Attributes:
        path: the ``.onnx`` file.
        opset: the default-domain opset of the written model.
        exporter: ``"dynamo"`` (``torch.export``-based) or ``"torchscript"`` (the fallback).
        fallback_reason: why the dynamo exporter was not used; None when it was.
    """

    path: str
    opset: int
    exporter: str
    fallback_reason: Optional[str] = None


@contextmanager
def _exporting() -> Iterator[None]:
    """Reference attention (the one every exporter can serialise) and no autograd."""
    with use_implementation("reference"), torch.no_grad():
        yield


@contextmanager
def _legacy_onnx_warnings_silenced() -> Iterator[None]:
    """Silence the fallback exporter's unactionable warnings: tracer warnings and its own deprecation notices."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed.*")
        yield


def export_program(model: nn.Module, example: Tensor) -> ExportedProgram:
    """``torch.export`` the model's inference forward with dynamic batch, height and width.

    Args:
        model: a :class:`~ccnet.models.CCNet` (or any module returning ``{"out": logits}``).
        example: a (B, 3, H, W) input with B >= 2 (a batch of 1 would be specialised) and H, W >= 9.

    Returns:
        The exported program; its ``range_constraints`` hold the inferred size limits (:func:`dynamic_ranges`).

    Raises:
        ValueError: ``example`` is not 4-D or its batch is below 2.
        ExportError: ``torch.export`` failed (e.g. the example is too small to keep H, W dynamic).
    """
    if example.dim() != 4 or example.shape[0] < 2:
        raise ValueError(
            f"the export example must be (B, 3, H, W) with B >= 2, got {tuple(example.shape)}: "
            "torch.export specialises a batch of 1"
        )
    dynamic = {"images": {axis: Dim.DYNAMIC for axis in AXES}}
    try:
        with _exporting():
            return torch.export.export(LogitsOnly(model).eval(), (example,), dynamic_shapes=dynamic)
    except Exception as exc:  # torch.export raises many types (UserError, GuardOnDataDependentSymNode, ...)
        raise ExportError(
            f"torch.export failed for input {tuple(example.shape)} with dynamic batch/H/W: "
            f"{_first_line(exc)}. Sizes must keep the stride-8 feature map at least 2 x 2 "
            f"(H, W >= {MIN_SIDE}, --size)"
        ) from exc


def dynamic_ranges(program: ExportedProgram) -> Dict[str, List[Optional[int]]]:
    """The inferred ``[min, max]`` of batch, height and width (max None: unbounded; min == max: static).

    Returns:
        ``{"batch": [2, None], "height": [9, None], "width": [9, None]}`` for CCNet.
    """
    placeholder = next(
        n for n in program.graph.nodes if n.op == "placeholder" and n.name == program.graph_signature.user_inputs[0]
    )
    shape = placeholder.meta["val"].shape
    ranges: Dict[str, List[Optional[int]]] = {}
    for axis, name in AXES.items():
        size = shape[axis]
        if isinstance(size, int):
            ranges[name] = [size, size]
            continue
        bounds = program.range_constraints[size.node.expr]
        # torch's integer infinity claims is_finite (it is an "integer"), but only finite bounds are sympy Integers
        ranges[name] = [int(bounds.lower), int(bounds.upper) if bounds.upper.is_Integer else None]
    return ranges


def save_program(program: ExportedProgram, path: PathLike, metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """``torch.export.save`` ``program`` with ``metadata`` as the extra file ``meta.json``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, path, extra_files={META_FILE: json.dumps(dict(metadata or {}))})
    log.info("wrote torch.export program (dynamic batch/H/W: %s) to %s", dynamic_ranges(program), path)
    return path


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _dynamo_onnx(
    model: nn.Module, example: Tensor, opset: int, dynamic: bool, program: Optional[ExportedProgram]
) -> Any:
    """The ``torch.export``-based ONNX exporter's model proto (axes named batch/height/width)."""
    if dynamic and program is None:
        program = export_program(model, example if example.shape[0] >= 2 else example.expand(2, -1, -1, -1))
    source: Any = program if dynamic else LogitsOnly(model).eval()
    with _exporting():
        onnx_program = torch.onnx.export(
            source,
            (example,),
            dynamo=True,
            opset_version=opset,
            verbose=False,
            input_names=["images"],
            output_names=["logits"],
        )
    assert onnx_program is not None  # dynamo=True always returns the program
    if dynamic:
        shape: Any = onnx_program.model.graph.inputs[0].shape
        onnx_program.rename_axes({shape[axis]: name for axis, name in AXES.items()})
    return onnx_program.model_proto


def _torchscript_onnx(model: nn.Module, example: Tensor, opset: int, dynamic: bool) -> Any:
    """The TorchScript-based ONNX exporter's model proto (the fallback), exported into memory."""
    onnx = _require("onnx")
    axes = {"images": AXES, "logits": AXES}
    buffer = io.BytesIO()
    with _exporting(), _legacy_onnx_warnings_silenced():
        torch.onnx.export(
            LogitsOnly(model).eval(),
            (example,),
            buffer,  # type: ignore[arg-type]  # a file object works, as torch.save's do
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes=axes if dynamic else None,
            do_constant_folding=True,
        )
    return onnx.load_model_from_string(buffer.getvalue())


def export_onnx(
    model: nn.Module,
    path: PathLike,
    example: Tensor,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    metadata: Optional[Mapping[str, Any]] = None,
    program: Optional[ExportedProgram] = None,
) -> OnnxExport:
    """Write ``model`` (eval mode, main logits) as one self-contained ONNX file, by the dynamo exporter if it works.

    Args:
        model: a :class:`~ccnet.models.CCNet` (or any module returning ``{"out": logits}``).
        path: output ``.onnx`` file.
        example: a (B, 3, H, W) input; with ``dynamic=False`` its shape is the graph's fixed shape.
        opset: ONNX opset, at least 17.
        dynamic: batch, height and width as named dynamic axes (``batch``, ``height``, ``width``).
        metadata: written to the model's ``metadata_props`` as JSON strings.
        program: the :func:`export_program` of ``model``, reused by the dynamo exporter (else exported here).

    Returns:
        The path, the opset written, the exporter used and, after a fallback, the reason.

    Raises:
        ValueError: opset below 17.
        ImportError: ``onnx`` is not installed.
    """
    onnx = _require("onnx")
    if opset < MIN_OPSET:
        raise ValueError(f"ONNX opset {opset} is too old: need >= {MIN_OPSET} (--opset)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reason, proto = None, None
    try:
        importlib.import_module("onnxscript")  # the dynamo exporter's dependency, not ours
    except ImportError as exc:
        reason = f"onnxscript is not installed ({exc}); pip install onnxscript"
    else:
        try:
            proto = _dynamo_onnx(model, example, opset, dynamic, program)
        except Exception as exc:  # an unsupported op, a dynamic-shape guard, a failed opset conversion...
            reason = f"the dynamo exporter failed: {_first_line(exc)}"
            log.debug("dynamo ONNX export failed", exc_info=True)
    if proto is None:
        log.warning("ONNX: using the TorchScript-based exporter (%s)", reason)
        proto = _torchscript_onnx(model, example, opset, dynamic)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path), save_as_external_data=False)
    written = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    result = OnnxExport(str(path), written, "torchscript" if reason else "dynamo", reason)
    log.info(
        "wrote ONNX (opset %d, %s input shape, %s exporter) to %s",
        written,
        "dynamic" if dynamic else "static",
        result.exporter,
        path,
    )
    return result


class OnnxRunner:
    """An ONNX model in ONNX Runtime, called like the PyTorch model: (B, 3, H, W) -> (B, K, H, W) logits.

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers (default: CPU).
    """

    def __init__(self, path: PathLike, providers: Optional[Sequence[str]] = None) -> None:
        ort = _require("onnxruntime", "running an ONNX export")
        self.session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: Tensor) -> Tensor:
        logits = self.session.run(None, {self.input_name: images.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(logits).to(images.device)


def load_exported(
    path: PathLike, providers: Optional[Sequence[str]] = None
) -> Tuple[Callable[[Tensor], Tensor], Dict[str, Any]]:
    """Read an export of :func:`export_checkpoint` back: the model as a callable, and its metadata.

    Args:
        path: a ``.pt2`` (``torch.export``) or ``.onnx`` file.
        providers: ONNX Runtime execution providers for ``.onnx`` (default: CPU).

    Returns:
        ``(run, metadata)``: ``run(images) -> logits``, for ``.pt2`` the program's ``module()`` (call it under
        ``torch.no_grad()``; it runs on the CPU unless retargeted with ``move_to_device_pass``), for ``.onnx``
        an :class:`OnnxRunner`; ``metadata`` as written by :func:`export_metadata` (empty if none).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the suffix is neither ``.pt2`` nor ``.onnx``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}: expected a .pt2 or .onnx file from tools/export.py")
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        extra = {META_FILE: ""}
        program = torch.export.load(path, extra_files=extra)
        return program.module(), json.loads(extra[META_FILE] or "{}")
    if suffix == ".onnx":
        runner = OnnxRunner(path, providers)
        stored = runner.session.get_modelmeta().custom_metadata_map
        return runner, {key: json.loads(value) for key, value in stored.items()}
    raise ValueError(
        f"cannot tell the format of {path} from its suffix {suffix!r}: expected .pt2 (torch.export) or .onnx"
    )


def parity(model: nn.Module, exported: Callable[[Tensor], Tensor], inputs: Sequence[Tensor]) -> Dict[str, float]:
    """``max_abs_diff`` (largest |export − PyTorch| over the logits of ``inputs``), ``max_abs_logit`` (largest
    |PyTorch logit|) and ``relative_diff``, the first over the second (at least 1): float32 rounding grows
    with the logits' magnitude, so the relative figure is what a tolerance can hold to at every size."""
    diff = largest = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = LogitsOnly(model).eval()(x)
            diff = max(diff, (exported(x).to(ref.device) - ref).abs().max().item())
            largest = max(largest, ref.abs().max().item())
    return {"max_abs_diff": diff, "max_abs_logit": largest, "relative_diff": diff / max(1.0, largest)}


def export_metadata(model_cfg: Mapping[str, Any], dataset_cfg: Mapping[str, Any], num_classes: int) -> Dict[str, Any]:
    """What a user of an export needs besides the graph: class names and colours, and the input normalisation."""
    from ccnet.data.build import dataset_metainfo

    try:
        classes, palette, _ = dataset_metainfo(dataset_cfg)
    except ValueError as exc:  # e.g. a converted checkpoint without a dataset name: the graph is still usable
        log.warning("no class names/palette in the export metadata: %s", exc)
        classes, palette = None, None
    return {
        "model": model_cfg.get("name"),
        "num_classes": num_classes,
        "classes": None if classes is None else list(classes)[:num_classes],
        "palette": None if palette is None else [list(rgb) for rgb in palette][:num_classes],
        "mean": dataset_cfg.get("mean"),
        "std": dataset_cfg.get("std"),
        "input": INPUT_CONVENTION,
    }


def export_checkpoint(
    checkpoint: PathLike,
    onnx_path: Optional[PathLike] = None,
    pt2_path: Optional[PathLike] = None,
    size: Sequence[int] = (512, 512),
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    check_sizes: Sequence[Sequence[int]] = (),
    seed: int = 0,
    outputs: Optional[OutputFiles] = None,
) -> Dict[str, Any]:
    """Rebuild the model stored in ``checkpoint``, export it and check each export on random inputs.

    Parity inputs: a batch of 2 at ``size`` and a batch of 1 at each of ``check_sizes``. Every output path is
    checked before the checkpoint is read.

    Args:
        checkpoint: a checkpoint of this framework (trained, or converted) with its stored ``config``.
        onnx_path: ONNX output, or None.
        pt2_path: ``torch.export`` program output (``.pt2``), or None.
        size: (H, W) of the export example; H, W >= 9.
        opset: ONNX opset (>= 17).
        dynamic: dynamic batch/H/W axes in the ONNX graph (the ``.pt2`` is always dynamic).
        check_sizes: further (H, W) sizes to check parity at (the static ONNX graph is checked at ``size`` only).
        seed: seed of the random check inputs.
        outputs: every file of the run, checked here and the exports recorded as written; None: the two export
            paths. A caller writing more passes them all and records its own.

    Returns:
        ``{"model", "num_classes", "classes", "mean", "std", "pt2": {"path", "dynamic", <parity>},
        "onnx": {"path", "opset", "exporter", "fallback_reason", "dynamic", <parity>}}`` (<parity>: the
        keys of :func:`parity`, over the export size, every check size and :data:`ODD_CHECK_SIZE`) with the entries
        of the formats exported.

    Raises:
        OutputConflictError: an output path is the checkpoint, another output, or a file no export wrote
            (its folder's ``manifest.txt``); nothing is written.
        ValueError: nothing to export, an opset below 17, a size below 9, or the checkpoint has no stored
            model config (``CheckpointMismatchError``).
        CheckpointError: unreadable checkpoint, or weights holding NaN/inf.
        ExportError: ``torch.export`` failed for the ``.pt2``.
    """
    from ccnet.evaluation.loading import CheckpointMismatchError, load_checkpoint_for_eval, load_model

    if onnx_path is None and pt2_path is None:
        raise ValueError("nothing to export: give an ONNX path, a .pt2 path, or both")
    if onnx_path is not None and opset < MIN_OPSET:  # before the (slow) .pt2 export, not after it
        raise ValueError(f"ONNX opset {opset} is too old: need >= {MIN_OPSET} (--opset)")
    small = [tuple(hw) for hw in [size, *check_sizes] if min(hw) < MIN_SIDE]
    if small:
        raise ValueError(
            f"sizes {small} are too small: H and W must be >= {MIN_SIDE} (the stride-8 feature map "
            "of the export is at least 2 x 2); change --size / --check-size"
        )
    checkpoint = Path(checkpoint)
    onnx_path = None if onnx_path is None else Path(onnx_path)
    pt2_path = None if pt2_path is None else Path(pt2_path)
    if outputs is None:
        outputs = OutputFiles(TOOL, {"--pt2": pt2_path, "--onnx": onnx_path})
    outputs.check(inputs=[checkpoint])
    ckpt, stored = load_checkpoint_for_eval(checkpoint)
    if not stored or not isinstance(stored.get("model"), Mapping):
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint} stores no model config ('config' -> 'model'); "
            "export needs a checkpoint written by tools/train.py or "
            "tools/convert_checkpoint.py"
        )
    model_cfg = dict(stored["model"])
    dataset_cfg = dict(stored.get("dataset") or {})
    model = load_model(model_cfg, ckpt, checkpoint, torch.device("cpu"))
    meta = export_metadata(model_cfg, dataset_cfg, int(model_cfg["num_classes"]))
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(2, 3, *size, generator=gen)
    # an odd size too, always: the dynamic axes' worst case (no multiple of 8 anywhere)
    sizes = [*check_sizes, *([ODD_CHECK_SIZE] if ODD_CHECK_SIZE not in map(tuple, check_sizes) else [])]
    checks = [example] + [torch.randn(1, 3, *hw, generator=gen) for hw in sizes]
    result: Dict[str, Any] = {k: meta[k] for k in ("model", "num_classes", "classes", "mean", "std")}

    program: Optional[ExportedProgram] = None
    if pt2_path is not None:
        program = export_program(model, example)
        save_program(program, pt2_path, meta)
        outputs.record(pt2_path)
        run, _ = load_exported(pt2_path)
        result["pt2"] = {
            "path": str(pt2_path),
            "dynamic": dynamic_ranges(program),
            **parity(model, run, checks),
        }
    if onnx_path is not None:
        written = export_onnx(
            model,
            onnx_path,
            example if dynamic else example[:1],
            opset=opset,
            dynamic=dynamic,
            metadata=meta,
            program=program,
        )
        outputs.record(onnx_path)
        run, _ = load_exported(onnx_path)
        result["onnx"] = {
            **asdict(written),
            "dynamic": dynamic,
            **parity(model, run, checks if dynamic else [example[:1]]),
        }
    return result
