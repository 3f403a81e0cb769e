"""Label-based performance once labels matured, compared with the backtest expectation.

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

When a monitored day counts towards a retrain is decided by :mod:`mlp_platform.retraining`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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

