"""``tools/eval.py`` as a function: checkpoint + config -> metrics, table, ``metrics.json``, predictions.

Launched with ``torchrun --nproc_per_node=N`` every process evaluates its shard (see
:func:`ccnet.evaluation.evaluator.evaluate`); rank 0 prints and writes the merged result.
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
from ccnet.evaluation.evaluator import PredictionCallback, evaluate
from ccnet.evaluation.inference import InferenceSettings
from ccnet.evaluation.loading import load_checkpoint_for_eval, load_model, resolve_model_and_dataset
from ccnet.evaluation.writers import PredictionWriter
from ccnet.utils.visualize import denormalize

log = logging.getLogger(__name__)


def plain_config(cfg: Any, resolve: bool = False) -> Dict[str, Any]:
    if isinstance(cfg, DictConfig):
        out = OmegaConf.to_container(cfg, resolve=resolve)
        assert isinstance(out, dict)
        return out
    return dict(cfg or {})


def format_table(classes: Sequence[str], results: Mapping[str, Any]) -> str:
    """Per-class IoU / Acc table (percent) followed by the mIoU / mAcc / aAcc summary line."""

    def pct(v: float) -> str:
        return "   nan" if math.isnan(v) else f"{100 * v:6.2f}"

    width = max([len("class")] + [len(c) for c in classes])
    lines = [f"{'class':<{width}}    IoU    Acc", "-" * (width + 15)]
    lines += [f"{name:<{width}} {pct(iou)} {pct(acc)}"
              for name, iou, acc in zip(classes, results["IoU"], results["Acc"])]
    lines += ["-" * (width + 15),
              f"mIoU {pct(results['mIoU']).strip()}  mAcc {pct(results['mAcc']).strip()}  "
              f"aAcc {pct(results['aAcc']).strip()}  ({results['num_images']} images)"]
    return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """NaN -> None so that ``metrics.json`` is standard JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def run_eval(cfg: Any, model_group: bool = False, dataset_group: bool = False) -> Dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` as configured by ``configs/eval.yaml``.

    Args:
        cfg: the composed eval config: ``checkpoint, split, device, output_dir, model, dataset, eval``.
        model_group: a ``model=<name>`` config group was chosen (all its keys override the checkpoint's).
        dataset_group: a ``dataset=<name>`` config group was chosen.

    Returns:
        :func:`~ccnet.evaluation.evaluator.evaluate`'s result plus ``classes`` (names); on an
        unlabelled split only ``num_images`` and ``classes``.

    Raises:
        ValueError: inconsistent configuration (class counts, unlabelled split without
            ``formats``, bad ``eval.*`` values), with the key to change.
    """
    device = resolve_device(str(cfg.get("device", "auto")), key="device")
    if dist.init_distributed(device.type) and device.type == "cuda":
        device = torch.device("cuda", dist.get_local_rank())
    eval_cfg = plain_config(cfg.get("eval"), resolve=True)
    InferenceSettings.from_config(eval_cfg)  # reject bad eval.* values before loading anything

    ckpt_path = Path(str(cfg.checkpoint)).expanduser()
    ckpt, stored = load_checkpoint_for_eval(ckpt_path)
    model_cfg, dataset_cfg = resolve_model_and_dataset(stored, plain_config(cfg.get("model")),
                                                       plain_config(cfg.get("dataset")), model_group, dataset_group,
                                                       ckpt_path)
    from ccnet.data import build_dataset

    split = str(cfg.get("split", "val"))
    dataset = build_dataset(dataset_cfg, split)
    if dataset.num_classes != model_cfg["num_classes"]:
        raise ValueError(f"checkpoint {ckpt_path} predicts {model_cfg['num_classes']} classes but dataset "
                         f"{dataset_cfg['name']!r} has {dataset.num_classes}; evaluate it on the dataset it was "
                         "trained on (dataset=<name>) or a dataset config with the same classes")
    model = load_model(model_cfg, ckpt, ckpt_path, device)
    if eval_cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)

    writer: Optional[PredictionWriter] = None
    formats = cfg.get("formats") or []
    formats = [formats] if isinstance(formats, str) else list(formats)
    if formats:
        writer = PredictionWriter(Path(str(cfg.output_dir)) / "predictions", formats, dataset.palette,
                                  dataset.ignore_index, alpha=float(cfg.get("alpha", 0.5)),
                                  num_classes=dataset.num_classes, legend=bool(cfg.get("legend", False)),
                                  classes=dataset.classes)
    elif not getattr(dataset, "has_labels", True):
        raise ValueError(f"split {split!r} of {dataset_cfg['name']!r} has no labels, so there is nothing to score; "
                         "write predictions instead: formats=[cityscapes] for a test-server submission, or "
                         "formats=[color]")

    log.info("evaluating %s on %s/%s (%d images, %d process(es)), eval: %s", ckpt_path, dataset_cfg["name"],
             split, len(dataset), dist.get_world_size(), eval_cfg)
    results = evaluate(model, dataset, eval_cfg, device,
                       on_prediction=None if writer is None else _save_predictions(writer, dataset))
    results["classes"] = list(dataset.classes)
    if dist.is_main_process():
        _report(results, cfg, ckpt_path, split, dataset_cfg, eval_cfg, writer)
    dist.barrier()  # every rank's predictions are on disk before anyone returns
    return results


def _save_predictions(writer: PredictionWriter, dataset: Any) -> PredictionCallback:
    """``on_prediction`` callback writing each prediction under the name of its image file."""
    needs_image = "overlay" in writer.formats

    def save(index: int, image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor) -> None:
        picture = denormalize(image, dataset.mean, dataset.std) if needs_image else None
        writer.write(pred.numpy(), dataset.image_paths[index], picture)

    return save


def _report(results: Dict[str, Any], cfg: Any, ckpt_path: Path, split: str, dataset_cfg: Mapping[str, Any],
            eval_cfg: Mapping[str, Any], writer: Optional[PredictionWriter]) -> None:
    if writer is not None:
        log.info("predictions (%s) written to %s", ", ".join(writer.formats), writer.save_dir)
    if "mIoU" not in results:
        return
    classes: List[str] = results["classes"]
    log.info("results on %s/%s:\n%s", dataset_cfg["name"], split, format_table(classes, results))
    out_dir = Path(str(cfg.get("output_dir", ".")))
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "checkpoint": str(ckpt_path),
        "dataset": dataset_cfg["name"],
        "split": split,
        "num_images": results["num_images"],
        "mIoU": results["mIoU"],
        "mAcc": results["mAcc"],
        "aAcc": results["aAcc"],
        "per_class": {name: {"IoU": iou, "Acc": acc}
                      for name, iou, acc in zip(classes, results["IoU"], results["Acc"])},
        "eval": dict(eval_cfg),
    }
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(json_safe(payload), indent=2) + "\n")
    log.info("metrics written to %s", path)
    _write_plots(results, out_dir)


def _write_plots(results: Mapping[str, Any], out_dir: Path) -> None:
    """``per_class_iou.png`` and ``confusion_matrix.png`` (rows = ground truth, normalised) in ``out_dir``."""
    from ccnet.utils.plots import plot_confusion_matrix, plot_per_class_iou

    classes = list(results["classes"])
    iou_path, confusion_path = out_dir / "per_class_iou.png", out_dir / "confusion_matrix.png"
    plot_per_class_iou(results["IoU"], classes, results["mIoU"], path=iou_path)
    plot_confusion_matrix(results["confusion"], classes, path=confusion_path)
    log.info("plots written to %s and %s", iou_path, confusion_path)
