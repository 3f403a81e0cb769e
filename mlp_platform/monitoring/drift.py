"""Day drift: one day's features and scores compared with the model's reference profile.

This module owns the drift rule and the day's report; the statistics' exact vectorised kernels are in
:mod:`mlp_platform.monitoring.statistics`.

Statistics, per feature (and the same for the score, reported as ``prediction``):

* **PSI** on the profile's reference bins (see :mod:`mlp_platform.monitoring.profile`: reference
  quantile bins, one bin per value for low-cardinality features, missing values in their own bin):
  ``sum_b (r_b - c_b) * ln(r_b / c_b)`` over the reference proportions ``r`` and the day's
  proportions ``c`` (both count the missing bin, so a change of missing rate moves PSI). An empty
  bin's proportion is replaced by :data:`PSI_EPSILON` = 1e-4 (a bin empty on both sides adds 0).
  Evidently 0.7 replaces zeros the same way when the smallest non-zero proportion is > 1e-4 and by
  ``min / 1e6`` otherwise.
* **KS**: the two-sample Kolmogorov-Smirnov statistic ``sup_t |F_ref(t) - F_day(t)|`` between the
  profile's reference sample and **all** of the day's non-missing values; the same number as
  ``scipy.stats.ks_2samp(reference_sample, day_values).statistic``. ``ks_pvalue`` is the asymptotic
  two-sided p-value, ``scipy.stats.kstwo.sf(D, round(m n / (m + n)))`` (scipy's ``method="asymp"``;
  scipy's default ``"auto"`` uses it too when either side has more than 10 000 values).
* **Wasserstein** (W1, earth mover's distance) between the same two samples, the same number as
  ``scipy.stats.wasserstein_distance``, **divided by the reference sample's standard deviation**
  (population, ddof 0, floored at 0.001): ``wasserstein`` is in units of the reference spread, so
  one threshold fits every feature. This is exactly Evidently's ``"wasserstein"`` stattest (its
  default for numerical columns with more than 1000 reference rows) given the reference sample. The
  standard deviation rather than the IQR because the IQR is 0 for the many zero-inflated count
  features (``*_count_1h``, ``first_time`` flags), where it would make any change infinite.
  ``wasserstein_raw`` is the unnormalised W1.
* **missing rate** of the reference (whole training window) and of the day, and their difference.

KS and W1 use non-missing values only; missing values are covered by PSI and the missing rate.

**Against Evidently 0.7** (``evidently.legacy.calculations.stattests``, tested in
``tests/test_drift.py``): its ``"wasserstein"`` value equals our ``wasserstein`` when it is given the
reference sample; its ``"ks"`` value is the p-value of ``scipy.stats.ks_2samp`` with
``method="auto"``, equal to our ``ks_pvalue`` when a side has more than 10 000 values (below that
scipy computes the exact p-value, which we do not). Its ``"psi"`` is the same quantity only for
columns with at most 20 distinct reference values (one bin per value on both sides, no unseen
values); for other columns it bins **equal-width** (``numpy.histogram_bin_edges(..., "sturges")``)
over reference and current together, so its bins move with the day, and it ignores missing values,
where we bin on fixed reference quantiles with a missing bin.

The kernels sort the day's column once (``np.sort``, SIMD) and evaluate everything else at the
O(reference sample) breakpoints with ``searchsorted`` and a prefix sum, so the cost is one sort per
column, not a merge of both samples; there is no Python loop over rows.

**The drift rule** (what makes a feature *drifted*), documented here because the service, the
sensor and the handbook read it:

1. *Statistically surprising*: at least one of PSI, KS, normalised Wasserstein is above its
   **calibrated threshold for the day's row count** (:meth:`FeatureProfile.thresholds`: the 99th
   percentile of the statistic over bootstrap days drawn from the training window at that size);
   a large day therefore gets tight thresholds and a small day loose ones, and a day drawn from the
   training distribution is flagged by a feature only about 1% of the time per statistic.
2. *Practically large*: ``psi >= psi_warn`` (0.1) or ``wasserstein >= wasserstein_warn`` (0.1)
   (the usual "PSI 0.1 = moderate shift" rule of thumb, and Evidently's default Wasserstein
   threshold). A huge day with a trivial but statistically certain shift is not flagged.

A feature is ``drifted`` when both hold. Its ``severity`` is ``"error"`` when drifted and
``psi >= psi_error`` (0.25) or ``wasserstein >= wasserstein_error`` (0.25), ``"warn"`` when drifted
otherwise, ``"ok"`` when not drifted. The day summary counts drifted features; the day has
``dataset_drift`` when the drifted share is >= ``drift_share`` (0.3); ``drift_detected`` is
``dataset_drift`` or a drifted prediction; the day ``severity`` is the worst of the features' and the
prediction's severities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from mlp_platform.monitoring.profile import FeatureProfile, ReferenceProfile
from mlp_platform.monitoring.statistics import SortedColumn, column_statistics, numeric_columns

SEVERITIES = ("ok", "warn", "error")

# ---------------------------------------------------------------------------------------------------
# The drift rule and the report
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftRule:
    """Effect-size floors of the drift rule (see the module docstring)."""

    psi_warn: float = 0.1
    psi_error: float = 0.25
    wasserstein_warn: float = 0.1
    wasserstein_error: float = 0.25
    drift_share: float = 0.3

    def judge(self, values: dict[str, float], thresholds: dict[str, float]) -> dict[str, Any]:
        """``significant``, ``drifted`` and ``severity`` of one column's statistics."""
        psi_value = _num(values["psi"])
        w = _num(values["wasserstein"])
        significant = any(
            _num(values[name]) > thresholds[name] for name in ("psi", "ks", "wasserstein"))
        large = psi_value >= self.psi_warn or w >= self.wasserstein_warn
        drifted = bool(significant and large)
        if not drifted:
            severity = "ok"
        elif psi_value >= self.psi_error or w >= self.wasserstein_error:
            severity = "error"
        else:
            severity = "warn"
        return {"significant": bool(significant), "drifted": drifted, "severity": severity}


