"""Where training metrics go: TensorBoard (``work_dir/tb``) and ``work_dir/metrics.jsonl``, from one object
on rank 0. ``metrics.jsonl`` holds one JSON object per validation (docs/training.md)::

    {"iteration": 2000, "val/mIoU": 0.71, "val/mAcc": 0.80, "val/aAcc": 0.95,
     "val/IoU/road": 0.97, ..., "train_time_s": 812.4, "val_time_s": 95.1, "skipped_nonfinite": 0}

Values are fractions in [0, 1]; a class absent from ground truth and predictions has IoU ``null``. A
resumed run reads the file back and drops a last line cut short, with a warning.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Set

import numpy as np
from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)


def validation_record(
    iteration: int,
    metrics: Mapping[str, Any],
    class_names: Sequence[str],
    train_time_s: float,
    skipped_nonfinite: int = 0,
    val_time_s: Optional[float] = None,
) -> Dict[str, Any]:
    """The ``metrics.jsonl`` line for one validation.

    Args:
        iteration: optimisation steps done.
        metrics: ``SegMetric.compute()`` output: ``mIoU``, ``mAcc``, ``aAcc`` and per-class ``IoU``.
        class_names: names for the per-class entries.
        train_time_s: training wall time so far (validation excluded, carried across resumes).
        skipped_nonfinite: steps skipped so far for a non-finite loss.
        val_time_s: wall time of this validation; omitted from the record when None.
    """

    def clean(v: float) -> Optional[float]:
        v = float(v)
        return None if math.isnan(v) else v

    record: Dict[str, Any] = {"iteration": int(iteration)}
    for key in ("mIoU", "mAcc", "aAcc"):
        record[f"val/{key}"] = clean(metrics[key])
    for name, iou in zip(class_names, metrics["IoU"]):
        record[f"val/IoU/{name}"] = clean(iou)
    record["train_time_s"] = round(float(train_time_s), 3)
    if val_time_s is not None:
        record["val_time_s"] = round(float(val_time_s), 3)
    record["skipped_nonfinite"] = int(skipped_nonfinite)
    return record


class Recorder:
    """TensorBoard scalars and images plus the validation log ``metrics.jsonl``.

    Args:
        work_dir: run directory; ``tb/`` and ``metrics.jsonl`` are created in it.
        start_iteration: 0 for a new run (``metrics.jsonl`` started afresh); for a resumed run the iteration
            it resumes from: later records of the interrupted run are dropped, since they are written again.
    """

    def __init__(self, work_dir: Path, start_iteration: int = 0) -> None:
        self.metrics_path = Path(work_dir) / "metrics.jsonl"
        self.tb_dir = Path(work_dir) / "tb"
        kept = []
        if start_iteration > 0 and self.metrics_path.is_file():
            for number, line in enumerate(self.metrics_path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    iteration = json.loads(line)["iteration"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.warning(
                        "%s line %d is not a complete record (cut short by a crash or a full disk?); dropped: %.80s",
                        self.metrics_path,
                        number,
                        line,
                    )
                    continue
                if iteration <= start_iteration:
                    kept.append(line)
        self.metrics_path.write_text("".join(line + "\n" for line in kept))
        self.writer = SummaryWriter(str(self.tb_dir), purge_step=start_iteration + 1 if start_iteration else None)
        self.failed: Set[Path] = set()  # targets whose writes failed: not tried again

    def _write(self, target: Path, write: Callable[[], Any]) -> None:
        """Run ``write``; an OSError stops the logging to ``target`` with one warning, not the training."""
        if target in self.failed:
            return
        try:
            write()
        except OSError as exc:
            self.failed.add(target)
            log.warning(
                "writing %s failed (%s); training continues without it. Free space or fix the folder; "
                "checkpoints are still written (and fail loudly if the disk is full)",
                target,
                exc.strerror or exc,
            )

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log ``{tag: value}`` to TensorBoard at ``step``."""

        def write() -> None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

        self._write(self.tb_dir, write)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Log an (H, W, 3) uint8 image."""
        self._write(self.tb_dir, lambda: self.writer.add_image(tag, image, step, dataformats="HWC"))

    def validation(self, record: Mapping[str, Any]) -> None:
        """Append a :func:`validation_record` to ``metrics.jsonl`` and its numbers to TensorBoard."""

        def append() -> None:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

        self._write(self.metrics_path, append)
        self.scalars(
            {k: v for k, v in record.items() if k.startswith("val/") and v is not None}, int(record["iteration"])
        )
        self._write(self.tb_dir, self.writer.flush)

    def close(self) -> None:
        self._write(self.tb_dir, self.writer.close)
