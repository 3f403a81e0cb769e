"""Model evaluation for fraud decisioning.

* :mod:`mlp_platform.evaluation.metrics`: ranking and decision metrics, the daily alert-budget (card
  precision top-k) metric, bootstrap confidence intervals and the one-call :func:`evaluate` report.
* :mod:`mlp_platform.evaluation.fairness`: per-segment error-rate parity with bootstrap CIs and a
  judgement that only fails a group when the whole interval is beyond the bound.
* :mod:`mlp_platform.evaluation.impact`: champion vs candidate decision flips at a threshold.
"""
