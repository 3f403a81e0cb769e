"""Label-based performance once labels matured, compared with the backtest expectation, and the
sustained-drift rule that decides when monitoring should trigger a retrain.

:func:`performance_report` computes, on transactions whose labels have matured, the average
precision, the recall / precision / approval rate at the operating threshold and (with days and
cards) the daily alert-budget precision counted per card -- all with the functions of
:mod:`mlp_platform.evaluation.metrics`, so the numbers are the backtest's. It compares them with the
backtest's expectation for the model (the candidate's metrics as stored by the backtest, i.e.
``backtest["candidate"]``, or the whole backtest report, from which that entry is taken):

* a metric **decays** when ``observed < expected * (1 - relative_tolerance)`` (default 0.2: daily
  AP on a few hundred frauds easily moves 10-15% at random);
* it is judged only with at least ``min_frauds`` (default 20) matured frauds; with fewer the report
  says ``"insufficient labels"`` and does not flag decay.

:func:`sustained_drift` is the rule for the retraining sensor: the last ``min_days`` day summaries
must all alarm, on consecutive calendar days; one noisy day never triggers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl

from mlp_platform.evaluation.metrics import (
    _labels,
    _scores,
    alert_budget_precision,
    average_precision,
    to_jsonable,
)

DECAY_METRICS = ("average_precision", "alert_budget_precision", "recall_at_threshold")


def _expected_metrics(expected: dict[str, Any] | None) -> dict[str, Any]:
    if not expected:
        return {}
    if isinstance(expected.get("candidate"), dict):  # a whole backtest report
        expected = expected["candidate"]
    return expected


def performance_report(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    threshold: float,
    expected: dict[str, Any] | None = None,
    days: np.ndarray | Sequence[Any] | None = None,
    cards: np.ndarray | Sequence[Any] | None = None,
    k: int = 100,
    relative_tolerance: float = 0.2,
    min_frauds: int = 20,
) -> dict[str, Any]:
    """Matured-label performance and its decay against ``expected`` (see the module docstring).

    ``days`` (a day per row: date, datetime or day index) and ``cards`` (customer id per row) are
    needed for the alert-budget precision (top ``k`` cards a day); without them it is ``None``.
    Returns a JSON-safe dict: the metrics, ``n``, ``n_fraud``, ``expected`` (the expected values
    used), ``decay`` ({metric: {"observed", "expected", "floor", "decayed"}}), ``decayed`` (bool)
    and ``reason`` (text).
    """
    y = _labels(labels)
    s = _scores(scores, y.size)
    if not 0 <= relative_tolerance < 1:
        raise ValueError(f"relative_tolerance must be in [0, 1), got {relative_tolerance}")
    n_fraud = int(y.sum())
    flagged = s >= threshold
    tp = int((flagged & (y == 1)).sum())
    metrics: dict[str, Any] = {
        "average_precision": average_precision(y, s) if y.size else math.nan,
        "recall_at_threshold": tp / n_fraud if n_fraud else math.nan,
        "precision_at_threshold": tp / int(flagged.sum()) if flagged.any() else math.nan,
        "approval_rate": float(1.0 - flagged.mean()) if y.size else math.nan,
        "alert_budget_precision": math.nan,
    }
    if (days is None) != (cards is None):
        raise ValueError("days and cards go together (the alert budget is per card and day)")
    if days is not None and cards is not None:
        days_arr, cards_arr = np.asarray(days), np.asarray(cards)
        if days_arr.shape != y.shape or cards_arr.shape != y.shape:
            raise ValueError(f"days and cards must have one value per label ({y.size})")
        frame = pl.DataFrame({"day": days_arr, "card": cards_arr, "score": s, "label": y})
        metrics["alert_budget_precision"] = alert_budget_precision(
            frame, "score", k=k, card_col="card", time_col="day", label_col="label").mean
    reference = _expected_metrics(expected)
    decay: dict[str, Any] = {}
    reasons: list[str] = []
    enough = n_fraud >= min_frauds
    for name in DECAY_METRICS:
        want = reference.get(name)
        got = metrics[name]
        if want is None or (isinstance(want, float) and math.isnan(want)) or math.isnan(got):
            continue
        floor = float(want) * (1.0 - relative_tolerance)
        decayed = bool(enough and got < floor)
        decay[name] = {"observed": got, "expected": float(want), "floor": floor, "decayed": decayed}
        if decayed:
            reasons.append(f"{name} {got:.3f} < {floor:.3f} (expected {float(want):.3f} - "
                           f"{relative_tolerance:.0%})")
    if not enough:
        reason = f"insufficient labels: {n_fraud} matured frauds < {min_frauds}"
    elif not decay:
        reason = "no expected metrics to compare with"
    elif reasons:
        reason = "performance decay: " + "; ".join(reasons)
    else:
        reason = "performance within tolerance of the backtest"
    return to_jsonable({
        **metrics,
        "threshold": float(threshold),
        "k": int(k),
        "n": int(y.size),
        "n_fraud": n_fraud,
        "expected": {name: reference.get(name) for name in DECAY_METRICS},
        "relative_tolerance": relative_tolerance,
        "min_frauds": min_frauds,
        "decay": decay,
        "decayed": bool(reasons),
        "reason": reason,
    })


def _day(value: Any) -> date:
    if isinstance(value, date):
        return value if type(value) is date else value.date()
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise ValueError(f"history day {value!r} is not an ISO date") from exc


def day_alarms(entry: dict[str, Any], *, min_share: float = 0.3) -> list[str]:
    """Why one day summary alarms (empty: it does not). A day alarms on any of: drifted feature share
    >= ``min_share`` (or ``dataset_drift``), a drifted prediction, day severity ``"error"``, or a
    performance decay flag."""
    reasons = []
    share = entry.get("drifted_share")
    if entry.get("dataset_drift") or (share is not None and share >= min_share):
        reasons.append(f"{share if share is not None else 0:.0%} of features drifted")
    if entry.get("prediction_drifted"):
        reasons.append("prediction drifted")
    if entry.get("severity") == "error":
        reasons.append("severity error")
    if entry.get("performance_decay") or entry.get("decayed"):
        reasons.append("performance decay")
    return reasons


def day_summary(day: Any, drift: Any | None = None, performance: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry of the :func:`sustained_drift` history from a day's drift report (a
    :class:`~mlp_platform.monitoring.drift.DriftReport` or its ``to_dict()``) and/or its
    :func:`performance_report` (``None`` when labels have not matured)."""
    entry: dict[str, Any] = {"day": str(day), "drifted_share": None, "dataset_drift": False,
                             "prediction_drifted": False, "severity": "ok", "performance_decay": False}
    if drift is not None:
        summary = (drift.to_dict() if hasattr(drift, "to_dict") else drift)["summary"]
        entry.update({key: summary[key] for key in ("drifted_share", "dataset_drift", "prediction_drifted",
                                                    "severity")})
        entry["drifted_features"] = summary.get("drifted_features", [])
    if performance is not None:
        entry["performance_decay"] = bool(performance.get("decayed"))
        entry["performance_reason"] = performance.get("reason")
    return entry


