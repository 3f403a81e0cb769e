"""The retrain rule of the drift sensor: sustained, one incident -> one retrain, cool-down."""

from __future__ import annotations

import datetime as dt

from mlp_platform.retraining import RetrainPolicy, decide_retrain

NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


def day(d: str, severity="ok", version="1", decay=False, drifted=()):
    return {"day": d, "model_version": version, "severity": severity, "drifted_features": list(drifted),
            "drift_detected": severity != "ok", "prediction_drifted": False, "performance_decay": decay}


def test_a_single_noisy_day_does_not_retrain():
    history = [day("2026-02-01"), day("2026-02-02", "error", drifted=["amount"]), day("2026-02-03")]
    decision = decide_retrain(history, "1", {}, NOW)
    assert not decision.request and "latest day is within thresholds" in decision.reason


def test_two_consecutive_bad_days_request_one_retrain_named_after_the_incident():
    history = [day("2026-02-01"), day("2026-02-02", "error", drifted=["amount", "cust_txn_count_1h"]),
               day("2026-02-03", decay=True)]
    decision = decide_retrain(history, "1", {}, NOW)
    assert decision.request and decision.run_key == "retrain:1:2026-02-02"
    assert decision.days == ("2026-02-02", "2026-02-03")
    assert "amount" in decision.reason and "performance decay" in decision.reason
    # the next tick, one day later, same incident: no second retrain
    again = decide_retrain(history + [day("2026-02-04", "error")], "1", decision.cursor,
                           NOW + dt.timedelta(days=2))
    assert not again.request and "already started" in again.reason


def test_a_few_drifted_features_without_dataset_drift_do_not_count():
    lone = {**day("2026-02-02", "error", drifted=["merchant_fraud_rate_30d"]), "drift_detected": False}
    history = [lone, {**lone, "day": "2026-02-03"}]
    assert not decide_retrain(history, "1", {}, NOW).request


def test_warn_days_and_gaps_do_not_make_a_streak():
    history = [day("2026-02-01", "warn"), day("2026-02-02", "warn")]
    assert not decide_retrain(history, "1", {}, NOW).request
    assert decide_retrain(history, "1", {}, NOW, RetrainPolicy(severity="warn")).request
    gap = [day("2026-02-01", "error"), day("2026-02-03", "error")]  # 02-02 not monitored
    assert not decide_retrain(gap, "1", {}, NOW).request


def test_cool_down_holds_a_new_incident_back_then_lets_it_through():
    first = decide_retrain([day("2026-02-01", "error"), day("2026-02-02", "error")], "1", {}, NOW)
    assert first.request
    history = [day("2026-02-01", "error"), day("2026-02-02", "error"), day("2026-02-03"),
               day("2026-02-04", "error"), day("2026-02-05", "error")]
    held = decide_retrain(history, "1", first.cursor, NOW + dt.timedelta(hours=2))
    assert not held.request and "cool-down" in held.reason and held.incident_start == "2026-02-04"
    later = decide_retrain(history, "1", first.cursor, NOW + dt.timedelta(hours=25))
    assert later.request and later.run_key == "retrain:1:2026-02-04"


def test_only_the_current_champion_days_count():
    history = [day("2026-02-01", "error", version="1"), day("2026-02-02", "error", version="1"),
               day("2026-02-03", version="2")]
    assert decide_retrain(history, "1", {}, NOW).request
    decision = decide_retrain(history, "2", {}, NOW)
    assert not decision.request
    assert not decide_retrain(history, None, {}, NOW).request
