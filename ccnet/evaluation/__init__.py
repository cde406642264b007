"""Evaluation: confusion-matrix metrics, whole/slide/multi-scale/flip inference, dataset evaluation."""

from ccnet.evaluation.inference import InferenceSettings, predict_logits
from ccnet.evaluation.metrics import SegMetric

__all__ = ["InferenceSettings", "SegMetric", "predict_logits"]
