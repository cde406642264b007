"""Evaluation: confusion-matrix metrics, whole/slide/multi-scale/flip inference, dataset evaluation."""

from ccnet.evaluation.metrics import SegMetric

__all__ = ["SegMetric"]
