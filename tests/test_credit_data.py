"""The credit decider's data: the German credit data read in place, the synthetic loan-application
generator and the application / outcome contracts."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import polars as pl
import pytest

from mlp_platform.data.contracts import ContractViolation, validate_applications, validate_outcomes
from mlp_platform.data.credit_synthetic import (
    NEW_INTERMEDIARY,
    CreditSyntheticConfig,
    generate_day,
    generate_period,
)
from mlp_platform.data.german_credit import (
    ABSENT_FIELDS,
    GermanCreditError,
    load_german_credit,
    misclassification_cost,
)
from mlp_platform.data.schema import APPLICATION_LEVELS, APPLICATION_SCHEMA, OUTCOME_SCHEMA
from mlp_platform.settings import load_settings

GERMAN = load_settings().german_credit_path
needs_german = pytest.mark.skipif(not GERMAN.exists(), reason="shared dataset not mounted (MLP_GERMAN_CREDIT_PATH)")
DRIFT = dt.date(2026, 2, 1)


@pytest.fixture(scope="module")
def german():
    if not GERMAN.exists():
        pytest.skip("shared dataset not mounted (MLP_GERMAN_CREDIT_PATH)")
    return load_german_credit(GERMAN)


def test_the_german_credit_data_maps_onto_the_canonical_schema(german):
    apps, outcomes = german.applications, german.outcomes
    assert german.published  # byte for byte the copy the data's README names
    assert dict(apps.schema) == APPLICATION_SCHEMA and dict(outcomes.schema) == OUTCOME_SCHEMA
    assert apps.height == outcomes.height == 1000
    assert int(outcomes["label"].sum()) == 300  # the documented 700 good / 300 bad
    for column, levels in APPLICATION_LEVELS.items():
        assert set(apps[column].unique()) <= set(levels), column
    assert apps["sex"].value_counts().sort("sex").rows() == [("female", 310), ("male", 690)]
    assert all(apps[c].null_count() == 1000 for c in ABSENT_FIELDS)
    # the file's first row: '... < 0 DM', 6 months, 1169 DM, 'radio/television', aged 67
    first = apps.row(0, named=True)
    assert (first["checking_account"], first["term_months"], first["requested_amount"], first["purpose"],
            first["age_years"]) == ("negative", 6, 1169.0, "radio_tv", 67)
    # the canonical frames pass the application contracts unchanged
    checked, report = validate_applications(apps)
    assert report.critical == [] and report.defaulted_rows == 0 and checked.equals(apps)
    validate_outcomes(outcomes, checked)


def test_the_cost_matrix_is_the_documented_one(german):
    y = german.outcomes["label"].to_numpy()
    assert misclassification_cost(y, np.ones_like(y)) == pytest.approx(5 * 0.3)  # accept all: every bad costs 5
    assert misclassification_cost(y, np.zeros_like(y)) == pytest.approx(0.7)  # refuse all: every good costs 1
    assert misclassification_cost(y, y == 0) == 0.0
    with pytest.raises(ValueError):
        misclassification_cost([], [])


@needs_german
@pytest.mark.parametrize("change, message", [
    (lambda df: df.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("caravan"))
                                .otherwise(pl.col("purpose")).alias("purpose")), "purpose: unknown"),
    (lambda df: df.drop("housing"), "missing column(s) housing"),
    (lambda df: df.head(999), "999 rows"),
    (lambda df: df.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("12.5"))
                                .otherwise(pl.col("duration_in_month")).alias("duration_in_month")), "whole numbers"),
])
def test_a_file_that_is_not_the_published_data_is_refused(tmp_path, change, message):
    raw = pl.read_csv(GERMAN, infer_schema_length=0)
    path = tmp_path / "german_credit.csv"
    change(raw).write_csv(path)
    with pytest.raises(GermanCreditError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_german_credit(tmp_path)


def test_a_resaved_copy_still_loads_but_is_not_the_published_one(tmp_path, german):
    shutil.copy(GERMAN, tmp_path / "german_credit.csv")
    assert load_german_credit(tmp_path).published
    pl.read_csv(GERMAN, infer_schema_length=0).write_csv(tmp_path / "german_credit.csv", quote_style="always")
    resaved = load_german_credit(tmp_path)
    assert not resaved.published and resaved.applications.equals(german.applications)


def test_the_generator_is_deterministic_per_day_and_valid():
    config = CreditSyntheticConfig(days=10, applications_per_day=80)
    day = dt.date(2026, 1, 6)
    a1, o1 = generate_day(config, day)
    a2, o2 = generate_day(config, day)
    assert a1.equals(a2) and o1.equals(o2) and a1.height > 40
    apps, outcomes = generate_period(config)
    assert apps.filter(pl.col("event_time").dt.date() == day).equals(a1)
    checked, report = validate_applications(apps)
    assert report.critical == [] and report.defaulted_rows == 0
    validate_outcomes(outcomes, checked)
    joined = apps.join(outcomes, on="application_id")
    delay = (joined["label_time"] - joined["event_time"]).dt.total_days()
    assert delay.min() >= 30 and delay.max() <= config.performance_window_days
    # goods are known at the end of the window, bads when they default (earlier)
    assert (delay.filter(joined["label"] == 0) == config.performance_window_days).all()
    with pytest.raises(ValueError, match="outside the synthetic range"):
        generate_day(config, config.end_date)


def test_the_generated_risk_follows_credit_logic():
    apps, outcomes = generate_period(CreditSyntheticConfig(days=60))
    df = apps.join(outcomes, on="application_id")
    assert 0.15 < df["label"].mean() < 0.35
    by_score = (df.with_columns(pl.col("bureau_score").qcut(5, labels=[str(i) for i in range(5)]).alias("q"))
                .group_by("q").agg(pl.col("label").mean()).sort("q")["label"].to_list())
    assert by_score == sorted(by_score, reverse=True)  # a higher bureau score, fewer defaults
    by_term = df.group_by(pl.col("term_months") >= 36).agg(pl.col("label").mean()).sort("term_months")
    assert by_term["label"][1] > by_term["label"][0]  # longer terms default more
    by_checking = dict(df.group_by("checking_account").agg(pl.col("label").mean()).rows())
    assert by_checking["negative"] > by_checking["below_200"] > by_checking["above_200"]
    by_sex = dict(df.group_by("sex").agg(pl.col("label").mean()).rows())
    assert abs(by_sex["female"] - by_sex["male"]) < 0.05  # no direct effect of sex on default


def test_drift_changes_only_the_days_from_its_start():
    base = CreditSyntheticConfig(days=62, applications_per_day=120)
    drifted = CreditSyntheticConfig(days=62, applications_per_day=120, drift_start=DRIFT)
    before = dt.date(2026, 1, 20)
    assert generate_day(base, before)[0].equals(generate_day(drifted, before)[0])
    assert generate_day(base, before)[1].equals(generate_day(drifted, before)[1])
    apps, outcomes = generate_period(drifted)
    df = apps.join(outcomes, on="application_id").with_columns(
        (pl.col("event_time").dt.date() >= DRIFT).alias("after"))
    stats = df.group_by("after").agg(
        pl.col("monthly_income").mean().alias("income"), (pl.col("channel") == "broker").mean().alias("broker"),
        pl.col("label").mean().alias("bad"), (pl.col("intermediary_id") == NEW_INTERMEDIARY).sum().alias("new"),
        pl.col("requested_amount").median().alias("amount")).sort("after")
    pre, post = stats.row(0, named=True), stats.row(1, named=True)
    assert post["income"] < 0.85 * pre["income"]  # income_shock
    assert post["broker"] > 1.8 * pre["broker"]  # broker_surge
    assert pre["new"] == 0 and post["new"] > 100
    assert post["bad"] > pre["bad"] + 0.03
    with pytest.raises(ValueError, match="unknown drift kind"):
        CreditSyntheticConfig(drift_kinds=("recession",))


def _one_bad(apps: pl.DataFrame, column: str, value) -> pl.DataFrame:
    return apps.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit(value))
                             .otherwise(pl.col(column)).alias(column))


@pytest.mark.parametrize("column, value, rule", [
    ("requested_amount", -500.0, "out_of_range.requested_amount"),
    ("requested_amount", float("inf"), "non_finite.requested_amount"),
    ("age_years", 17, "out_of_range.age_years"),
    ("term_months", 0, "out_of_range.term_months"),
    ("monthly_income", float("nan"), "non_finite.monthly_income"),
    ("purpose", "<img src=x onerror=alert(1)>", "unknown_level.purpose"),
    ("sex", None, "unknown_level.sex"),
    ("application_id", "app-20260105-00000", "duplicate.application_id"),
    ("term_months", "twelve", "wrong_type.term_months"),
])
def test_a_hostile_application_refuses_the_batch_by_name(column, value, rule):
    apps, _ = generate_day(CreditSyntheticConfig(days=10), dt.date(2026, 1, 5))
    bad = _one_bad(apps.with_columns(pl.col(column).cast(pl.String)) if value == "twelve" else apps, column, value)
    with pytest.raises(ContractViolation) as info:
        validate_applications(bad)
    assert rule in {i.rule for i in info.value.report.critical}
    assert "row 3" in str(info.value)


def test_an_unknown_channel_is_defaulted_and_counted():
    apps, _ = generate_day(CreditSyntheticConfig(days=10), dt.date(2026, 1, 5))
    out, report = validate_applications(_one_bad(apps, "channel", "Fax"))
    assert out["channel"][3] == "unknown" and report.as_metadata()["defaulted.unknown_channel"] == 1
    assert out.drop("channel").equals(apps.drop("channel"))  # nothing else touched


def test_hostile_outcomes_are_refused():
    apps, outcomes = generate_day(CreditSyntheticConfig(days=10), dt.date(2026, 1, 5))
    early = outcomes.with_columns(pl.when(pl.int_range(pl.len()) == 1).then(pl.datetime(2025, 12, 31))
                                  .otherwise(pl.col("label_time")).alias("label_time"))
    cases = {
        "label_not_0_or_1": outcomes.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(2)
                                                  .otherwise(pl.col("label")).cast(pl.Int8).alias("label")),
        "label_before_application": early,
        "unknown_application": pl.concat([outcomes, outcomes.head(1).with_columns(pl.lit("nope").alias("application_id"))]),
        "duplicate.application_id": pl.concat([outcomes, outcomes.head(1)]),
        "missing.label_time": outcomes.with_columns(pl.lit(None, dtype=pl.Datetime("us")).alias("label_time")),
    }
    for rule, frame in cases.items():
        with pytest.raises(ContractViolation) as info:
            validate_outcomes(frame, apps)
        assert rule in {i.rule for i in info.value.report.critical}, rule
