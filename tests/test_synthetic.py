"""Tests of the synthetic card-transaction generator (mlp_platform.data.synthetic)."""

from __future__ import annotations

import datetime

import polars as pl
import pytest

from mlp_platform.data import synthetic
from mlp_platform.data.schema import LABEL_SCHEMA, TRANSACTION_SCHEMA
from mlp_platform.data.synthetic import SyntheticConfig, generate_day, generate_period

DEFAULT = SyntheticConfig()
DRIFT_START = datetime.date(2026, 2, 1)
BASE_SCENARIOS = {"compromised_terminal", "stolen_card", "account_takeover", "large_amount"}


def _clear_caches() -> None:
    synthetic._world.cache_clear()
    synthetic._fraud_week.cache_clear()


def _fraud_rate(transactions: pl.DataFrame, labels: pl.DataFrame) -> float:
    return labels.filter(pl.col("label") == 1).height / transactions.height


@pytest.fixture(scope="module")
def world() -> tuple[pl.DataFrame, pl.DataFrame]:
    """The whole default world (60 days)."""
    return generate_period(DEFAULT)


@pytest.fixture(scope="module")
def joined(world: tuple[pl.DataFrame, pl.DataFrame]) -> pl.DataFrame:
    transactions, labels = world
    return transactions.join(labels, on="transaction_id", how="left")


# --- schema ----------------------------------------------------------------------------------


def test_schema_and_dtypes_are_exact() -> None:
    transactions, labels = generate_day(DEFAULT, datetime.date(2026, 1, 5))
    assert transactions.schema == pl.Schema(TRANSACTION_SCHEMA)
    assert labels.schema == pl.Schema(LABEL_SCHEMA)
    assert transactions.height > 500
    assert transactions.select(pl.exclude("device_id").null_count().sum()).sum_horizontal().item() == 0


