"""Fairness (error-rate parity judged on CIs) and champion/candidate decision impact."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from mlp_platform.evaluation.fairness import fairness_report, judge_fairness
from mlp_platform.evaluation.impact import decision_impact

# ---------------------------------------------------------------------------------------------------
# Fairness
# ---------------------------------------------------------------------------------------------------


def _group(rng: np.random.Generator, name: str, n: int, n_fraud: int, legit_flag_rate: float) -> pl.DataFrame:
    """``n`` rows, the first ``n_fraud`` fraud. Threshold 0.5: each legit is flagged with probability
    ``legit_flag_rate``, each fraud with probability 0.6 (the same TPR for every group)."""
    label = np.zeros(n, dtype=int)
    label[:n_fraud] = 1
    flag_prob = np.where(label == 1, 0.6, legit_flag_rate)
    flagged = rng.random(n) < flag_prob
    score = np.where(flagged, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.5, n))
    return pl.DataFrame({"segment": [name] * n, "label": label, "score": score})


def test_biased_model_fails_on_enough_data():
    rng = np.random.default_rng(0)
    frame = pl.concat(
        [
            _group(rng, "big", 4000, 200, 0.05),  # reference (largest): FPR ~5%
            _group(rng, "fair", 2000, 100, 0.05),
            _group(rng, "harsh", 2000, 100, 0.10),  # FPR ~10%: ratio ~2
            _group(rng, "lenient", 2000, 100, 0.02),  # FPR ~2%: ratio ~0.4, fails the other way
        ]
    )
    report = fairness_report(frame, "score", 0.5, "segment", n_boot=300, seed=1)
    json.dumps(report)
    assert report["reference"] == "big"
    harsh = report["groups"]["harsh"]
    assert harsh["status"] == "judged"
    assert harsh["fpr_ratio"] == pytest.approx(harsh["fpr"] / report["groups"]["big"]["fpr"])
    assert harsh["fpr_ratio_ci"][0] > 1.25
    assert harsh["fpr_ci"][0] <= harsh["fpr"] <= harsh["fpr_ci"][1]
    assert report["groups"]["big"]["fpr_ratio"] == 1.0 and report["groups"]["big"]["tpr_diff"] == 0.0

    verdict = judge_fairness(report)
    assert verdict["passed"] is False
    assert sorted(verdict["failed"]) == ["harsh", "lenient"]
    assert verdict["groups"]["fair"]["status"] == "pass"
    assert verdict["groups"]["big"]["status"] == "reference"
    assert "FPR" in verdict["groups"]["harsh"]["explanation"]
    assert "harsh" in verdict["explanation"]
    # A looser bound that the whole harsh CI fits under: harsh no longer fails.
    assert "harsh" not in judge_fairness(report, max_fpr_ratio=harsh["fpr_ratio_ci"][1] + 0.01)["failed"]


def test_same_bias_on_a_small_group_is_insufficient_not_failed():
    rng = np.random.default_rng(0)
    frame = pl.concat(
        [
            _group(rng, "big", 4000, 200, 0.05),
            _group(rng, "tiny", 150, 12, 0.20),  # 150 rows < 200: not judged, however biased it looks
            _group(rng, "few_frauds", 1000, 5, 0.20),  # 5 frauds < 10: not judged either
        ]
    )
    report = fairness_report(frame, "score", 0.5, "segment", seed=2)
    tiny = report["groups"]["tiny"]
    assert tiny["status"] == "insufficient" and "150 transactions < 200" in tiny["reason"]
    assert tiny["fpr_ratio"] > 1.25  # the bias is visible in the point estimate...
    assert report["groups"]["few_frauds"]["status"] == "insufficient"
    assert "5 frauds < 10" in report["groups"]["few_frauds"]["reason"]
    verdict = judge_fairness(report)
    assert verdict["passed"] is True  # ...but the group is not judged
    assert verdict["groups"]["tiny"]["status"] == "insufficient"
    assert verdict["groups"]["few_frauds"]["status"] == "insufficient"
    # With the size rule lowered the same data is judged, and the bias fails.
    judged = judge_fairness(fairness_report(frame, "score", 0.5, "segment", min_group_size=100, seed=2))
    assert "tiny" in judged["failed"]


def test_unbiased_model_on_a_small_sample_passes_noise_does_not_decide():
    # Two groups of 300 rows (15 frauds each), the same random scores for everyone.
    rng = np.random.default_rng(0)
    label = np.zeros(600, dtype=int)
    label[:15] = 1
    label[300:315] = 1
    frame = pl.DataFrame({"segment": ["x"] * 300 + ["y"] * 300, "label": label, "score": rng.random(600)})
    report = fairness_report(frame, "score", 0.8, "segment", seed=0)
    y = report["groups"]["y"]
    # By chance the point estimate is outside [0.8, 1.25]...
    assert y["fpr_ratio"] < 0.8
    # ...but the CI reaches back inside, so the group is not failed.
    assert y["fpr_ratio_ci"][1] > 0.8
    verdict = judge_fairness(report)
    assert verdict["passed"] is True
    assert verdict["groups"]["y"]["status"] == "inconclusive"


def test_fairness_reference_choice_and_determinism():
    rng = np.random.default_rng(5)
    frame = pl.concat([_group(rng, "a", 1000, 50, 0.05), _group(rng, "b", 3000, 150, 0.05)])
    assert fairness_report(frame, "score", 0.5, "segment")["reference"] == "b"  # the largest
    explicit = fairness_report(frame, "score", 0.5, "segment", reference="a", seed=3)
    assert explicit["reference"] == "a"
    assert explicit["groups"]["a"]["status"] == "reference"
    assert explicit == fairness_report(frame, "score", 0.5, "segment", reference="a", seed=3)
    assert explicit != fairness_report(frame, "score", 0.5, "segment", reference="a", seed=4)
    with pytest.raises(ValueError, match="not found"):
        fairness_report(frame, "score", 0.5, "segment", reference="zzz")
    with pytest.raises(ValueError, match="too small"):
        fairness_report(frame, "score", 0.5, "segment", reference="a", min_group_size=2000)


# ---------------------------------------------------------------------------------------------------
# Decision impact
# ---------------------------------------------------------------------------------------------------


def _impact_frame() -> pl.DataFrame:
    # threshold 0.5 (flag = score >= 0.5)
    # id channel label amount champion candidate -> decision change
    #  1  pos     1     100    0.6      0.7      both flag
    #  2  pos     1     200    0.4      0.6      newly flagged (fraud)
    #  3  pos     0      50    0.3      0.5      newly flagged (legit; 0.5 is flagged)
    #  4  ecom    0      20    0.7      0.2      newly approved (legit)
    #  5  ecom    1     300    0.5      0.49     newly approved (fraud)
    #  6  ecom    0      10    0.1      0.2      both approve
    #  7  ecom    1      40    0.2      0.9      newly flagged (fraud)
    #  8  pos     0      60    0.8      0.1      newly approved (legit)
    return pl.DataFrame(
        {
            "transaction_id": [str(i) for i in range(1, 9)],
            "channel": ["pos", "pos", "pos", "ecom", "ecom", "ecom", "ecom", "pos"],
            "label": [1, 1, 0, 0, 1, 0, 1, 0],
            "amount": [100.0, 200.0, 50.0, 20.0, 300.0, 10.0, 40.0, 60.0],
            "champion": [0.6, 0.4, 0.3, 0.7, 0.5, 0.1, 0.2, 0.8],
            "candidate": [0.7, 0.6, 0.5, 0.2, 0.49, 0.2, 0.9, 0.1],
        }
    )


def test_decision_impact_by_hand():
    report = decision_impact(_impact_frame(), "champion", "candidate", 0.5)
    json.dumps(report, allow_nan=False)
    overall = report["overall"]
    # Newly flagged: rows 2, 3, 7 -> 3/8; frauds 2 and 7 -> 2, fraud amount 240, amount 290.
    assert overall["newly_flagged"] == {
        "n": 3, "share": 0.375, "n_fraud": 2, "fraud_amount": 240.0, "amount": 290.0,
    }
    # Newly approved: rows 4, 5, 8 -> 3/8; fraud 5 -> 1, fraud amount 300, amount 380.
    assert overall["newly_approved"] == {
        "n": 3, "share": 0.375, "n_fraud": 1, "fraud_amount": 300.0, "amount": 380.0,
    }
    assert overall["flip_rate"] == pytest.approx(0.75)
    # Champion flags 1, 4, 5, 8; candidate flags 1, 2, 3, 7 -> both 4/8.
    assert overall["champion_flag_rate"] == 0.5 and overall["candidate_flag_rate"] == 0.5
    assert (overall["both_flagged"], overall["both_approved"]) == (1, 1)
    assert overall["net_frauds_caught"] == 1 and overall["net_fraud_amount_caught"] == pytest.approx(-60.0)
    assert overall["n"] == 8 and overall["n_fraud"] == 4

    # Segments: only channel is present (country, amount_band, customer_tenure are skipped).
    assert set(report["segments"]) == {"channel"}
    pos, ecom = report["segments"]["channel"]["pos"], report["segments"]["channel"]["ecom"]
    # pos = rows 1, 2, 3, 8: newly flagged 2, 3; newly approved 8.
    assert pos["newly_flagged"] == {"n": 2, "share": 0.5, "n_fraud": 1, "fraud_amount": 200.0, "amount": 250.0}
    assert pos["newly_approved"] == {"n": 1, "share": 0.25, "n_fraud": 0, "fraud_amount": 0.0, "amount": 60.0}
    # ecom = rows 4, 5, 6, 7: newly flagged 7; newly approved 4, 5.
    assert ecom["newly_flagged"] == {"n": 1, "share": 0.25, "n_fraud": 1, "fraud_amount": 40.0, "amount": 40.0}
    assert ecom["newly_approved"] == {"n": 2, "share": 0.5, "n_fraud": 1, "fraud_amount": 300.0, "amount": 320.0}
    assert ecom["flip_rate"] == 0.75 and pos["flip_rate"] == 0.75


def test_decision_impact_without_labels_and_identical_models():
    frame = _impact_frame()
    same = decision_impact(frame, "champion", "champion", 0.5, segments=("channel",))
    assert same["overall"]["flip_rate"] == 0.0
    assert same["segments"]["channel"]["pos"]["newly_flagged"]["n"] == 0
    unlabelled = decision_impact(frame.drop("label"), "champion", "candidate", 0.5, segments=())
    assert unlabelled["overall"]["newly_flagged"]["n"] == 3
    assert unlabelled["overall"]["newly_flagged"]["n_fraud"] is None
    assert unlabelled["segments"] == {}
    with pytest.raises(ValueError, match="missing scores"):
        decision_impact(frame.with_columns(candidate=pl.lit(None, dtype=pl.Float64)), "champion", "candidate", 0.5)
