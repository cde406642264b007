"""What a checkpoint converter knows about one foreign layout (:class:`SourceFormat`); the strict
renaming itself lives in :mod:`ccnet.utils.state_dict` (shared with the backbone weight loader)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Tuple

from torch import Tensor

from ccnet.utils.state_dict import ConversionError, ConversionReport, Rule, num_blocks, remap_state_dict, strip_prefix

__all__ = [
    "ConversionError",
    "ConversionReport",
    "Rule",
    "SourceFormat",
    "num_blocks",
    "remap_state_dict",
    "strip_prefix",
]


@dataclass(frozen=True)
class SourceFormat:
    """How to read one foreign checkpoint layout.

    Args:
        name: the ``--from`` name.
        description: one line naming the upstream project and model family.
        rules: renaming rules onto our :class:`~ccnet.models.CCNet`.
        drop: patterns of source keys that are discarded on purpose.
        classifier_key: source key of the main classifier's weight; its first dim is the class count.
        model_config: maps the source state dict to the name of our model config it converts to.
        mean: RGB mean on the 0..1 scale the source model expects (``dataset.mean``).
        std: RGB std on the 0..1 scale (``dataset.std``).
        align_corners: the source's ``align_corners`` of the final upsampling, given the source file
            name (``None`` keeps our config's value).
    """

    name: str
    description: str
    rules: Tuple[Rule, ...]
    drop: Tuple[str, ...]
    classifier_key: str
    model_config: Callable[[Mapping[str, Tensor]], str]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    align_corners: Callable[[str], Optional[bool]]
