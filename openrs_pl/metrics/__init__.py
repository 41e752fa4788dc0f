"""Evaluation metrics: the unbiased pass@k estimator (the validation callback lives in :mod:`openrs_pl.eval`)."""

from openrs_pl.metrics.passk import PassAtK, pass_at_k

__all__ = ["PassAtK", "pass_at_k"]
