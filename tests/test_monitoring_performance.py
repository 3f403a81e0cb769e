"""Matured-label performance against the backtest expectation, and the sustained-drift rule."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from mlp_platform.evaluation.metrics import alert_budget_precision
from mlp_platform.monitoring.performance import day_summary, performance_report, sustained_drift


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


def _day(d: str, **kw):
    return {"day": d, "drifted_share": 0.0, "prediction_drifted": False, "severity": "ok", **kw}


def test_sustained_drift_needs_consecutive_alarming_days():
    noisy = [_day("2026-11-01"), _day("2026-11-02", drifted_share=0.5), _day("2026-11-03")]
    assert sustained_drift(noisy) == (False, "no alarm on the latest day 2026-11-03")
    one = noisy[:2]
    decision, reason = sustained_drift(one)
    assert not decision and "1 consecutive day(s) only" in reason
    two = [*one, _day("2026-11-03", prediction_drifted=True)]
    decision, reason = sustained_drift(two)
    assert decision and "2026-11-02: 50% of features drifted" in reason and "prediction drifted" in reason
    assert not sustained_drift(two, min_days=3)[0]
    decay = [_day("2026-11-04", performance_decay=True), _day("2026-11-05", severity="error")]
    assert sustained_drift(decay)[0]
    assert sustained_drift([*two, _day("2026-11-04", severity="error")], min_days=3)[0]


def test_sustained_drift_gap_and_order():
    gap = [_day("2026-11-01", prediction_drifted=True), _day("2026-11-03", prediction_drifted=True)]
    assert not sustained_drift(gap)[0]  # a day without a summary breaks the run
    assert sustained_drift([_day(date(2026, 11, 2), prediction_drifted=True),
                            _day(date(2026, 11, 3), prediction_drifted=True)])[0]
    assert not sustained_drift([_day("2026-11-01", severity="warn"), _day("2026-11-02", severity="warn")])[0]
    assert not sustained_drift([])[0]
    with pytest.raises(ValueError, match="increasing day order"):
        sustained_drift([_day("2026-11-02"), _day("2026-11-01")])
    with pytest.raises(ValueError, match="not an ISO date"):
        sustained_drift([_day("yesterday")])


def test_day_summaries_from_reports_feed_the_rule():
    drift = {"summary": {"drifted_share": 0.5, "dataset_drift": True, "prediction_drifted": False,
                         "severity": "warn", "drifted_features": ["a"]}}
    calm = {"summary": {"drifted_share": 0.0, "dataset_drift": False, "prediction_drifted": False,
                        "severity": "ok", "drifted_features": []}}
    y, s, _, _ = labelled(signal=1.0)
    decayed = performance_report(y, s, threshold=0.1, expected={"average_precision": 0.99})
    history = [day_summary("2026-11-01", drift), day_summary("2026-11-02", calm, decayed)]
    assert history[1]["performance_decay"] and history[1]["performance_reason"].startswith("performance decay")
    decision, reason = sustained_drift(history)
    assert decision and "performance decay" in reason and "50% of features drifted" in reason
    assert not sustained_drift([day_summary("2026-11-01", drift), day_summary("2026-11-02", calm)])[0]
