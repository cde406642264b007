"""CCNet models: criss-cross attention, heads, backbones and the segmentor."""

from ccnet.models.cca import CrissCrossAttention, criss_cross_attention, use_implementation
from ccnet.models.heads import FCNHead, NonLocalHead, RCCAHead
from ccnet.models.segmentor import CCNet, build_model

__all__ = [
    "CCNet",
    "CrissCrossAttention",
    "FCNHead",
    "NonLocalHead",
    "RCCAHead",
    "build_model",
    "criss_cross_attention",
    "use_implementation",
]
