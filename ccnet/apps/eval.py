"""``tools/eval.py`` as a function: checkpoint + config -> metrics, table, ``metrics.json``, predictions.
Under ``torchrun`` every process evaluates its shard; rank 0 prints and writes the merged result.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ccnet import dist
from ccnet.dist import resolve_device
from ccnet.errors import ConfigError
from ccnet.evaluation.evaluator import PredictionCallback, evaluate
from ccnet.evaluation.inference import check_eval_config
from ccnet.evaluation.loading import (
    CheckpointMismatchError,
    load_checkpoint_for_eval,
    load_model,
    resolve_model_and_dataset,
)
from ccnet.evaluation.writers import PredictionWriter, check_unique_outputs, parse_formats
from ccnet.utils.manifest import OutputManifest
from ccnet.utils.visualize import denormalize

log = logging.getLogger(__name__)

TOOL = "eval"  # the name its outputs are recorded under in output_dir/manifest.txt
RESULT_FILES = ("metrics.json", "per_class_iou.png", "confusion_matrix.png")  # in output_dir, labelled splits
MISSING = "—"  # a metric that is not defined (NaN): the table says why below it


def plain_config(cfg: Any, resolve: bool = False) -> Dict[str, Any]:
    if isinstance(cfg, DictConfig):
        out = OmegaConf.to_container(cfg, resolve=resolve)
        assert isinstance(out, dict)
        return {str(k): v for k, v in out.items()}
    return dict(cfg or {})


def format_table(classes: Sequence[str], results: Mapping[str, Any]) -> str:
    """Per-class IoU / Acc table (percent) and the mIoU / mAcc / aAcc line; an undefined (NaN) metric is
    printed as ``—`` with a note below saying why.
    """

    def pct(v: float) -> str:
        return f"{MISSING:>6}" if math.isnan(v) else f"{100 * v:6.2f}"

    width = max([len("class")] + [len(c) for c in classes])
    lines = [f"{'class':<{width}}    IoU    Acc", "-" * (width + 15)]
    lines += [
        f"{name:<{width}} {pct(iou)} {pct(acc)}" for name, iou, acc in zip(classes, results["IoU"], results["Acc"])
    ]
    lines += [
        "-" * (width + 15),
        f"mIoU {pct(results['mIoU']).strip()}  mAcc {pct(results['mAcc']).strip()}  "
        f"aAcc {pct(results['aAcc']).strip()}  ({results['num_images']} images)",
    ]
    notes = []
    if any(math.isnan(v) for v in results["IoU"]):
        notes.append("IoU: class absent from ground truth and prediction, left out of mIoU")
    if any(math.isnan(v) for v in results["Acc"]):
        notes.append("Acc: class absent from ground truth, left out of mAcc")
    if any(math.isnan(results[k]) for k in ("mIoU", "mAcc", "aAcc")):
        notes.append("mIoU/mAcc/aAcc: no labelled pixel was scored")
    lines += [f"{MISSING} {note}" for note in notes]
    return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """NaN -> None, so that ``metrics.json`` is standard JSON (``null``: the metric is not defined)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def run_eval(cfg: Any, model_group: bool = False, dataset_group: bool = False) -> Dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` as configured by ``configs/eval.yaml``.

    The ``eval.*`` values, the checkpoint, the split's labels and every output path are checked before
    inference (:class:`~ccnet.utils.manifest.OutputManifest`).

    Args:
        cfg: the composed eval config: ``checkpoint, split, device, output_dir, model, dataset, eval``.
        model_group: a ``model=<name>`` config group was chosen (all its keys override the checkpoint's).
        dataset_group: a ``dataset=<name>`` config group was chosen.

    Returns:
        :func:`~ccnet.evaluation.evaluator.evaluate`'s result plus ``classes`` (names); on an unlabelled
        split only ``num_images`` and ``classes``.

    Raises:
        ConfigError: bad ``eval.*``, ``formats`` or ``device`` values, or an unlabelled split without
            ``formats``, naming the key.
        CheckpointError, CheckpointMismatchError: an unreadable checkpoint, NaN/inf weights, weights or a
            class count that do not fit.
        DatasetError: no labelled pixel in the split, or a broken file (also from DataLoader workers).
        OutputConflictError: an output would replace an input or a file no earlier eval run wrote.
    """
    device = resolve_device(str(cfg.get("device", "auto")), key="device")
    if dist.init_distributed(device.type) and device.type == "cuda":
        device = torch.device("cuda", dist.get_local_rank())
    eval_cfg = plain_config(cfg.get("eval"), resolve=True)
    check_eval_config(eval_cfg)  # reject bad eval.* values before loading anything
    formats = list(parse_formats(cfg.formats)) if cfg.get("formats") else []

    ckpt_path = Path(str(cfg.checkpoint)).expanduser()
    ckpt, stored = load_checkpoint_for_eval(ckpt_path)
    model_cfg, dataset_cfg = resolve_model_and_dataset(
        stored, plain_config(cfg.get("model")), plain_config(cfg.get("dataset")), model_group, dataset_group, ckpt_path
    )
    from ccnet.data import build_dataset, check_labelled_split

    split = str(cfg.get("split", "val"))
    dataset = build_dataset(dataset_cfg, split)
    if dataset.num_classes != model_cfg["num_classes"]:
        raise CheckpointMismatchError(
            f"checkpoint {ckpt_path} predicts {model_cfg['num_classes']} classes but dataset {dataset_cfg['name']!r} "
            f"has {dataset.num_classes}; evaluate it on the dataset it was trained on (dataset=<name>) or a dataset "
            "config with the same classes"
        )
    labelled = bool(getattr(dataset, "has_labels", True))
    if labelled:
        check_labelled_split(dataset, split, role="evaluation", key="split")
    elif not formats:
        raise ConfigError(
            f"split {split!r} of {dataset_cfg['name']!r} has no labels, so there is nothing to score; "
            "write predictions instead: formats=[cityscapes] for a test-server submission, or "
            "formats=[color]"
        )

    out_dir = Path(str(cfg.output_dir))
    manifest = OutputManifest(out_dir, TOOL)
    writer: Optional[PredictionWriter] = None
    image_paths = list(getattr(dataset, "image_paths", []))
    planned = [out_dir / name for name in RESULT_FILES] if labelled else []
    if formats:
        writer = PredictionWriter(
            out_dir / "predictions",
            formats,
            dataset.palette,
            dataset.ignore_index,
            alpha=float(cfg.get("alpha", 0.5)),
            num_classes=dataset.num_classes,
            legend=bool(cfg.get("legend", False)),
            classes=dataset.classes,
            manifest=manifest,
        )
        check_unique_outputs(writer, image_paths)
        planned += writer.paths_for(image_paths)
    dist.run_on_main(manifest.claim, planned, image_paths + list(getattr(dataset, "label_paths", None) or []))

    model = load_model(model_cfg, ckpt, ckpt_path, device)
    if eval_cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    log.info(
        "evaluating %s on %s/%s (%d images, %d process(es)), eval: %s",
        ckpt_path,
        dataset_cfg["name"],
        split,
        len(dataset),
        dist.get_world_size(),
        eval_cfg,
    )
    results = evaluate(
        model, dataset, eval_cfg, device, on_prediction=None if writer is None else _save_predictions(writer, dataset)
    )
    results["classes"] = list(dataset.classes)
    if dist.is_main_process():
        _report(results, ckpt_path, split, dataset_cfg, eval_cfg, writer, manifest)
    dist.barrier()  # every rank's predictions are on disk before anyone returns
    return results


def _save_predictions(writer: PredictionWriter, dataset: Any) -> PredictionCallback:
    """``on_prediction`` callback writing each prediction under the name of its image file."""
    needs_image = "overlay" in writer.formats

    def save(index: int, image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor) -> None:
        picture = denormalize(image, dataset.mean, dataset.std) if needs_image else None
        writer.write(pred.numpy(), dataset.image_paths[index], picture)

    return save


def _report(
    results: Dict[str, Any],
    ckpt_path: Path,
    split: str,
    dataset_cfg: Mapping[str, Any],
    eval_cfg: Mapping[str, Any],
    writer: Optional[PredictionWriter],
    manifest: OutputManifest,
) -> None:
    if writer is not None:
        log.info("predictions (%s) written to %s", ", ".join(writer.formats), writer.save_dir)
    if "mIoU" not in results:
        return
    classes: List[str] = results["classes"]
    log.info("results on %s/%s:\n%s", dataset_cfg["name"], split, format_table(classes, results))
    out_dir = manifest.folder
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "checkpoint": str(ckpt_path),
        "dataset": dataset_cfg["name"],
        "split": split,
        "num_images": results["num_images"],
        "mIoU": results["mIoU"],
        "mAcc": results["mAcc"],
        "aAcc": results["aAcc"],
        "per_class": {
            name: {"IoU": iou, "Acc": acc} for name, iou, acc in zip(classes, results["IoU"], results["Acc"])
        },
        "eval": dict(eval_cfg),
    }
    path = out_dir / RESULT_FILES[0]
    path.write_text(json.dumps(json_safe(payload), indent=2) + "\n")
    manifest.record(path)
    log.info("metrics written to %s", path)
    _write_plots(results, manifest)


def _write_plots(results: Mapping[str, Any], manifest: OutputManifest) -> None:
    """``per_class_iou.png`` and ``confusion_matrix.png`` (rows = ground truth, normalised) in the manifest's folder."""
    from ccnet.utils.plots import plot_confusion_matrix, plot_per_class_iou

    classes = list(results["classes"])
    iou_path, confusion_path = (manifest.folder / name for name in RESULT_FILES[1:])
    plot_per_class_iou(results["IoU"], classes, results["mIoU"], path=iou_path)
    manifest.record(iou_path)
    plot_confusion_matrix(results["confusion"], classes, path=confusion_path)
    manifest.record(confusion_path)
    log.info("plots written to %s and %s", iou_path, confusion_path)
