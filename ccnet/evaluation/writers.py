"""Write predicted class maps to disk in the ``formats`` of tools/eval.py and tools/infer.py: ``color`` (RGB,
dataset palette, ignore black), ``trainid`` (8-bit class indices), ``cityscapes`` (8-bit Cityscapes label
ids, the test server's format) and ``overlay`` (the input blended with the colours, optionally a legend).

``<input_root>/<sub>/<stem>.<ext>`` becomes ``<save_dir>/[<format>/]<sub>/<stem>.png``; without an input
root the image's folder name is kept (Cityscapes: ``<city>/<name>_leftImg8bit.png``, as the test server
matches). With an :class:`~ccnet.utils.manifest.OutputManifest` every file written is recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ccnet.errors import ConfigError
from ccnet.utils.manifest import OutputConflictError, OutputManifest
from ccnet.utils.visualize import add_legend, colorize, overlay

log = logging.getLogger(__name__)

FORMATS = ("color", "trainid", "cityscapes", "overlay")
CITYSCAPES_NUM_CLASSES = 19


def parse_formats(formats: Union[str, Sequence[str]], key: str = "formats") -> Tuple[str, ...]:
    """Normalise a format name or list of names and check each one.

    Raises:
        ConfigError: an unknown or duplicated format, naming ``key``.
    """
    names = (formats,) if isinstance(formats, str) else tuple(str(f) for f in formats)
    unknown = [f for f in names if f not in FORMATS]
    if not names or unknown or len(set(names)) != len(names):
        raise ConfigError(
            f"{key}={list(names) if not isinstance(formats, str) else formats!r}: expected one "
            f"or more distinct formats from {FORMATS}, e.g. {key}=color or {key}=[color,overlay]"
        )
    return names


def _cityscapes_label_ids() -> Callable[[np.ndarray], np.ndarray]:
    from ccnet.data.cityscapes import train_ids_to_label_ids

    return train_ids_to_label_ids


class PredictionWriter:
    """Writes one prediction in every requested format.

    Args:
        save_dir: output root.
        formats: one name or several from :data:`FORMATS`.
        palette: RGB colour per class (``color``, ``overlay``).
        ignore_index: value painted black.
        alpha: weight of the prediction in ``overlay``.
        num_classes: classes the model predicts; ``cityscapes`` needs the 19 Cityscapes train ids.
        key: the setting that named ``formats``, for error messages.
        input_root: outputs mirror the inputs' paths relative to this folder; None keeps each image's folder name.
        legend: append a legend of the predicted classes below each ``overlay`` (then taller than the input).
        classes: class names, needed for ``legend``.
        manifest: records every written file; its folder must contain ``save_dir``.

    Raises:
        ConfigError: unknown format, or ``cityscapes`` for a model that does not predict the 19 Cityscapes
            classes (naming ``key``).
        ValueError: a palette with fewer colours than classes, or ``legend`` without enough class names.
    """

    def __init__(
        self,
        save_dir: Union[str, Path],
        formats: Union[str, Sequence[str]],
        palette: Sequence[Sequence[int]],
        ignore_index: int = 255,
        alpha: float = 0.5,
        num_classes: Optional[int] = None,
        key: str = "formats",
        input_root: Optional[Union[str, Path]] = None,
        legend: bool = False,
        classes: Optional[Sequence[str]] = None,
        manifest: Optional[OutputManifest] = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.manifest = manifest
        self.input_root = None if input_root is None else Path(input_root)
        self.formats = parse_formats(formats, key)
        self.palette = [tuple(int(c) for c in rgb) for rgb in palette]
        self.ignore_index = int(ignore_index)
        self.alpha = float(alpha)
        k = len(self.palette) if num_classes is None else int(num_classes)
        if len(self.palette) < k:
            raise ValueError(f"the palette has {len(self.palette)} colours for {k} classes; give one colour per class")
        self.legend = bool(legend)
        self.classes = None if classes is None else [str(c) for c in classes]
        if self.legend and (self.classes is None or len(self.classes) < k):
            raise ValueError(
                f"legend=true names the classes, but {0 if classes is None else len(classes)} class "
                f"names were given for {k} classes; pass the dataset's classes"
            )
        self._label_ids: Optional[Callable[[np.ndarray], np.ndarray]] = None
        if "cityscapes" in self.formats:
            if k != CITYSCAPES_NUM_CLASSES:
                raise ConfigError(
                    f"{key}=cityscapes writes Cityscapes label ids from the 19 train ids, but the "
                    f"model predicts {k} classes; use {key}=trainid or color for other datasets"
                )
            self._label_ids = _cityscapes_label_ids()

    def path_for(self, image_path: Union[str, Path], fmt: str) -> Path:
        """Output file of ``fmt`` for the input ``image_path``: ``[<format>/]<relative folder>/<stem>.png``."""
        image_path = Path(image_path)
        root = self.save_dir / fmt if len(self.formats) > 1 else self.save_dir
        if self.input_root is not None:
            return root / image_path.relative_to(self.input_root).with_suffix(".png")
        return root / image_path.parent.name / f"{image_path.stem}.png"

    def paths_for(self, image_paths: Iterable[Union[str, Path]]) -> List[Path]:
        """Every file :meth:`write` would write for ``image_paths``, in every format."""
        return [self.path_for(p, fmt) for p in image_paths for fmt in self.formats]

    def write(
        self, pred: np.ndarray, image_path: Union[str, Path], image: Optional[np.ndarray] = None
    ) -> Dict[str, Path]:
        """Write ``pred`` in every format; returns the written path per format.

        Args:
            image_path: the input's path (names the outputs).
            image: the input picture, needed for ``overlay``.

        Shape:
            pred: (H, W) integer. image: (H, W, 3) uint8 RGB.
        """
        pred = np.asarray(pred)
        written: Dict[str, Path] = {}
        color: Optional[np.ndarray] = None
        for fmt in self.formats:
            if fmt in ("color", "overlay") and color is None:
                color = colorize(pred, self.palette, self.ignore_index)
            if fmt == "color":
                assert color is not None
                out = color
            elif fmt == "trainid":
                out = pred.astype(np.uint8)
            elif fmt == "cityscapes":
                assert self._label_ids is not None
                out = np.asarray(self._label_ids(pred)).astype(np.uint8)
            else:
                if image is None:
                    raise ValueError("overlay format needs the input image")
                assert color is not None
                out = overlay(image, color, self.alpha)
                if self.legend:
                    assert self.classes is not None
                    out = add_legend(out, self.palette, self.classes, [pred], self.ignore_index)
            path = self.path_for(image_path, fmt)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(out).save(path)
            if self.manifest is not None:
                self.manifest.record(path)
            written[fmt] = path
        return written


def check_unique_outputs(writer: PredictionWriter, image_paths: Sequence[Union[str, Path]]) -> None:
    """Refuse two inputs that map to the same output file (e.g. ``a/x.jpg`` and ``a/x.png``).

    Raises:
        OutputConflictError: naming both inputs and the shared output.
    """
    seen: Dict[Path, Path] = {}
    for p in image_paths:
        out = writer.path_for(p, writer.formats[0])
        if out in seen:
            raise OutputConflictError(
                f"inputs {seen[out]} and {p} would both be written to {out}; rename one of "
                "them or segment them in separate runs"
            )
        seen[out] = Path(p)
