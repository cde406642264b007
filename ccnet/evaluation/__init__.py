"""Evaluation: confusion-matrix metrics, whole/slide/multi-scale/flip inference, dataset evaluation."""

from ccnet.evaluation.evaluator import evaluate, shard_indices
from ccnet.evaluation.inference import InferenceSettings, predict_logits
from ccnet.evaluation.metrics import SegMetric
from ccnet.evaluation.writers import FORMATS, PredictionWriter

__all__ = [
    "FORMATS",
    "InferenceSettings",
    "PredictionWriter",
    "SegMetric",
    "evaluate",
    "predict_logits",
    "shard_indices",
]