def sustained_drift(
    history: list[dict[str, Any]],
    min_days: int = 2,
    *,
    min_share: float = 0.3,
) -> tuple[bool, str]:
    """Whether drift or performance decay persisted over the last ``min_days`` consecutive days.

    ``history``: day summaries in day order, each with ``day`` (ISO date or date) and any of
    ``drifted_share``, ``dataset_drift``, ``prediction_drifted``, ``severity`` (``"ok"``/``"warn"``/
    ``"error"``) and ``performance_decay`` (see :func:`day_alarms`). True when the last ``min_days``
    entries all alarm and their days are consecutive calendar days (a day without a summary breaks
    the run). Returns ``(decision, reason)``. Raises ``ValueError`` when days are not strictly
    increasing or ``min_days < 1``.
    """
    if min_days < 1:
        raise ValueError(f"min_days must be >= 1, got {min_days}")
    days = [_day(entry.get("day")) for entry in history]
    if any(later <= earlier for earlier, later in zip(days, days[1:], strict=False)):
        raise ValueError("history must be in strictly increasing day order (one summary per day)")
    if len(history) < min_days:
        return False, f"only {len(history)} day(s) of history, need {min_days} consecutive alarming days"
    run = 0
    for i in range(len(history) - 1, -1, -1):
        if not day_alarms(history[i], min_share=min_share):
            break
        if run and days[i + 1] - days[i] != timedelta(days=1):
            break
        run += 1
    if run >= min_days:
        window = history[-min_days:]
        detail = "; ".join(f"{days[len(history) - min_days + j]}: {', '.join(day_alarms(e, min_share=min_share))}"
                           for j, e in enumerate(window))
        return True, f"sustained for {run} consecutive day(s) (>= {min_days}): {detail}"
    last = history[-1]
    if not day_alarms(last, min_share=min_share):
        return False, f"no alarm on the latest day {days[-1]}"
    return False, f"alarm on {run} consecutive day(s) only, need {min_days} (latest {days[-1]})"
