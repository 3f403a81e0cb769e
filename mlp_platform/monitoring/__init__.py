"""Model monitoring: data and prediction drift against a reference profile, training/serving skew,
label-based performance decay and reports.

* :mod:`~mlp_platform.monitoring.profile`: the reference profile built when a model is trained
  (bins, samples, calibrated thresholds), JSON round trip.
* :mod:`~mlp_platform.monitoring.drift`: the day's PSI / KS / Wasserstein per feature and for the
  score, the drift rule and the day summary.
* :mod:`~mlp_platform.monitoring.skew`: served features vs the same transactions recomputed offline.
* :mod:`~mlp_platform.monitoring.performance`: matured-label metrics vs the backtest expectation
  (the retrain rule itself is :mod:`mlp_platform.retraining`).
* :mod:`~mlp_platform.monitoring.evidently_report` and :mod:`~mlp_platform.monitoring.plots`:
  the human-facing HTML report and figure.

Nothing here imports dagster, dbt, or the serving path.
"""

from mlp_platform.monitoring.drift import DriftReport, DriftRule, compute_drift
from mlp_platform.monitoring.profile import ReferenceProfile, build_reference_profile

__all__ = ["DriftReport", "DriftRule", "ReferenceProfile", "build_reference_profile", "compute_drift"]
