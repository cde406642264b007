"""Evaluation plots: a per-class IoU bar chart and a row-normalised confusion-matrix heat map, for
``tools/eval.py`` and the trainer's TensorBoard. The numbers come from plain functions
(:func:`row_normalized`, :func:`confusion_plot_data`) testable without pictures; matplotlib (Agg) is
imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

#: Confusion matrices of more classes are cut to this many (the most confused) plus an "other" column.
MAX_CONFUSION_CLASSES = 30
#: Cell values are printed in the heat map up to this many classes (beyond, the cells are too small).
MAX_ANNOTATED_CLASSES = 20


def row_normalized(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its sum: ``out[t, p]`` is the fraction of ground-truth-``t`` pixels predicted ``p``.

    Returns:
        Float64 fractions; each row sums to 1, except rows of classes absent from the ground truth, which are
        NaN (0 would read as "never predicted right").

    Shape:
        confusion: (R, C), rows = ground truth. Returns (R, C).
    """
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"confusion matrix must be 2-D (ground truth, prediction), got shape {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)  # (R, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)


def most_confused(confusion: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending) of the ``k`` classes with the most misclassified pixels, as ground truth (row) and as
    prediction (column).

    Shape:
        confusion: (K, K). Returns (min(k, K),) int64.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    errors = counts.sum(axis=0) + counts.sum(axis=1) - 2 * np.diag(counts)  # (K,)
    return np.sort(np.argsort(-errors, kind="stable")[:k])


def confusion_plot_data(
    confusion: np.ndarray, classes: Sequence[str], max_classes: int = MAX_CONFUSION_CLASSES
) -> Tuple[np.ndarray, List[str], List[str]]:
    """The numbers :func:`plot_confusion_matrix` draws, with the row and column names.

    Up to ``max_classes`` classes, the full row-normalised matrix; above, the ``max_classes`` most confused
    classes in dataset order plus an ``other`` column for the pixels predicted as a class not shown.

    Returns:
        (fractions, row names, column names).

    Shape:
        confusion: (K, K) integer counts. fractions: (K, K), or (max_classes, max_classes + 1) when cut.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {k} classes: expected ({k}, {k})")
    if k <= max_classes:
        return row_normalized(counts), list(classes), list(classes)
    keep = most_confused(counts, max_classes)
    names = [str(classes[i]) for i in keep]
    shown = counts[np.ix_(keep, keep)]  # (M, M)
    other = counts[keep].sum(axis=1, keepdims=True) - shown.sum(axis=1, keepdims=True)  # (M, 1)
    return row_normalized(np.concatenate([shown, other], axis=1)), names, names + ["other"]


def _figure_to_array(fig: Any) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a matplotlib figure, which is closed."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs (or opens) a display, also on headless training nodes
    import matplotlib.pyplot as plt

    return plt


def _save(pixels: np.ndarray, path: Optional[Union[str, Path]]) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, optimize=True)


def plot_per_class_iou(
    iou: Sequence[float],
    classes: Sequence[str],
    miou: Optional[float] = None,
    path: Optional[Union[str, Path]] = None,
    title: str = "Per-class IoU",
) -> np.ndarray:
    """Horizontal bar chart of per-class IoU in dataset order, with a dashed line at the mIoU; NaN classes say "n/a".

    Args:
        iou: IoU per class in [0, 1] or NaN.
        miou: the mean drawn and given in the title; default the mean of the non-NaN values.
        path: also write the picture there as PNG.
        title: title; the mIoU is appended.

    Shape:
        iou: (K,). Returns (H, W, 3) uint8, 700 px wide and ~22 px per class high.
    """
    if len(iou) != len(classes):
        raise ValueError(f"{len(iou)} IoU values for {len(classes)} classes")
    values = np.asarray(iou, dtype=np.float64) * 100
    if miou is None:
        valid = values[~np.isnan(values)]
        miou = float(valid.mean()) / 100 if valid.size else math.nan
    plt = _pyplot()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.22 * k), dpi=100)
    rows = np.arange(k)
    ax.barh(rows, np.nan_to_num(values), color="#1f77b4", height=0.7)
    for row, value in zip(rows, values):
        ax.text(
            1 if math.isnan(value) else value + 1,
            row,
            "n/a" if math.isnan(value) else f"{value:.1f}",
            va="center",
            fontsize=8,
            color="#555555",
            zorder=3,  # above the mIoU line, on a white box, so the line never runs through a number
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5},
        )
    if not math.isnan(miou):
        ax.axvline(100 * miou, color="#d62728", linestyle="--", linewidth=1.2, zorder=2)
        # named above the axes: a legend box inside would cover bars, which fill the width when IoUs are high
        ax.text(
            100 * miou,
            1.0,
            "mIoU",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color="#d62728",
        )
    ax.set_yticks(rows)
    ax.set_yticklabels(classes, fontsize=8)
    ax.invert_yaxis()  # class 0 at the top
    ax.set_xlim(0, 108)  # room for the value labels of 100 % bars
    ax.set_xlabel("IoU (%)")
    ax.set_title(title if math.isnan(miou) else f"{title} (mIoU {100 * miou:.1f} %)", fontsize=10, pad=14)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    pixels = _figure_to_array(fig)
    _save(pixels, path)
    return pixels


def plot_confusion_matrix(
    confusion: np.ndarray,
    classes: Sequence[str],
    path: Optional[Union[str, Path]] = None,
    max_classes: int = MAX_CONFUSION_CLASSES,
) -> np.ndarray:
    """Heat map of the row-normalised confusion matrix (:func:`confusion_plot_data`): rows = ground truth,
    percentages in the cells up to 20 classes, rows of classes absent from the ground truth grey.

    Args:
        confusion: integer pixel counts, rows = ground truth, columns = prediction.
        path: also write the picture there as PNG.
        max_classes: above this many classes only the most confused ones are shown.

    Shape:
        confusion: (K, K). Returns (H, W, 3) uint8 (about 900 x 850 px for 19 classes).
    """
    fractions, row_names, col_names = confusion_plot_data(confusion, classes, max_classes)
    plt = _pyplot()
    rows, cols = fractions.shape
    side = 2.5 + 0.33 * cols
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=100)
    cmap = plt.get_cmap("Blues").with_extremes(bad="#d9d9d9")  # NaN rows (class absent from ground truth)
    percent = 100 * fractions  # one unit everywhere: the cells, the colour bar and the title say %
    image = ax.imshow(np.ma.masked_invalid(percent), cmap=cmap, vmin=0.0, vmax=100.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the ground-truth class's pixels")
    if cols <= MAX_ANNOTATED_CLASSES:
        size = float(np.clip(150 / cols, 6, 11))  # as large as the cell allows
        for (t, p), value in np.ndenumerate(percent):
            if not math.isnan(value) and value >= 0.5:
                ax.text(
                    p,
                    t,
                    f"{value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if value > 50 else "black",
                )
    ax.set_xticks(np.arange(cols))
    ax.set_xticklabels(col_names, rotation=90, fontsize=8)
    ax.set_yticks(np.arange(rows))
    ax.set_yticklabels(row_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    title = "Confusion matrix (rows: ground truth)\ncells: % of the row's pixels predicted as the column"
    if len(classes) > max_classes:
        title += f"\n{rows} most confused of {len(classes)} classes; other = the remaining {len(classes) - rows}"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    pixels = _figure_to_array(fig)
    _save(pixels, path)
    return pixels