def _num(value: float) -> float:
    """nan (statistic undefined, e.g. no non-missing values) never exceeds a threshold."""
    return -math.inf if value is None or math.isnan(value) else float(value)


def worst(severities: list[str]) -> str:
    """The most severe of ``"ok" < "warn" < "error"`` (``"ok"`` for none)."""
    return max(severities, key=SEVERITIES.index, default="ok")


@dataclass
class DriftReport:
    """Per-feature and prediction drift of one day, with the day summary (see :meth:`to_dict`)."""

    features: dict[str, dict[str, Any]]
    prediction: dict[str, Any] | None
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """``{"features": {name: {...}}, "prediction": {...} | None, "summary": {...}}``, JSON-safe
        (undefined statistics are ``None``)."""
        from mlp_platform.evaluation.metrics import to_jsonable

        return to_jsonable({"features": self.features, "prediction": self.prediction, "summary": self.summary})

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, entry in self.features.items() if entry["drifted"]]


def _entry(profile: FeatureProfile, column: SortedColumn, rule: DriftRule) -> dict[str, Any]:
    values = column_statistics(profile, column)
    thresholds = profile.thresholds(column.n)
    values["missing_rate_change"] = values["missing_rate_current"] - values["missing_rate_reference"]
    values["mean_reference"] = profile.mean
    values["mean_current"] = float(column.values.mean()) if column.values.size else math.nan
    values["n_current"] = column.n
    values.update({f"{name}_threshold": value for name, value in thresholds.items()})
    values.update(rule.judge(values, thresholds))
    return values


def compute_drift(
    profile: ReferenceProfile,
    current: pl.DataFrame,
    scores: np.ndarray | None = None,
    *,
    rule: DriftRule | None = None,
) -> DriftReport:
    """Drift of one day (``current``: the day's rows with the profile's feature columns; ``scores``:
    the model's scores of the same rows, NaN = missing) against ``profile``.

    Raises ``ValueError`` for an empty day, absent or non-numeric feature columns, infinite values
    or a score vector of the wrong length.
    """
    rule = rule or DriftRule()
    if current.height == 0:
        raise ValueError("the current day has no rows: nothing to compare with the reference")
    columns = numeric_columns(current, profile.feature_names, "current day")
    features = {
        name: _entry(profile.features[name], SortedColumn.of(col), rule)
        for name, col in zip(profile.feature_names, columns, strict=True)
    }
    prediction = None
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 1 or scores.size != current.height:
            raise ValueError(
                f"scores must be one score per row of the day ({current.height}), got shape {scores.shape}")
        if profile.prediction is None:
            raise ValueError("the reference profile has no score distribution (built without scores)")
        prediction = _entry(profile.prediction, SortedColumn.of(scores), rule)
    n_drifted = sum(entry["drifted"] for entry in features.values())
    share = n_drifted / len(features) if features else 0.0
    severities = [entry["severity"] for entry in features.values()]
    if prediction is not None:
        severities.append(prediction["severity"])
    prediction_drifted = bool(prediction is not None and prediction["drifted"])
    summary = {
        "n_rows": current.height,
        "n_features": len(features),
        "n_drifted": n_drifted,
        "drifted_share": share,
        "n_error": sum(entry["severity"] == "error" for entry in features.values()),
        "drifted_features": sorted(
            (name for name, entry in features.items() if entry["drifted"]),
            key=lambda name: -features[name]["psi"]),
        "dataset_drift": share >= rule.drift_share,
        "prediction_drifted": prediction_drifted,
        "drift_detected": bool(share >= rule.drift_share or prediction_drifted),
        "severity": worst(severities),
        "rule": {
            "psi_warn": rule.psi_warn, "psi_error": rule.psi_error,
            "wasserstein_warn": rule.wasserstein_warn, "wasserstein_error": rule.wasserstein_error,
            "drift_share": rule.drift_share, "calibration_quantile": profile.calibration_quantile,
        },
        "computed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return DriftReport(features, prediction, summary)


def monitoring_record(
    day: Any,
    model_version: str | int | None,
    drift: DriftReport,
    skew: Any | None = None,
) -> dict[str, Any]:
    """The day's monitoring file for the service: ``{"day", "computed_at", "model_version",
    "features", "prediction", "skew", "summary"}`` (``skew``: a
    :class:`~mlp_platform.monitoring.skew.SkewReport`, its ``to_dict()``, or ``None`` -> ``{}``)."""
    data = drift.to_dict()
    skew_dict = skew.to_dict() if hasattr(skew, "to_dict") else (skew or {})
    return {
        "day": str(day),
        "computed_at": data["summary"]["computed_at"],
        "model_version": None if model_version is None else str(model_version),
        "features": data["features"],
        "prediction": data["prediction"],
        "skew": skew_dict,
        "summary": data["summary"],
    }