def test_value_domains(world: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    transactions, labels = world
    assert set(transactions["channel"].unique()) == {"pos", "ecom", "atm", "moto"}
    assert (transactions["amount"] > 0).all()
    assert ((transactions["amount"] * 100).round(6) % 1 == 0).all(), "amounts are rounded to cents"
    assert transactions["merchant_category"].str.contains(r"^\d{4}$").all()
    assert transactions["country"].str.contains(r"^[A-Z]{2}$").all()
    assert transactions["customer_id"].str.contains(r"^C\d{6}$").all()
    assert transactions["merchant_id"].str.contains(r"^M\d{5}$").all()
    assert transactions["device_id"].drop_nulls().str.contains(r"^D\d{7}$").all()
    assert (transactions["currency"] == "EUR").mean() > 0.85
    assert transactions["currency"].n_unique() > 1
    assert set(labels["label"].unique()) <= {0, 1}


def test_device_presence_by_channel(world: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    transactions, _ = world
    null_share = dict(transactions.group_by("channel").agg(pl.col("device_id").is_null().mean()).iter_rows())
    assert null_share["ecom"] == 0.0
    assert null_share["atm"] == 1.0
    assert null_share["pos"] > 0.8


# --- determinism -----------------------------------------------------------------------------


def test_same_call_twice_is_equal() -> None:
    day = datetime.date(2026, 1, 20)
    tx1, lb1 = generate_day(DEFAULT, day)
    tx2, lb2 = generate_day(DEFAULT, day)
    assert tx1.equals(tx2)
    assert lb1.equals(lb2)


def test_day_alone_equals_day_from_sequential_run() -> None:
    sequential = {d: generate_day(DEFAULT, d) for d in synthetic.iter_days(DEFAULT)}
    day10 = DEFAULT.start_date + datetime.timedelta(days=10)
    _clear_caches()
    alone_tx, alone_lb = generate_day(DEFAULT, day10)
    assert alone_tx.equals(sequential[day10][0])
    assert alone_lb.equals(sequential[day10][1])
    # Reverse order with cold caches, and a world of a different length, give the same days.
    _clear_caches()
    longer = SyntheticConfig(days=90)
    for d in sorted(sequential, reverse=True)[:5]:
        assert generate_day(longer, d)[0].equals(sequential[d][0])
        assert generate_day(longer, d)[1].equals(sequential[d][1])


def test_different_seed_gives_different_data() -> None:
    day = datetime.date(2026, 1, 3)
    tx_a, _ = generate_day(DEFAULT, day)
    tx_b, _ = generate_day(SyntheticConfig(seed=8), day)
    assert not tx_a.equals(tx_b)
    assert tx_a["amount"].sum() != tx_b["amount"].sum()


# --- ids and times ---------------------------------------------------------------------------


def test_transaction_ids_unique_across_days(world: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    transactions, labels = world
    assert transactions["transaction_id"].n_unique() == transactions.height
    assert transactions["transaction_id"].str.contains(r"^T\d{8}-\d{7}$").all()
    assert labels["transaction_id"].n_unique() == labels.height
    assert labels["transaction_id"].is_in(transactions["transaction_id"].implode()).all()


def test_event_times_inside_the_day_and_whole_seconds() -> None:
    for day in (DEFAULT.start_date, datetime.date(2026, 1, 31), DEFAULT.end_date):
        transactions, _ = generate_day(DEFAULT, day)
        start = datetime.datetime.combine(day, datetime.time())
        times = transactions["event_time"]
        assert times.min() >= start
        assert times.max() < start + datetime.timedelta(days=1)
        assert (times.dt.microsecond() == 0).all()
        assert times.is_sorted()
        assert transactions["transaction_id"].str.starts_with(f"T{day:%Y%m%d}-").all()


def test_daily_and_weekly_cycles(world: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    transactions, _ = world
    hours = transactions["event_time"].dt.hour()
    night = hours.is_between(1, 4).sum()
    afternoon = hours.is_between(14, 17).sum()
    assert night * 10 < afternoon
    weekdays = transactions["event_time"].dt.weekday()  # 1 = Monday
    assert (weekdays == 5).sum() > 1.2 * (weekdays == 7).sum()


def test_day_outside_range_raises() -> None:
    with pytest.raises(ValueError):
        generate_day(DEFAULT, DEFAULT.start_date - datetime.timedelta(days=1))
    with pytest.raises(ValueError):
        generate_day(DEFAULT, DEFAULT.start_date + datetime.timedelta(days=DEFAULT.days))


def test_invalid_config_raises() -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(drift_kinds=("no_such_drift",))
    with pytest.raises(ValueError):
        SyntheticConfig(days=0)


# --- fraud and labels ------------------------------------------------------------------------


def test_fraud_rate_in_plausible_band(world: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    assert 0.005 <= _fraud_rate(*world) <= 0.02


def test_all_base_scenarios_occur(world: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _, labels = world
    fraud = labels.filter(pl.col("label") == 1)
    assert set(fraud["fraud_scenario"].unique()) == BASE_SCENARIOS
    counts = dict(fraud["fraud_scenario"].value_counts().iter_rows())
    assert min(counts.values()) >= 10


def test_labels_after_event_with_realistic_delay(joined: pl.DataFrame) -> None:
    labelled = joined.filter(pl.col("label").is_not_null())
    delay_days = (pl.col("label_time") - pl.col("event_time")).dt.total_seconds() / 86_400
    delays = labelled.filter(pl.col("label") == 1).select(delay_days).to_series()
    assert (labelled["label_time"] > labelled["event_time"]).all()
    assert (labelled["label_time"].dt.microsecond() == 0).all()
    assert 1.5 < delays.median() < 6
    assert delays.max() <= 60
    assert delays.quantile(0.95) > 10, "long tail of late reports"


def test_disputed_genuine_labels(joined: pl.DataFrame) -> None:
    disputed = joined.filter(pl.col("label") == 0)
    assert disputed["fraud_scenario"].null_count() == disputed.height
    assert joined.filter(pl.col("label") == 1)["fraud_scenario"].null_count() == 0
    genuine = joined.filter(pl.col("label").is_null() | (pl.col("label") == 0)).height
    assert 0.0003 < disputed.height / genuine < 0.003


def test_scenarios_have_their_signature(joined: pl.DataFrame) -> None:
    by_scenario = {k[0]: v for k, v in joined.partition_by("fraud_scenario", as_dict=True).items()}
    genuine = by_scenario[None]

    ato = by_scenario["account_takeover"]
    assert (ato["channel"] == "ecom").all()
    known = genuine.select("customer_id", "device_id").unique().with_columns(known=pl.lit(True))
    assert ato.join(known, on=["customer_id", "device_id"], how="left")["known"].null_count() == ato.height
    home = genuine.group_by("customer_id").agg(pl.col("country").mode().first().alias("home"))
    assert (ato.join(home, on="customer_id")["country"] != ato.join(home, on="customer_id")["home"]).all()

    habit = genuine.group_by("customer_id").agg(pl.col("amount").median().alias("habit"))
    large = by_scenario["large_amount"].join(habit, on="customer_id")
    assert (large["amount"] / large["habit"]).median() > 8

    # Stolen cards come in bursts within minutes, including same-second ties.
    stolen = by_scenario["stolen_card"]
    assert stolen.group_by("customer_id", "event_time").len()["len"].max() >= 2
    assert stolen["amount"].median() > 1.5 * genuine["amount"].median()

    # A compromised terminal is hit on many days, not just once.
    terminal_days = (
        by_scenario["compromised_terminal"]
        .group_by("merchant_id")
        .agg(pl.col("event_time").dt.date().n_unique().alias("days"))
    )
    assert terminal_days["days"].max() >= 5


# --- drift -----------------------------------------------------------------------------------


def test_days_before_drift_identical_to_no_drift() -> None:
    drifted = SyntheticConfig(drift_start=DRIFT_START)
    for day in (DEFAULT.start_date, datetime.date(2026, 1, 15), DRIFT_START - datetime.timedelta(days=1)):
        tx_a, lb_a = generate_day(DEFAULT, day)
        tx_b, lb_b = generate_day(drifted, day)
        assert tx_a.equals(tx_b)
        assert lb_a.equals(lb_b)
    assert not generate_day(DEFAULT, DRIFT_START)[0].equals(generate_day(drifted, DRIFT_START)[0])


@pytest.mark.parametrize("kinds", [("amount_inflation",), synthetic.DRIFT_KINDS])
def test_amount_inflation_raises_mean_amount(kinds: tuple[str, ...]) -> None:
    end = DRIFT_START + datetime.timedelta(days=13)
    base_tx, _ = generate_period(DEFAULT, DRIFT_START, end)
    drift_tx, _ = generate_period(
        SyntheticConfig(drift_start=DRIFT_START, drift_kinds=kinds), DRIFT_START, end
    )
    assert drift_tx["amount"].mean() > 1.15 * base_tx["amount"].mean()
    assert drift_tx["amount"].median() > 1.1 * base_tx["amount"].median()


def test_new_fraud_pattern_raises_fraud_rate() -> None:
    end = DRIFT_START + datetime.timedelta(days=13)
    base = generate_period(DEFAULT, DRIFT_START, end)
    drifted_cfg = SyntheticConfig(drift_start=DRIFT_START, drift_kinds=("new_fraud_pattern",))
    drifted = generate_period(drifted_cfg, DRIFT_START, end)
    assert _fraud_rate(*drifted) > 2 * _fraud_rate(*base)
    new = drifted[1].filter(pl.col("fraud_scenario") == synthetic.NEW_PATTERN_SCENARIO)
    new_tx = drifted[0].join(new, on="transaction_id", how="semi")
    assert new_tx.height > 100
    assert (new_tx["channel"] == "ecom").all()
    assert new_tx["merchant_category"].n_unique() == 1
    assert new_tx["amount"].max() < 5
    # ... and never before the drift starts.
    _, before = generate_period(drifted_cfg, DEFAULT.start_date, DRIFT_START - datetime.timedelta(days=1))
    assert synthetic.NEW_PATTERN_SCENARIO not in before["fraud_scenario"].to_list()


def test_merchant_mix_shift_moves_traffic() -> None:
    end = DRIFT_START + datetime.timedelta(days=13)
    base_tx, _ = generate_period(DEFAULT, DRIFT_START, end)
    cfg = SyntheticConfig(drift_start=DRIFT_START, drift_kinds=("merchant_mix_shift",))
    drift_tx, _ = generate_period(cfg, DRIFT_START, end)
    shares = (
        base_tx["merchant_category"]
        .value_counts(normalize=True)
        .join(drift_tx["merchant_category"].value_counts(normalize=True), on="merchant_category", how="full")
        .fill_null(0.0)
    )
    total_variation = (shares["proportion"] - shares["proportion_right"]).abs().sum() / 2
    assert total_variation > 0.1
    assert (drift_tx["channel"] == "ecom").mean() > (base_tx["channel"] == "ecom").mean() + 0.05


def test_larger_world_scales() -> None:
    big, _ = generate_day(SyntheticConfig(n_customers=5000, n_merchants=1000), datetime.date(2026, 1, 9))
    assert big.height > 5000
    assert big["customer_id"].n_unique() > 2000
