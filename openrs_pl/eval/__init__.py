"""Benchmark evaluation (``openrs-pl eval``): generate, grade, score pass@k and write the Table 1 report.

Entry points live in :mod:`openrs_pl.eval.run` (``EvalConfig``, ``run_eval``, ``main``); this package init stays
empty so ``python -m openrs_pl.eval.run`` does not import the module twice.
"""
