"""Checkpoint converters from the official CCNet release and mmsegmentation to this framework's models."""

from ccnet.convert.checkpoint import FORMATS, convert_checkpoint, convert_state_dict
from ccnet.convert.core import ConversionError, ConversionReport, Rule, SourceFormat, remap_state_dict

__all__ = [
    "FORMATS",
    "ConversionError",
    "ConversionReport",
    "Rule",
    "SourceFormat",
    "convert_checkpoint",
    "convert_state_dict",
    "remap_state_dict",
]
