"""Training/serving skew on constructed frames: exact counts, sizes and example ids."""

from __future__ import annotations

import json

import polars as pl
import pytest

from mlp_platform.monitoring.skew import skew_report


def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    served = pl.DataFrame({
        "transaction_id": ["t1", "t2", "t3", "t4", "t5", "s_only"],
        "amount": [10.0, 20.0, 30.0, None, 50.0, 1.0],
        "count_1h": [1, 2, 3, 4, None, 0],
        "ratio": [0.5, 1.0 + 1e-12, float("nan"), 2.0, 3.0, 1.0],
    })
    offline = pl.DataFrame({
        "transaction_id": ["t5", "t4", "t3", "t2", "t1", "o_only1", "o_only2"],  # other order
        "amount": [50.0, None, 33.0, 20.0, 10.5, 2.0, 3.0],   # t3 and t1 differ; t4 null==null
        "count_1h": [None, 4, 3, 2, 1, 0, 0],                 # identical, null on t5 both sides
        "ratio": [3.0, 2.5, None, 1.0, 0.0, 1.0, 1.0],        # t2 within rtol; t3 NaN==null; t4, t1 differ
    })
    return served, offline


def test_skew_counts_sizes_and_examples():
    served, offline = frames()
    report = skew_report(served, offline, ["amount", "count_1h", "ratio"])
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    amount = data["amount"]
    assert amount["n_compared"] == 5 and amount["n_mismatch"] == 2 and amount["mismatch_rate"] == pytest.approx(0.4)
    assert amount["max_abs_diff"] == pytest.approx(3.0) and amount["mean_abs_diff"] == pytest.approx(1.75)
    assert amount["max_rel_diff"] == pytest.approx(3.0 / 33.0)
    assert amount["mean_rel_diff"] == pytest.approx((3.0 / 33.0 + 0.5 / 10.5) / 2)
    assert amount["example_ids"] == ["t3", "t1"]  # largest difference first
    assert data["count_1h"]["n_mismatch"] == 0 and data["count_1h"]["max_abs_diff"] is None
    ratio = data["ratio"]
    assert ratio["n_value_mismatch"] == 2 and ratio["n_null_mismatch"] == 0
    assert ratio["max_abs_diff"] == pytest.approx(0.5)
    assert ratio["max_rel_diff"] == pytest.approx(0.2)  # t1 differs from an offline 0: no relative size
    summary = data["summary"]
    assert (summary["n_served"], summary["n_offline"], summary["n_matched"]) == (6, 7, 5)
    assert summary["only_served"] == 1 and summary["only_served_examples"] == ["s_only"]
    assert summary["only_offline"] == 2 and summary["only_offline_examples"] == ["o_only1", "o_only2"]
    assert summary["n_features_mismatched"] == 2 and summary["max_mismatch_rate"] == pytest.approx(0.4)
    assert report.mismatched_features == ["amount", "ratio"]


def test_null_against_a_value_is_a_mismatch():
    served = pl.DataFrame({"transaction_id": [1, 2, 3], "f": [None, 1.0, 2.0]})
    offline = pl.DataFrame({"transaction_id": [1, 2, 3], "f": [0.0, None, 2.0]})
    entry = skew_report(served, offline, ["f"]).to_dict()["f"]
    assert entry["n_null_mismatch"] == 2 and entry["n_value_mismatch"] == 0
    assert entry["mismatch_rate"] == pytest.approx(2 / 3) and entry["example_ids"] == [1, 2]


def test_tolerances_are_numpy_isclose_with_offline_as_reference():
    served = pl.DataFrame({"transaction_id": [1, 2], "f": [1.0 + 1e-10, 1.0 + 1e-8]})
    offline = pl.DataFrame({"transaction_id": [1, 2], "f": [1.0, 1.0]})
    assert skew_report(served, offline, ["f"]).to_dict()["f"]["n_mismatch"] == 1
    assert skew_report(served, offline, ["f"], rtol=1e-7).to_dict()["f"]["n_mismatch"] == 0


def test_skew_bad_input():
    served, offline = frames()
    with pytest.raises(ValueError, match="duplicated 'transaction_id'"):
        skew_report(pl.concat([served, served.head(1)]), offline, ["amount"])
    with pytest.raises(ValueError, match="lacks the key column"):
        skew_report(served.drop("transaction_id"), offline, ["amount"])
    with pytest.raises(ValueError, match="offline lacks feature columns \\['missing'\\]"):
        skew_report(served.with_columns(pl.lit(1.0).alias("missing")), offline, ["missing"])
    with pytest.raises(ValueError, match="null 'transaction_id'"):
        skew_report(served.with_columns(pl.lit(None, dtype=pl.String).alias("transaction_id")), offline, ["amount"])
