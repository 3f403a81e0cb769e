"""Staging replay core: production decisions replayed through a candidate (real LightGBM boosters)."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from mlp_platform.evaluation.replay import decide, decline_threshold_of, replay
from mlp_platform.runtime.scorer import Scorer

NAMES = ["f_amount", "f_count"]


def _booster(seed: int, rounds: int) -> Scorer:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, 2))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=2000) > 1.2).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1, "seed": seed},
                        lgb.Dataset(x, y, feature_name=NAMES), num_boost_round=rounds)
    return Scorer(booster, NAMES, str(seed))


def _production(prod: Scorer, n: int, review: float, skew_rows: int = 0):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 2))
    scores = prod.score_matrix(x)
    decisions = pl.DataFrame({
        "decision_id": [f"d{i}" for i in range(n)], "transaction_id": [f"t{i}" for i in range(n)],
        "score": scores, "decision": decide(scores, review, 0.9).astype(str).tolist(),
        "arm": ["champion"] * (n - 10) + ["challenger"] * 10, "degraded": [False] * n,
        "model_version": [prod.version] * n, "policy_version": [f"policy-1/r={review:.6g}/d=0.9"] * n})
    served = pl.DataFrame({"decision_id": decisions["decision_id"], NAMES[0]: x[:, 0], NAMES[1]: x[:, 1]})
    x_off = x.copy()
    x_off[:skew_rows, 0] += 3.0  # the offline recomputation differs on a few rows
    offline = pl.DataFrame({"transaction_id": decisions["transaction_id"], NAMES[0]: x_off[:, 0],
                            NAMES[1]: x_off[:, 1]})
    return decisions, served, offline


def test_replaying_production_through_itself_changes_nothing():
    prod = _booster(0, 50)
    decisions, served, offline = _production(prod, 500, review=0.3)
    report = replay(decisions, served, offline, NAMES, prod, prod.version, 0.3, day="2026-02-01")
    assert report.decisions == 500 and report.flips == {}
    assert report.score_change["abs_p99"] == 0.0
    assert report.rates["production"] == report.rates["candidate"]
    assert report.skew_sensitive_decisions == 0


def test_a_different_candidate_reports_flips_that_add_up():
    prod, cand = _booster(0, 50), _booster(5, 8)
    decisions, served, offline = _production(prod, 800, review=0.3, skew_rows=40)
    report = replay(decisions, served, offline, NAMES, cand, cand.version, 0.25, day="2026-02-01")
    expected = decide(cand.score_matrix(served.select(NAMES).to_numpy()), 0.25, 0.9)
    prod_dec = np.asarray(decisions["decision"].to_list(), dtype=object)
    assert sum(report.flips.values()) == int(np.sum(expected != prod_dec)) > 0
    assert sum(sum(r.values()) for r in report.decision_matrix.values()) == 800
    assert report.rates["candidate"]["approval_rate"] == pytest.approx(float(np.mean(expected == "approve")))
    assert sum(report.flips_by_segment["arm"].values()) == sum(report.flips.values())
    assert report.skew_sensitive_decisions > 0  # the rows recomputed differently offline move some decisions
    assert report.rows.height == 800 and "candidate v5" in report.markdown()


def test_missing_served_vectors_and_empty_days_are_clear_errors():
    prod = _booster(0, 20)
    decisions, served, offline = _production(prod, 50, review=0.3)
    with pytest.raises(ValueError, match="no served feature vector"):
        replay(decisions, served.head(40), offline, NAMES, prod, "0", 0.3, day="2026-02-01")
    with pytest.raises(ValueError, match="nothing to replay"):
        replay(decisions.head(0), served, offline, NAMES, prod, "0", 0.3, day="2026-02-01")
    assert decline_threshold_of(["policy-1/r=0.2/d=0.85", "policy-1/r=0.2/d=0.85", "x"]) == 0.85
