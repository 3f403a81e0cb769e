"""Drift statistics against scipy and by hand, calibration of the thresholds, the drift rule, the
reference profile's JSON round trip, and agreement with Evidently 0.7 where it computes the same."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import polars as pl
import pytest
from scipy import stats

from mlp_platform.monitoring import ReferenceProfile, build_reference_profile, compute_drift
from mlp_platform.monitoring.statistics import PSI_EPSILON, SortedColumn, ks_statistic, wasserstein1

FEATURES = ["amount", "amount_mean_7d", "count_1h", "count_1d", "ratio", "is_new_device", "hour", "gap"]


def synthetic(n: int, seed: int, *, amount_shift: float = 0.0, count_shift: float = 0.0,
              ratio_missing: float = 0.05) -> tuple[pl.DataFrame, np.ndarray]:
    """Fraud-like features: skewed amounts, zero-inflated counts, a flag, NaNs, ties; and scores."""
    rng = np.random.default_rng(seed)
    amount = np.round(rng.lognormal(3.5 + amount_shift, 1.1, n), 2)
    ratio = rng.gamma(2.0, 0.5, n)
    ratio[rng.random(n) < ratio_missing] = np.nan
    frame = pl.DataFrame({
        "amount": amount,
        "amount_mean_7d": rng.lognormal(3.4, 0.6, n),
        "count_1h": rng.poisson(0.3 + count_shift, n),
        "count_1d": rng.poisson(4.0, n),
        "ratio": ratio,
        "is_new_device": (rng.random(n) < 0.08).astype(np.int64),
        "hour": rng.integers(0, 24, n),
        "gap": rng.exponential(3600.0, n),
    })
    logit = -4.0 + 0.4 * np.log(amount) + 0.3 * frame["count_1h"].to_numpy()
    scores = 1.0 / (1.0 + np.exp(-logit + rng.normal(0, 0.5, n)))
    return frame, scores


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    frame, scores = synthetic(200_000, seed=1)
    return build_reference_profile(frame, FEATURES, scores, seed=0)


# ---------------------------------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_ks_and_wasserstein_agree_with_scipy_incl_ties_and_nans(seed):
    rng = np.random.default_rng(seed)
    reference, ref_scores = synthetic(3000, seed=seed)
    current, cur_scores = synthetic(int(rng.integers(50, 20_000)), seed=100 + seed, amount_shift=0.2 * seed,
                                    ratio_missing=0.3)
    small = build_reference_profile(reference, FEATURES, ref_scores, seed=seed, max_sample=1000, n_boot=5,
                                    calibration_sizes=(500,))
    report = compute_drift(small, current, cur_scores)
    for name in [*FEATURES, "prediction"]:
        fp = small.prediction if name == "prediction" else small.features[name]
        values = cur_scores if name == "prediction" else current[name].cast(pl.Float64).to_numpy()
        values = values[~np.isnan(values)]
        entry = report.prediction if name == "prediction" else report.features[name]
        ks = stats.ks_2samp(fp.sample, values, method="asymp")
        assert entry["ks"] == pytest.approx(ks.statistic, abs=1e-12)
        assert entry["ks_pvalue"] == pytest.approx(ks.pvalue, rel=1e-6, abs=1e-12)
        w = stats.wasserstein_distance(fp.sample, values)
        assert entry["wasserstein_raw"] == pytest.approx(w, rel=1e-6, abs=1e-9)
        assert entry["wasserstein"] == pytest.approx(w / max(np.std(fp.sample), 0.001), rel=1e-6, abs=1e-9)


def test_kernels_on_heavy_ties_and_disjoint_supports():
    rng = np.random.default_rng(7)
    cases = [
        (rng.integers(0, 3, 400).astype(float), rng.integers(0, 3, 10_000).astype(float)),
        (np.zeros(50), np.zeros(7)),                      # identical constants
        (np.zeros(50), np.full(30, 5.0)),                 # disjoint constants: KS 1, W1 5
        (rng.normal(size=100), rng.normal(100, 1, 900)),  # disjoint supports
        (np.array([1.0]), np.array([1.0, 2.0, 2.0, 3.0])),
    ]
    for a, b in cases:
        col = SortedColumn.of(b)
        assert ks_statistic(np.sort(a), col) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
        assert wasserstein1(np.sort(a), col) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-9, abs=1e-12)
    assert math.isnan(ks_statistic(np.array([1.0]), SortedColumn.of(np.array([np.nan]))))


def test_psi_by_hand_on_value_bins_with_missing_and_empty_bins():
    # A 3-valued feature gets one bin per value: (-inf,0], (0,1], (1,2], (2,inf), missing.
    reference = pl.DataFrame({"x": [0] * 50 + [1] * 30 + [2] * 10 + [None] * 10})
    prof = build_reference_profile(reference, ["x"], None, max_sample=100, n_boot=2, calibration_sizes=(50,))
    fp = prof.features["x"]
    assert fp.edges.tolist() == [0.0, 1.0, 2.0]
    assert fp.proportions.tolist() == pytest.approx([0.5, 0.3, 0.1, 0.0, 0.1])
    # Day: 0 x40, 1 x0 (empty), 2 x40, 7 x10 (above the last value), missing x10.
    current = pl.DataFrame({"x": [0] * 40 + [2] * 40 + [7] * 10 + [None] * 10})
    r = np.array([0.5, 0.3, 0.1, PSI_EPSILON, 0.1])
    c = np.array([0.4, PSI_EPSILON, 0.4, 0.1, 0.1])
    by_hand = ((0.5 - 0.4) * math.log(0.5 / 0.4) + (0.3 - 1e-4) * math.log(0.3 / 1e-4)
               + (0.1 - 0.4) * math.log(0.1 / 0.4) + (1e-4 - 0.1) * math.log(1e-4 / 0.1) + 0.0)
    assert float(np.sum((r - c) * np.log(r / c))) == pytest.approx(by_hand)
    entry = compute_drift(prof, current).features["x"]
    assert entry["psi"] == pytest.approx(by_hand, rel=1e-12)
    assert entry["missing_rate_current"] == pytest.approx(0.1)
    assert entry["missing_rate_change"] == pytest.approx(0.0)


def test_quantile_bins_edges_ties_and_constant_feature():
    n = 1000
    values = np.arange(1, n + 1, dtype=float)            # 1..1000: decile edges 100, 200, ..., 900
    zero_heavy = np.where(np.arange(n) < 600, 0.0, np.arange(n, dtype=float))  # 60% zeros
    reference = pl.DataFrame({"v": values, "z": zero_heavy, "c": np.full(n, 3.0)})
    prof = build_reference_profile(reference, ["v", "z", "c"], None, n_boot=2, calibration_sizes=(100,))
    assert prof.features["v"].edges.tolist() == [100.0 * i for i in range(1, 10)]
    assert prof.features["v"].proportions[:10].tolist() == pytest.approx([0.1] * 10)
    z = prof.features["z"]
    assert z.edges[0] == 0.0 and z.proportions[0] == pytest.approx(0.6)  # the ties are one bin
    assert len(z.edges) == len(set(z.edges.tolist())) <= 9
    assert prof.features["c"].edges.tolist() == [3.0]
    # Day: values 1..500 only -> the five lower deciles have 0.2 each, the upper five are empty.
    current = pl.DataFrame({"v": np.arange(1, 501, dtype=float), "z": np.zeros(500), "c": np.full(500, 4.0)})
    report = compute_drift(prof, current).features
    by_hand = 5 * (0.1 - 0.2) * math.log(0.1 / 0.2) + 5 * (0.1 - PSI_EPSILON) * math.log(0.1 / PSI_EPSILON)
    assert report["v"]["psi"] == pytest.approx(by_hand)
    # The constant moves from 3 to 4: KS 1, W1 = 1, normalised by the floor 0.001.
    assert report["c"]["ks"] == 1.0 and report["c"]["wasserstein_raw"] == pytest.approx(1.0)
    assert report["c"]["wasserstein"] == pytest.approx(1000.0)
    assert report["c"]["severity"] == "error"


# ---------------------------------------------------------------------------------------------------
# Calibration and the drift rule
# ---------------------------------------------------------------------------------------------------


def test_thresholds_shrink_with_day_size(profile):
    for name in FEATURES:
        t = [profile.features[name].thresholds(n) for n in (200, 1000, 30_000, 100_000, 10_000_000)]
        for stat in ("psi", "ks", "wasserstein"):
            series = [x[stat] for x in t]
            assert all(a >= b for a, b in zip(series, series[1:], strict=False)), (name, stat, series)
            assert series[-1] >= profile.features[name].calibration.at_infinity[stat] - 1e-15
        assert t[0]["psi"] > t[-1]["psi"] * 100


def test_no_drift_day_of_200k_rows_is_not_flagged(profile):
    above = total = 0
    for seed, n in ((11, 200_000), (12, 200_000), (13, 2_000)):
        frame, scores = synthetic(n, seed=seed)
        report = compute_drift(profile, frame, scores)
        for entry in [*report.features.values(), report.prediction]:
            above += sum(entry[s] > entry[f"{s}_threshold"] for s in ("psi", "ks", "wasserstein"))
            total += 3
        summary = report.to_dict()["summary"]
        assert summary["n_drifted"] == 0, report.drifted_features
        assert summary["severity"] == "ok" and not summary["drift_detected"]
        assert not report.prediction["drifted"]
        assert all(entry["psi"] < 0.01 for entry in report.features.values())
    # calibrated: few statistics above their threshold on fresh days (the window's own sampling
    # noise is accounted for by the effective size)
    assert above / total < 0.06, (above, total)  # measured 2/81 (8/81 without the effective size)


def test_shifted_features_flagged_with_the_right_severity(profile):
    frame, scores = synthetic(200_000, seed=21, amount_shift=0.15, count_shift=1.0, ratio_missing=0.4)
    report = compute_drift(profile, frame, scores)
    feats = report.features
    assert feats["amount"]["drifted"] and feats["amount"]["severity"] == "warn"      # moderate shift
    assert feats["count_1h"]["drifted"] and feats["count_1h"]["severity"] == "error"  # 0.3 -> 1.3 a hour
    assert feats["ratio"]["drifted"] and feats["ratio"]["severity"] == "error"        # missing 5% -> 40%
    assert feats["ratio"]["missing_rate_change"] == pytest.approx(0.35, abs=0.01)
    untouched = set(FEATURES) - {"amount", "count_1h", "ratio"}
    assert not any(feats[name]["drifted"] for name in untouched)
    assert report.prediction["drifted"]  # the score depends on amount and count_1h
    summary = report.to_dict()["summary"]
    assert summary["n_drifted"] == 3 and summary["drifted_share"] == pytest.approx(3 / 8)
    assert summary["dataset_drift"] and summary["drift_detected"] and summary["severity"] == "error"
    assert summary["drifted_features"][0] in {"count_1h", "ratio"}


def test_a_huge_day_with_a_trivial_shift_is_significant_but_not_drifted(profile):
    frame, scores = synthetic(1_000_000, seed=31, amount_shift=0.03)
    entry = compute_drift(profile, frame, scores).features["amount"]
    assert entry["significant"]  # statistically certain at a million rows ...
    assert entry["psi"] < 0.1 and entry["wasserstein"] < 0.1  # ... but practically small
    assert not entry["drifted"] and entry["severity"] == "ok"


def test_report_shape_for_the_service_file(profile):
    frame, scores = synthetic(5000, seed=41)
    data = compute_drift(profile, frame, scores).to_dict()
    assert set(data) == {"features", "prediction", "summary"}
    json.dumps(data, allow_nan=False)
    for entry in [*data["features"].values(), data["prediction"]]:
        assert {"psi", "ks", "ks_pvalue", "wasserstein", "drifted", "severity", "psi_threshold", "ks_threshold",
                "wasserstein_threshold", "missing_rate_change"} <= set(entry)
    assert compute_drift(profile, frame).to_dict()["prediction"] is None


# ---------------------------------------------------------------------------------------------------
# Profile JSON, errors
# ---------------------------------------------------------------------------------------------------


def test_profile_json_round_trip_gives_identical_drift(profile, tmp_path):
    text = profile.to_json()
    assert len(text) < 3_000_000
    loaded = ReferenceProfile.read(profile.write(tmp_path / "model" / "reference_profile.json"))
    assert loaded.to_json() == text
    frame, scores = synthetic(30_000, seed=51, amount_shift=0.2)
    before = compute_drift(profile, frame, scores).to_dict()
    after = compute_drift(loaded, frame, scores).to_dict()
    before["summary"].pop("computed_at"), after["summary"].pop("computed_at")
    assert before == after
    sample = loaded.sample_frame(["ratio", "prediction"])
    assert sample.height == 5000 and sample["ratio"].null_count() > 0


def test_bad_input_gets_a_clear_error(profile):
    frame, scores = synthetic(100, seed=61)
    with pytest.raises(ValueError, match="lacks feature columns \\['gap'\\]"):
        compute_drift(profile, frame.drop("gap"))
    with pytest.raises(ValueError, match="non-numeric"):
        compute_drift(profile, frame.with_columns(pl.col("hour").cast(pl.String)))
    with pytest.raises(ValueError, match="one score per row"):
        compute_drift(profile, frame, scores[:-1])
    with pytest.raises(ValueError, match="no rows"):
        compute_drift(profile, frame.head(0))
    with pytest.raises(ValueError, match="infinite"):
        compute_drift(profile, frame.with_columns(pl.lit(math.inf).alias("gap")))
    with pytest.raises(FileNotFoundError, match="no reference profile"):
        ReferenceProfile.read("/nonexistent/reference_profile.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ReferenceProfile.from_json("{broken")
    with pytest.raises(ValueError, match="schema_version"):
        ReferenceProfile.from_json(json.dumps({"features": {}, "schema_version": 99}))
    with pytest.raises(ValueError, match="training scores must be finite"):
        build_reference_profile(frame, FEATURES, np.full(100, np.nan))
    with pytest.raises(ValueError, match="empty training frame"):
        build_reference_profile(frame.head(0), FEATURES, None)


def test_all_missing_day_column_is_flagged_through_psi(profile):
    frame, scores = synthetic(20_000, seed=71)
    entry = compute_drift(profile, frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("gap")), scores
                          ).features["gap"]
    assert entry["ks"] != entry["ks"] and entry["wasserstein"] != entry["wasserstein"]  # undefined: nan
    assert entry["missing_rate_current"] == 1.0 and entry["psi"] > 1.0
    assert entry["drifted"] and entry["severity"] == "error"


# ---------------------------------------------------------------------------------------------------
# Evidently 0.7: same quantities where it computes the same thing
# ---------------------------------------------------------------------------------------------------


def _evidently_values(reference: pl.DataFrame, current: pl.DataFrame, method: str) -> dict[str, float]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snap = Report([DataDriftPreset(method=method)]).run(
            current_data=current.to_pandas(), reference_data=reference.to_pandas())
    out = {}
    for metric in snap.dict()["metrics"]:
        if metric["metric_name"].startswith("ValueDrift("):
            out[metric["config"]["column"]] = metric["value"]
    return out


def test_agreement_with_evidently_wasserstein_ks_and_discrete_psi():
    reference, _ = synthetic(4000, seed=81)
    reference = reference.drop("ratio")  # Evidently drops missing values; compare on complete columns
    names = [n for n in FEATURES if n != "ratio"]
    current, _ = synthetic(20_000, seed=82, amount_shift=0.3, count_shift=0.5)
    # keep the counts inside the reference's values (an unseen value is a new category there, our
    # outermost bin here)
    current = current.drop("ratio").with_columns(
        pl.col(c).clip(reference[c].min(), reference[c].max()) for c in ("count_1h", "count_1d"))
    prof = build_reference_profile(reference, names, None, max_sample=4000, n_boot=2, calibration_sizes=(100,))
    ours = compute_drift(prof, current).features
    ref = prof.sample_frame(names)  # the full reference: the sample is every row
    # Wasserstein (normed by the reference std): Evidently's default for numerical columns.
    ev_w = _evidently_values(ref, current.cast(pl.Float64), "wasserstein")
    for name in names:
        assert ours[name]["wasserstein"] == pytest.approx(ev_w[name], rel=1e-6, abs=1e-9), name
    # KS: Evidently reports the p-value; with 20 000 current rows scipy's "auto" is the asymptotic one.
    ev_ks = _evidently_values(ref, current.cast(pl.Float64), "ks")
    for name in names:
        assert ours[name]["ks_pvalue"] == pytest.approx(ev_ks[name], rel=1e-6, abs=1e-12), name
    # PSI: the same quantity only for features with <= 20 values (one bin per value in both); for
    # continuous features Evidently bins equal-width (Sturges) over both samples, we bin on
    # reference quantiles.
    ev_psi = _evidently_values(ref, current.cast(pl.Float64), "psi")
    same = [name for name in names if prof.features[name].n_distinct <= 20
            and set(current[name].unique().to_list()) <= set(reference[name].unique().to_list())]
    assert {"is_new_device", "count_1h", "count_1d"} <= set(same)
    for name in same:
        assert ours[name]["psi"] == pytest.approx(ev_psi[name], rel=1e-9), name
    assert prof.features["hour"].n_distinct == 24  # > 20 values: quantile bins here, Sturges there
    assert abs(ours["amount"]["psi"] - ev_psi["amount"]) > 1e-3


def test_monitoring_record_for_the_service(profile):
    from mlp_platform.monitoring.drift import monitoring_record
    from mlp_platform.monitoring.skew import skew_report

    frame, scores = synthetic(3000, seed=91)
    served = frame.with_row_index("transaction_id")
    skew = skew_report(served, served, FEATURES)
    record = monitoring_record("2026-11-24", 7, compute_drift(profile, frame, scores), skew)
    assert set(record) == {"day", "computed_at", "model_version", "features", "prediction", "skew", "summary"}
    assert record["model_version"] == "7" and record["skew"]["amount"]["mismatch_rate"] == 0.0
    json.dumps(record, allow_nan=False)
