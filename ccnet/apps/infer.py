"""``tools/infer.py`` as a function: segment a file, a folder (recursive) or a glob pattern and write the
predictions (configs/infer.yaml). No output replaces an input or a file no earlier infer run wrote; an
unreadable input is skipped with a warning and reported at the end.
"""

from __future__ import annotations

import glob
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from tqdm import tqdm

from ccnet.apps.eval import plain_config
from ccnet.dist import resolve_device
from ccnet.evaluation.inference import check_eval_config
from ccnet.evaluation.predict import UnreadableImageError, load_for_inference, predict_image, read_rgb
from ccnet.evaluation.writers import PredictionWriter, check_unique_outputs, parse_formats
from ccnet.utils.manifest import OutputManifest

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TOOL = "infer"  # the name its outputs are recorded under in output_dir/manifest.txt
NAMED = 10  # skipped inputs named in the closing line


@dataclass
class InferResult:
    """What :func:`run_infer` did.

    Attributes:
        written: the files of each segmented image (format -> path), in input order.
        skipped: ``(input, message)`` of each input that could not be read, in input order.
    """

    written: List[Dict[str, Path]] = field(default_factory=list)
    skipped: List[Tuple[Path, str]] = field(default_factory=list)


def list_inputs(spec: str) -> Tuple[List[Path], Path]:
    """Image files named by ``spec`` (a file, a folder searched recursively, or a glob pattern) and the folder
    their outputs are laid out from: the file's folder, the folder itself, or the glob's part before its
    first wildcard.

    Raises:
        FileNotFoundError: nothing matches, naming what was searched.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under folder {path}")
        return files, path
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"no files match the pattern {spec!r}")
        first_wildcard = next(i for i, part in enumerate(path.parts) if glob.has_magic(part))
        return files, Path(*path.parts[:first_wildcard]) if first_wildcard else Path(".")
    raise FileNotFoundError(f"input {spec!r} is neither an image file, a folder, nor a glob pattern that matches")


def _outside(inputs: List[Path], input_root: Path, output_dir: Path, spec: str) -> List[Path]:
    """The inputs not in ``output_dir`` when that lies inside the input folder, so a second run does not
    segment the first run's pictures.

    Raises:
        FileNotFoundError: every input lies there.
    """
    out = output_dir.resolve()
    if input_root.resolve() not in out.parents:
        return inputs
    kept = [p for p in inputs if out not in p.resolve().parents]
    if len(kept) < len(inputs):
        log.info(
            "input %s: %d file(s) under output_dir %s left out (earlier outputs, not inputs)",
            spec,
            len(inputs) - len(kept),
            output_dir,
        )
    if not kept:
        raise FileNotFoundError(
            f"every image of input {spec!r} lies in output_dir {output_dir}; point input at "
            "your images, not at infer's outputs"
        )
    return kept


def run_infer(cfg: Any, model_group: bool = False, dataset_group: bool = False) -> InferResult:
    """Segment ``cfg.input`` with ``cfg.checkpoint`` as configured by ``configs/infer.yaml``.

    Args:
        cfg: ``checkpoint, input, output_dir, device, formats, alpha, model, dataset, eval``.
        model_group: a ``model=<name>`` config group was chosen.
        dataset_group: a ``dataset=<name>`` config group was chosen (its palette and normalisation are used).

    Returns:
        The files written per image and the inputs skipped.

    Raises:
        FileNotFoundError: no input images.
        ConfigError: bad ``eval.*``, ``formats`` or ``device`` values, naming the key.
        CheckpointError, CheckpointMismatchError: see :func:`load_for_inference`.
        OutputConflictError: an output path is an input, another input's output, or a file that no earlier
            infer run wrote into ``output_dir``; nothing was written.
    """
    settings = check_eval_config(plain_config(cfg.get("eval"), resolve=True))
    formats = parse_formats(cfg.get("formats", ["color", "overlay"]))
    device = resolve_device(str(cfg.get("device", "auto")), key="device")
    inputs, input_root = list_inputs(str(cfg.input))
    inputs = _outside(inputs, input_root, Path(str(cfg.output_dir)), str(cfg.input))
    ckpt_path = Path(str(cfg.checkpoint)).expanduser()
    model: Any = load_for_inference(
        ckpt_path, device, plain_config(cfg.get("model")), plain_config(cfg.get("dataset")), model_group, dataset_group
    )
    meta = model.dataset_meta
    manifest = OutputManifest(cfg.output_dir, TOOL)
    writer = PredictionWriter(
        cfg.output_dir,
        formats,
        meta["palette"],
        meta["ignore_index"],
        alpha=float(cfg.get("alpha", 0.5)),
        num_classes=len(meta["palette"]),
        input_root=input_root,
        legend=bool(cfg.get("legend", False)),
        classes=meta["classes"],
        manifest=manifest,
    )
    check_unique_outputs(writer, inputs)
    manifest.claim(writer.paths_for(inputs), inputs)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    log.info("segmenting %d image(s) with %s on %s into %s", len(inputs), ckpt_path, device, writer.save_dir)
    result = InferResult()
    for path in tqdm(inputs, desc="infer", dynamic_ncols=True, disable=not sys.stderr.isatty()):
        try:
            image = read_rgb(path)
        except UnreadableImageError as exc:
            log.warning("skipped: %s", exc)
            result.skipped.append((path, str(exc)))
            continue
        result.written.append(writer.write(predict_image(model, image, settings), path, image))
    summary = f"wrote {len(result.written)} of {len(inputs)} images ({', '.join(writer.formats)}) to {writer.save_dir}"
    if result.skipped:
        names = [p.relative_to(input_root).as_posix() if input_root in p.parents else str(p) for p, _ in result.skipped]
        more = f", ... ({len(names) - NAMED} more)" if len(names) > NAMED else ""
        log.warning("%s; skipped %d unreadable: %s%s", summary, len(names), ", ".join(names[:NAMED]), more)
    else:
        log.info("%s", summary)
    return result
