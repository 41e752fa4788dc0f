"""Math answer grading shared by the rewards, ``openrs-pl eval`` and the grader-agreement study.

:mod:`~openrs_pl.grading.verify` parses and compares answers (math-verify with the recipe's and lighteval's
settings, plus documented fixes); :mod:`~openrs_pl.grading.pool` runs that in worker subprocesses under a
wall-clock limit. Import only the standard library and math-verify here: grading workers import this package.
"""

from openrs_pl.grading.pool import WORKER_DIED, GradingPool, get_pool, grade, grade_batch
from openrs_pl.grading.verify import GoldMode, PredMode, Verdict, grade_local

__all__ = [
    "WORKER_DIED",
    "GoldMode",
    "GradingPool",
    "PredMode",
    "Verdict",
    "get_pool",
    "grade",
    "grade_batch",
    "grade_local",
]
