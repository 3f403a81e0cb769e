"""Evaluation metrics: hand-worked examples, sklearn agreement, the alert budget, bootstrap, evaluate()."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from mlp_platform.evaluation.metrics import (
    add_amount_band,
    add_customer_tenure,
    alert_budget_precision,
    approval_rate,
    average_precision,
    bootstrap_ci,
    evaluate,
    fraud_amount_caught,
    fraud_amount_summary,
    recall_at_fpr,
    roc_auc,
    threshold_for_fpr,
)

D0 = dt.datetime(2024, 3, 1)

# ---------------------------------------------------------------------------------------------------
# recall_at_fpr / threshold_for_fpr with ties
# ---------------------------------------------------------------------------------------------------

# 4 frauds, 10 legit. Sorted by score (highest first), cumulative (tp, fp) at each distinct score:
#   0.9: (1, 0)   0.8: (3, 1)  <- the tie at 0.8 holds 2 frauds and 1 legit
#   0.7: (3, 2)   0.6: (3, 3)   0.5: (3, 4)   0.4: (3, 5)   0.3: (4, 6)   0.2: (4, 7) ...
TIE_Y = [1, 1, 1, 1] + [0] * 10
TIE_S = [0.9, 0.8, 0.8, 0.3] + [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.0]


@pytest.mark.parametrize(
    ("max_fpr", "recall", "threshold"),
    [
        # 0 false positives allowed: the tie at 0.8 cannot be split, so only the 0.9 fraud: 1/4.
        (0.0, 0.25, 0.9),
        (0.05, 0.25, 0.9),  # floor(0.05 * 10) = 0 false positives
        (0.1, 0.75, 0.8),  # 1 false positive allowed: take the whole 0.8 tie, 3/4
        (0.55, 0.75, 0.4),  # floor(5.5) = 5 false positives: lowest admissible score 0.4, still 3/4
        (0.6, 1.0, 0.3),  # 6 false positives: 0.3 takes the last fraud (and its tied legit)
        (1.0, 1.0, 0.0),  # everything flagged
    ],
)
def test_recall_and_threshold_at_fpr_with_ties(max_fpr, recall, threshold):
    assert recall_at_fpr(TIE_Y, TIE_S, max_fpr) == pytest.approx(recall)
    assert threshold_for_fpr(TIE_Y, TIE_S, max_fpr) == pytest.approx(threshold)


def test_recall_at_fpr_when_the_top_score_is_already_over_budget():
    # The only score value is shared by a fraud and a legit: any threshold flags both (FPR 1).
    assert recall_at_fpr([1, 0], [0.5, 0.5], 0.1) == 0.0
    assert threshold_for_fpr([1, 0], [0.5, 0.5], 0.1) == math.inf


def test_recall_at_fpr_undefined_for_one_class_and_bad_inputs_rejected():
    assert math.isnan(recall_at_fpr([0, 0, 0], [0.1, 0.2, 0.3], 0.1))
    assert math.isnan(recall_at_fpr([1, 1], [0.1, 0.2], 0.1))
    # The threshold needs legitimate traffic only. 3 legit: max_fpr 0.34 allows floor(1.02) = 1
    # false positive -> flag the 0.3 only; 0.67 allows floor(2.01) = 2 -> 0.2.
    assert threshold_for_fpr([0, 0, 0], [0.1, 0.2, 0.3], 0.34) == pytest.approx(0.3)
    assert threshold_for_fpr([0, 0, 0], [0.1, 0.2, 0.3], 0.67) == pytest.approx(0.2)
    assert math.isnan(threshold_for_fpr([1, 1], [0.1, 0.2], 0.1))
    with pytest.raises(ValueError, match="0/1"):
        recall_at_fpr([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        recall_at_fpr([0, 1], [0.1, float("nan")])


def test_auc_and_ap_match_sklearn_on_random_data_with_ties():
    rng = np.random.default_rng(7)
    for _ in range(5):
        y = (rng.random(500) < 0.1).astype(int)
        s = np.round(np.clip(rng.random(500) * 0.7 + 0.3 * y, 0, 1), 2)  # rounding -> many ties
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert math.isnan(average_precision([0, 0], [0.2, 0.3]))


def test_auc_and_ap_by_hand():
    # y = [1, 0, 1, 0], s = [0.8, 0.6, 0.6, 0.2]. Pairs (fraud, legit): (0.8,0.6) 1, (0.8,0.2) 1,
    # (0.6,0.6) tie 1/2, (0.6,0.2) 1 -> AUC 3.5/4. AP: at 0.8 recall 1/2 precision 1; at 0.6 the
    # tie adds one fraud and one legit: recall 1, precision 2/3 -> 1/2*1 + 1/2*2/3 = 5/6.
    assert roc_auc([1, 0, 1, 0], [0.8, 0.6, 0.6, 0.2]) == pytest.approx(0.875)
    assert average_precision([1, 0, 1, 0], [0.8, 0.6, 0.6, 0.2]) == pytest.approx(5 / 6)


def test_approval_rate_and_fraud_amount_caught_by_hand():
    # Approved = s < 0.5: only 0.1 -> 1 of 4 (0.5 itself is flagged).
    assert approval_rate([0.1, 0.5, 0.5, 0.9], 0.5) == pytest.approx(0.25)
    # Fraud rows: amounts 100 (s 0.9, caught), 30 (s 0.4, missed), 70 (s 0.5, caught) -> 170 / 200.
    y, s, amount = [1, 0, 1, 1], [0.9, 0.8, 0.4, 0.5], [100.0, 50.0, 30.0, 70.0]
    assert fraud_amount_caught(y, s, amount, 0.5) == pytest.approx(0.85)
    summary = fraud_amount_summary(y, s, amount, 0.5)
    assert summary["fraud_amount_caught"] == pytest.approx(170.0)
    assert summary["fraud_amount_missed"] == pytest.approx(30.0)
    assert summary["fraud_amount_total"] == pytest.approx(200.0)
    assert (summary["n_fraud"], summary["n_fraud_caught"]) == (3, 2)
    assert math.isnan(fraud_amount_caught([0, 0], [0.9, 0.1], [5.0, 6.0], 0.5))


# ---------------------------------------------------------------------------------------------------
# Alert budget precision (card precision top-k)
# ---------------------------------------------------------------------------------------------------


def _alert_frame() -> pl.DataFrame:
    # (day, card, score, label)
    rows = [
        # Day 1. Card scores: A 0.9 (fraud), B 0.8, C 0.7 (fraud), D 0.1.
        (0, "A", 0.9, 1), (0, "A", 0.2, 0), (0, "B", 0.8, 0), (0, "C", 0.7, 1), (0, "D", 0.1, 0),
        # Day 2. A 0.95 (fraud), B 0.9, F 0.5, C 0.4 (fraud).
        (1, "A", 0.95, 1), (1, "B", 0.9, 0), (1, "F", 0.5, 0), (1, "C", 0.4, 1),
        # Day 3. A 0.99 (fraud), B 0.9, C: max 0.8 from a *legit* txn, plus a 0.3 fraud, D 0.8 tie.
        (2, "A", 0.99, 1), (2, "B", 0.9, 0), (2, "C", 0.8, 0), (2, "C", 0.3, 1), (2, "D", 0.8, 0),
        (2, "D", 0.1, 0),
    ]
    return pl.DataFrame(
        {
            "event_time": [D0 + dt.timedelta(days=d, hours=i) for i, (d, *_rest) in enumerate(rows)],
            "customer_id": [r[1] for r in rows],
            "score": [r[2] for r in rows],
            "label": [r[3] for r in rows],
        }
    )


def test_alert_budget_precision_by_hand_k2():
    # k = 2.
    # Day 1: top-2 = A (fraud), B -> 1/2. Caught: {A}. C was compromised but not in the top 2: not caught.
    # Day 2: A removed. B 0.9, F 0.5 -> no fraud -> 0/2 (without removal it would be A, B -> 1/2).
    #        B was flagged on day 1 but not compromised, so it is still ranked.
    # Day 3: A removed. B 0.9, then C and D tie at 0.8 -> card id ascending -> C. C is compromised
    #        (a 0.3 fraud that day) -> 1/2 (D first would give 0/2).
    # Mean (0.5 + 0 + 0.5) / 3 = 1/3.
    result = alert_budget_precision(_alert_frame(), "score", k=2)
    assert result.per_day["precision"].to_list() == pytest.approx([0.5, 0.0, 0.5])
    assert result.mean == pytest.approx(1 / 3)
    assert result.per_day["day"].to_list() == [dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)]
    # Eligible cards: day 1 A B C D (4); day 2 B F C (3); day 3 B C D (3).
    assert result.per_day["n_cards"].to_list() == [4, 3, 3]
    # Eligible compromised cards: day 1 A C; day 2 C; day 3 C.
    assert result.per_day["n_compromised"].to_list() == [2, 1, 1]
    assert result.per_day["n_detected"].to_list() == [1, 0, 1]


def test_alert_budget_precision_without_removal_k2():
    # Day 2: A 0.95 (fraud), B -> 1/2. Day 3: A 0.99 (fraud), B 0.9 -> 1/2. Mean (0.5+0.5+0.5)/3.
    result = alert_budget_precision(_alert_frame(), "score", k=2, exclude_caught=False)
    assert result.per_day["precision"].to_list() == pytest.approx([0.5, 0.5, 0.5])


def test_alert_budget_precision_k_larger_than_cards():
    # k = 10 and the denominator stays 10.
    # Day 1: all 4 cards flagged, A and C compromised -> 2/10. Caught {A, C}.
    # Day 2: B, F left -> 0/10. Day 3: B, D left -> 0/10. Mean 0.2 / 3.
    result = alert_budget_precision(_alert_frame(), "score", k=10)
    assert result.per_day["precision"].to_list() == pytest.approx([0.2, 0.0, 0.0])
    assert result.mean == pytest.approx(0.2 / 3)
    assert result.per_day["n_cards"].to_list() == [4, 2, 2]


def test_alert_budget_precision_accepts_a_day_index_and_empty_frames():
    frame = _alert_frame().with_columns(day=pl.col("event_time").dt.day())
    by_index = alert_budget_precision(frame, "score", k=2, time_col="day")
    assert by_index.per_day["precision"].to_list() == pytest.approx([0.5, 0.0, 0.5])
    empty = alert_budget_precision(frame.head(0), "score", k=2)
    assert math.isnan(empty.mean) and empty.per_day.height == 0
    with pytest.raises(ValueError, match="k must be"):
        alert_budget_precision(frame, "score", k=0)


# ---------------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------------


def _daily_frame(n_days: int, rows_per_day: int, seed: int) -> pl.DataFrame:
    """Amounts with a strong day effect (days differ more than rows within a day)."""
    rng = np.random.default_rng(seed)
    day_level = rng.normal(100.0, 30.0, n_days)
    days = np.repeat(np.arange(n_days), rows_per_day)
    return pl.DataFrame({"day": days, "amount": day_level[days] + rng.normal(0.0, 5.0, days.size)})


def _mean_amount(frame: pl.DataFrame) -> float:
    return float(frame["amount"].mean())


def test_bootstrap_is_deterministic_by_seed_and_contains_the_point():
    frame = _daily_frame(20, 50, seed=1)
    first = bootstrap_ci(frame, _mean_amount, n_boot=100, seed=3, block_col="day")
    assert first == bootstrap_ci(frame, _mean_amount, n_boot=100, seed=3, block_col="day")
    assert first != bootstrap_ci(frame, _mean_amount, n_boot=100, seed=4, block_col="day")
    point, low, high = first
    assert point == pytest.approx(_mean_amount(frame))
    assert low < point < high
    row_point, row_low, row_high = bootstrap_ci(frame, _mean_amount, n_boot=100, seed=3)
    assert row_low < row_point < row_high
    # Rows within a day are correlated: resampling rows ignores it and understates the uncertainty.
    assert (high - low) > 3 * (row_high - row_low)


def test_bootstrap_ci_is_wider_with_fewer_blocks():
    frame = _daily_frame(40, 25, seed=2)
    _, low_all, high_all = bootstrap_ci(frame, _mean_amount, n_boot=200, seed=0, block_col="day")
    _, low_few, high_few = bootstrap_ci(
        frame.filter(pl.col("day") < 5), _mean_amount, n_boot=200, seed=0, block_col="day"
    )
    assert (high_few - low_few) > 1.5 * (high_all - low_all)


def test_block_bootstrap_resamples_whole_days():
    # 10 days x 100 rows; all 20 frauds are on day 3.
    days = np.repeat(np.arange(10), 100)
    label = np.zeros(1000, dtype=int)
    label[300:320] = 1
    frame = pl.DataFrame({"day": days, "label": label})
    seen: list[int] = []

    def fraud_count(f: pl.DataFrame) -> float:
        seen.append(int(f["label"].sum()))
        return float(f["label"].sum())

    _, low, high = bootstrap_ci(frame, fraud_count, n_boot=200, seed=0, block_col="day")
    block_counts = seen[1:]  # seen[0] is the point estimate
    # Day 3 is drawn whole or not at all: every resample holds a multiple of 20 frauds, and with
    # probability 0.9^10 ~ 35% it is not drawn at all -> the lower bound is 0.
    assert all(count % 20 == 0 for count in block_counts)
    assert 0 in block_counts and max(block_counts) >= 40
    assert low == 0.0 and high >= 40
    seen.clear()
    _, row_low, _ = bootstrap_ci(frame, fraud_count, n_boot=200, seed=0)
    assert row_low > 0
    assert any(count % 20 for count in seen[1:])


def test_bootstrap_is_fast_enough():
    import time

    rng = np.random.default_rng(0)
    n = 50_000
    frame = pl.DataFrame(
        {"day": rng.integers(0, 30, n), "label": (rng.random(n) < 0.02).astype(int), "score": rng.random(n)}
    )
    start = time.perf_counter()
    bootstrap_ci(frame, lambda f: roc_auc(f["label"].to_numpy(), f["score"].to_numpy()), block_col="day")
    assert time.perf_counter() - start < 10.0  # ~0.3 s on a quiet machine; minutes would be a bug


# ---------------------------------------------------------------------------------------------------
# Segment helpers
# ---------------------------------------------------------------------------------------------------


def test_add_amount_band_boundaries():
    frame = pl.DataFrame({"amount": [-5.0, 9.99, 10.0, 49.99, 50.0, 199.99, 200.0, 999.99, 1000.0, None]})
    assert add_amount_band(frame)["amount_band"].to_list() == [
        "<10", "<10", "10-50", "10-50", "50-200", "50-200", "200-1000", "200-1000", ">=1000", None,
    ]


def test_add_customer_tenure():
    frame = pl.DataFrame(
        {
            "customer_id": ["a", "a", "b", "a"],
            "event_time": [D0, D0 + dt.timedelta(days=29, hours=23), D0 + dt.timedelta(days=1),
                           D0 + dt.timedelta(days=30)],
        }
    )
    # Card a first seen at D0: day 0 and 29d23h are new, exactly 30 days is established.
    # Without history b (only one txn) is new; with history b was first seen 100 days earlier.
    assert add_customer_tenure(frame)["customer_tenure"].to_list() == ["new", "new", "new", "established"]
    history = pl.DataFrame({"customer_id": ["b", "z"], "first_seen": [D0 - dt.timedelta(days=100), D0]})
    out = add_customer_tenure(frame, first_seen=history)
    assert out["customer_tenure"].to_list() == ["new", "new", "established", "established"]
    assert out.columns == ["customer_id", "event_time", "customer_tenure"]


# ---------------------------------------------------------------------------------------------------
# evaluate()
# ---------------------------------------------------------------------------------------------------


def _eval_frame(n_days: int = 10, n: int = 4000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.05).astype(int)
    channel = rng.choice(["pos", "ecom"], n)
    frame = pl.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "event_time": [D0 + dt.timedelta(seconds=int(x)) for x in rng.integers(0, n_days * 86400, n)],
            "customer_id": [f"c{x}" for x in rng.integers(0, 400, n)],
            "amount": np.round(rng.exponential(120.0, n), 2),
            "label": label,
            "channel": channel,
            "score": np.clip(rng.random(n) * 0.8 + 0.35 * label, 0, 1),
        }
    )
    # An "atm" channel with no fraud at all: a one-class group.
    atm = frame.head(50).with_columns(
        channel=pl.lit("atm"), label=pl.lit(0, dtype=pl.Int64), transaction_id=pl.format("atm{}", pl.col("transaction_id"))
    )
    return add_amount_band(pl.concat([frame, atm]))


def test_evaluate_report_shape_values_and_json():
    frame = _eval_frame()
    report = evaluate(frame, "score", threshold=0.7, k=20, n_boot=50)
    text = json.dumps(report, allow_nan=False)  # strict JSON: no NaN/inf anywhere
    assert json.loads(text) == report
    for key in ("roc_auc", "average_precision", "recall_at_fpr", "alert_budget_precision",
                "fraud_amount_caught", "approval_rate", "n", "n_fraud", "ci", "segments"):
        assert key in report
    y, s = frame["label"].to_numpy(), frame["score"].to_numpy()
    assert report["n"] == frame.height and report["n_fraud"] == int(y.sum())
    assert report["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert report["recall_at_fpr"] == pytest.approx(recall_at_fpr(y, s, 0.01))
    assert report["approval_rate"] == pytest.approx(float(np.mean(s < 0.7)))
    assert report["alert_budget_precision"] == pytest.approx(alert_budget_precision(frame, "score", k=20).mean)
    assert len(report["alert_budget_per_day"]) == 10
    assert report["ci_method"]["method"] == "day_block" and report["ci_method"]["n_blocks"] == 10
    for name in ("roc_auc", "average_precision", "recall_at_fpr", "alert_budget_precision",
                 "fraud_amount_caught", "approval_rate"):
        ci = report["ci"][name]
        assert ci["low"] <= ci["high"]
        assert ci["low"] - 1e-9 <= report[name] <= ci["high"] + 1e-9, name
    # Segments: channel and amount_band present; country and customer_tenure absent -> skipped.
    assert set(report["segments"]) == {"channel", "amount_band"}
    assert set(report["segments"]["channel"]) == {"atm", "ecom", "pos"}
    atm = report["segments"]["channel"]["atm"]
    assert atm["n"] == 50 and atm["n_fraud"] == 0
    assert atm["roc_auc"] is None and atm["average_precision"] is None and atm["recall_at_fpr"] is None
    assert atm["approval_rate"] is not None
    pos = frame.filter(pl.col("channel") == "pos")
    assert report["segments"]["channel"]["pos"]["roc_auc"] == pytest.approx(
        roc_auc_score(pos["label"].to_numpy(), pos["score"].to_numpy())
    )
    assert sum(g["n"] for g in report["segments"]["amount_band"].values()) == frame.height


def test_evaluate_single_day_uses_row_bootstrap_and_is_deterministic():
    frame = _eval_frame(n_days=1, n=1500, seed=3)
    report = evaluate(frame, "score", threshold=0.7, k=20, n_boot=30, seed=1, segments=())
    assert report["ci_method"]["method"] == "row"
    assert report["ci"]["alert_budget_precision"] is None  # one day: nothing to resample
    assert report["ci"]["roc_auc"]["low"] < report["roc_auc"] < report["ci"]["roc_auc"]["high"]
    assert report["segments"] == {}
    assert report == evaluate(frame, "score", threshold=0.7, k=20, n_boot=30, seed=1, segments=())


def test_evaluate_one_class_frame_gives_none_not_an_error():
    frame = _eval_frame(n=600).with_columns(label=pl.lit(0, dtype=pl.Int64))
    report = evaluate(frame, "score", threshold=0.7, k=5, n_boot=20, segments=("channel",))
    json.dumps(report, allow_nan=False)
    assert report["n_fraud"] == 0
    assert report["roc_auc"] is None and report["fraud_amount_caught"] is None
    assert report["ci"]["roc_auc"] is None
    assert report["alert_budget_precision"] == 0.0
