"""Evaluation metrics: the unbiased pass@k estimator and the in-training validation callback."""

from openrs_pl.metrics.passk import PassAtK, pass_at_k

__all__ = ["PassAtK", "pass_at_k"]
