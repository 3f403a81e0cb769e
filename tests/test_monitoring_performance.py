"""Matured-label performance against the backtest expectation."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from mlp_platform.evaluation.metrics import alert_budget_precision
from mlp_platform.monitoring.performance import performance_report


def labelled(n: int = 20_000, seed: int = 0, signal: float = 2.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.02).astype(np.int64)
    s = 1 / (1 + np.exp(-(-4 + signal * y + rng.normal(0, 1, n))))
    days = rng.integers(0, 7, n)
    cards = rng.integers(0, 3000, n)
    return y, s, days, cards


def test_metrics_match_the_oracles_and_the_evaluation_module():
    y, s, days, cards = labelled()
    threshold = 0.1
    report = performance_report(y, s, threshold=threshold, days=days, cards=cards, k=50)
    assert report["average_precision"] == pytest.approx(average_precision_score(y, s), rel=1e-12)
    flagged = s >= threshold
    assert report["recall_at_threshold"] == pytest.approx((flagged & (y == 1)).sum() / y.sum())
    assert report["precision_at_threshold"] == pytest.approx((flagged & (y == 1)).sum() / flagged.sum())
    assert report["approval_rate"] == pytest.approx(1 - flagged.mean())
    frame = pl.DataFrame({"day": days, "customer_id": cards, "event_time": days, "score": s, "label": y})
    assert report["alert_budget_precision"] == pytest.approx(alert_budget_precision(frame, "score", k=50).mean)
    assert report["reason"] == "no expected metrics to compare with" and not report["decayed"]
    assert performance_report(y, s, threshold=threshold)["alert_budget_precision"] is None


def test_decay_flagged_against_the_backtest_expectation():
    y, s, days, cards = labelled(signal=1.0)  # a weaker model than the backtest saw
    good_y, good_s, _, _ = labelled(seed=1, signal=3.0)
    expected_ap = average_precision_score(good_y, good_s)
    backtest = {"candidate": {"average_precision": expected_ap, "alert_budget_precision": 0.9}}
    report = performance_report(y, s, threshold=0.1, expected=backtest, days=days, cards=cards)
    assert report["decayed"] and report["decay"]["average_precision"]["decayed"]
    assert report["decay"]["average_precision"]["floor"] == pytest.approx(expected_ap * 0.8)
    assert report["reason"].startswith("performance decay: average_precision")
    # Within tolerance: the same model as the expectation.
    same = performance_report(y, s, threshold=0.1,
                              expected={"average_precision": average_precision_score(y, s) * 1.1})
    assert not same["decayed"] and same["reason"] == "performance within tolerance of the backtest"


def test_too_few_matured_frauds_never_flag_decay():
    y, s, _, _ = labelled(n=500, signal=0.0)
    assert y.sum() < 20
    report = performance_report(y, s, threshold=0.1, expected={"average_precision": 0.99})
    assert not report["decayed"] and report["reason"].startswith("insufficient labels")
    with pytest.raises(ValueError, match="days and cards go together"):
        performance_report(y, s, threshold=0.1, days=np.zeros(y.size))
    with pytest.raises(ValueError, match="differ in length"):
        performance_report(y, s[:-1], threshold=0.1)

