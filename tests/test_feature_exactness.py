"""The dbt feature models against an independent computation (tests/feature_oracle.py), value for value.

Two datasets: a hand-made one built around the edges of the spec semantics (ties at the same
second, window boundaries, first events, 29/30-day revisits, null and repeated devices, labels
known just before / at / after the start of a day, transactions exactly label_delay_days old, a
merchant without history, ...) and a generated synthetic one. Both are loaded into real DuckDB
files and built with the real dbt project; the builds run concurrently to keep the module fast.
Also: an incremental one-day rebuild equals a full build over the changed data, re-running a day
is idempotent, and the training set holds exactly the mature transactions with the right labels.
"""

from __future__ import annotations

import datetime as dt
import random
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pytest

from mlp_platform.data.schema import LABEL_SCHEMA, TRANSACTION_SCHEMA
from mlp_platform.data.synthetic import SyntheticConfig, generate_period
from mlp_platform.features.spec import Feature, FeatureSpec, FeatureView, default_spec
from tests.feature_oracle import UnknownFeatureKind, compute_features, expected_training_set
from tests.featurelib import feature_mismatches, load_raw, read_table, run_dbt

SPEC = default_spec()
FEATURES = SPEC.feature_names
INT_FEATURES = {f.name for f in SPEC.features if f.dtype == "int"}
DEFAULT_DELAY = 7  # dbt_project.yml's label_delay_days (the hand-made build passes no vars)
MATURITY = 14  # dbt_project.yml's label_maturity_days
SYNTH_DELAY = 4  # passed explicitly to the synthetic builds: the var must be honoured
HANDMADE_AS_OF = dt.datetime(2024, 4, 9, 12, 0, 0)
BATCH = [f.name for f in SPEC.features if f.mode == "batch"]
NON_BATCH = [name for name in FEATURES if name not in BATCH]
SYNTH = SyntheticConfig(seed=11, start_date=dt.date(2026, 1, 1), days=45, n_customers=120, n_merchants=40)
CHANGED_DAY = dt.date(2026, 1, 31)
FEATURE_VIEW_MODELS = ("fv_customer_velocity", "fv_merchant_velocity", "fv_merchant_risk")


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


# --- the hand-made dataset -----------------------------------------------------------------------


def _handmade() -> tuple[pl.DataFrame, pl.DataFrame]:
    tx: list[dict] = []
    lb: list[dict] = []

    def t(tid, when, customer, merchant, amount, device=None, channel="pos"):
        tx.append(
            {
                "transaction_id": tid,
                "event_time": ts(when) if isinstance(when, str) else when,
                "customer_id": customer,
                "merchant_id": merchant,
                "amount": float(amount),
                "currency": "EUR",
                "channel": channel,
                "country": "DE",
                "merchant_category": "5411",
                "device_id": device,
            }
        )

    def label(tid, when, value=1, scenario="stolen_card"):
        lb.append(
            {
                "transaction_id": tid,
                "label": value,
                "label_time": ts(when),
                "fraud_scenario": scenario if value == 1 else None,
            }
        )

    # Ties at the same second for one customer, ids whose string order differs from their numeric
    # order ("tie_10" < "tie_11" < "tie_9"); two of them at the same merchant.
    t("tie_0", "2024-03-10 11:30:00", "C_TIE", "M_A", 7, "DV1")
    t("tie_9", "2024-03-10 12:00:00", "C_TIE", "M_A", 10, "DV1")
    t("tie_10", "2024-03-10 12:00:00", "C_TIE", "M_B", 30, "DV1")
    t("tie_11", "2024-03-10 12:00:00", "C_TIE", "M_A", 5)
    t("tie_12", "2024-03-10 12:00:01", "C_TIE", "M_C", 1, "DV2")
    # Time before id: the microsecond decides, not the id.
    t("us_a", "2024-03-12 08:00:00.000001", "C_TIE", "M_A", 11, "DV2")
    t("us_b", "2024-03-12 08:00:00.000000", "C_TIE", "M_C", 12, "DV2")

    # Window boundaries around T = 2024-04-05 12:00:00: exactly T - w (outside) and 1 s inside.
    t("b_30d_out", "2024-03-06 12:00:00", "C_BND", "M_BND", 1000, "DV3")
    t("b_30d_in", "2024-03-06 12:00:01", "C_BND", "M_BND", 2, "DV3")
    t("b_7d_out", "2024-03-29 12:00:00", "C_BND", "M_BND", 300, "DV4")
    t("b_7d_in", "2024-03-29 12:00:01", "C_BND", "M_X2", 4)
    t("b_1d_out", "2024-04-04 12:00:00", "C_BND", "M_BND", 50)
    t("b_1d_in", "2024-04-04 12:00:01", "C_BND", "M_X1", 6, "DV4")
    t("b_1h_out", "2024-04-05 11:00:00", "C_BND", "M_BND", 70)
    t("b_1h_in", "2024-04-05 11:00:01", "C_BND", "M_BND", 8, "DV3")
    t("b_anchor", "2024-04-05 12:00:00", "C_BND", "M_BND", 9, "DV3")
    # The same boundaries for the merchant, from another customer.
    t("mb_1d_out", "2024-04-04 12:00:00", "C_MB", "M_BND", 15)
    t("mb_1d_in", "2024-04-04 12:00:01", "C_MB", "M_BND", 16)
    # Microsecond boundaries: 1 day minus 1 us (inside), 1 day plus 1 us (outside).
    t("u1", "2024-03-20 09:00:00.000001", "C_US", "M_C", 3)
    t("u2", "2024-03-21 09:00:00.000000", "C_US", "M_C", 4)
    t("u3", "2024-03-22 09:00:00.000001", "C_US", "M_C", 5)

    # Revisits: exactly 30 days later (outside the lookback: first time again, no previous event),
    # 29 days later (known merchant and device), 30 days minus 1 second (previous event inside).
    t("g30a", "2024-03-02 10:00:00", "C_GAP30", "M_G", 20, "DG1")
    t("g30b", "2024-04-01 10:00:00", "C_GAP30", "M_G", 21, "DG1")
    t("g29a", "2024-03-02 10:00:00", "C_GAP29", "M_H", 22, "DG2")
    t("g29b", "2024-03-31 10:00:00", "C_GAP29", "M_H", 23, "DG2")
    t("gs1", "2024-03-05 08:00:00", "C_GAPS", "M_G", 24)
    t("gs2", "2024-04-04 07:59:59", "C_GAPS", "M_G", 25)

    # Devices: repeated, null in between, back after more than 30 days; DV5 shared with C_TIE.
    t("d1", "2024-03-01 09:00:00", "C_DEV", "M_A", 31, "DV5", "ecom")
    t("d2", "2024-03-01 10:00:00", "C_DEV", "M_A", 32, "DV5", "ecom")
    t("d3", "2024-03-02 10:00:00", "C_DEV", "M_B", 33)
    t("d4", "2024-03-03 10:00:00", "C_DEV", "M_B", 34, "DV6", "ecom")
    t("d5", "2024-03-04 10:00:00", "C_DEV", "M_C", 35)
    t("d6", "2024-04-02 10:00:00", "C_DEV", "M_C", 36, "DV5", "ecom")
    t("d7", "2024-04-03 10:00:00", "C_DEV", "M_A", 37, "DV6", "ecom")
    t("d8", "2024-04-03 10:00:00", "C_DEV", "M_A", 38, "DV5", "ecom")
    t("tie_dv5", "2024-03-15 10:00:00", "C_TIE", "M_B", 39, "DV5", "ecom")

    # Merchant risk: frauds of 2024-03-10 whose label is known before / exactly at / after the
    # start of 2024-03-18, genuine ones (with and without a label=0 row), one first confirmed
    # genuine, then reported as fraud later, and (at M_DUP) a fraud with two label=1 rows.
    t("r1", "2024-03-10 09:00:00", "C_R1", "M_RISK", 100)
    t("r2", "2024-03-10 10:00:00", "C_R2", "M_RISK", 101)
    t("r3", "2024-03-10 11:00:00", "C_R3", "M_RISK", 102)
    t("r4", "2024-03-10 12:00:00", "C_R4", "M_RISK", 103)
    t("r5", "2024-03-10 13:00:00", "C_R5", "M_RISK", 104)
    t("r7", "2024-03-10 15:00:00", "C_R7", "M_RISK", 106)
    t("r6", "2024-03-10 14:00:00", "C_R6", "M_DUP", 105)  # fraud with two label=1 rows
    t("r6b", "2024-03-10 14:30:00", "C_R6", "M_DUP", 107)
    t("dup_probe", "2024-03-18 12:00:00", "C_RP", "M_DUP", 108)
    label("r1", "2024-03-17 23:59:59")
    label("r2", "2024-03-18 00:00:00")
    label("r3", "2024-03-18 00:00:00.000001")
    label("r5", "2024-03-11 09:00:00", 0)
    label("r6", "2024-03-12 09:00:00")
    label("r6", "2024-03-13 09:00:00")
    label("r7", "2024-03-11 09:00:00", 0)
    label("r7", "2024-03-19 12:00:00")
    for day in range(17, 22):  # probes: one transaction a day at M_RISK
        t(f"rp_{day}", f"2024-03-{day} 12:00:00", "C_RP", "M_RISK", 50 + day)
    t("rp_0409", "2024-04-09 23:59:59", "C_RP", "M_RISK", 10)

    # Transactions exactly on the whole-day edges of the delayed windows (label delay 7 days).
    t("x0", "2024-03-19 00:00:00", "C_X", "M_DELAY", 40)
    t("x1", "2024-03-20 00:00:00", "C_X", "M_DELAY", 41)
    t("x2", "2024-03-20 10:00:00", "C_X", "M_DELAY", 42)
    label("x1", "2024-03-21 00:00:00", scenario="compromised_terminal")
    t("xp1", "2024-03-27 12:00:00", "C_XP", "M_DELAY", 43)
    t("xp2", "2024-03-28 12:00:00", "C_XP", "M_DELAY", 44)
    t("xp3", "2024-04-02 12:00:00", "C_XP", "M_DELAY", 45)  # x0 exactly 7 + 7 days old

    # A merchant without any history; a customer whose mean is 0 (ratio undefined).
    t("new_merchant", "2024-04-08 15:00:00", "C_NEW", "M_NEW", 12)
    t("zero", "2024-03-25 15:00:00", "C_ZERO", "M_A", 0)
    t("zero_2", "2024-03-25 15:00:01", "C_ZERO", "M_A", 0)

    # Calendar: night and weekend boundaries (2024-03-02 is a Saturday).
    for i, when in enumerate(
        [
            "2024-03-02 21:59:59",
            "2024-03-02 22:00:00",
            "2024-03-03 05:59:59",
            "2024-03-04 00:00:00",
            "2024-03-04 06:00:00",
            "2024-03-08 23:59:59",
            "2024-03-09 00:00:00",
            "2024-03-05 03:00:00",
        ]
    ):
        t(f"clock_{i}", when, "C_CLOCK", "M_CLOCK", 1 + i)

    # Training set: maturity exactly reached / 1 s short; fraud known exactly at maturity / 1 s late.
    t("m_at", "2024-03-26 12:00:00", "C_M", "M_T", 60)
    t("m_late", "2024-03-26 12:00:01", "C_M", "M_T", 61)
    t("m1", "2024-03-05 10:00:00", "C_M", "M_T", 62)
    t("m2", "2024-03-05 11:00:00", "C_M", "M_T", 63)
    t("m3", "2024-03-05 12:00:00", "C_M", "M_T", 64)
    t("m4", "2024-03-05 13:00:00", "C_M", "M_T", 65)
    label("m_at", "2024-04-09 12:00:00")
    label("m1", "2024-03-19 10:00:00")
    label("m2", "2024-03-19 11:00:01")
    label("m3", "2024-03-06 12:00:00", 0)
    label("m4", "2024-03-06 13:00:00", 0)
    label("m4", "2024-03-25 13:00:00")

    # Busy background traffic on a 10-minute grid (many ties per customer and merchant).
    # On a 10-minute grid from midnight, so some events sit exactly on day edges. Labels become
    # known at the event, days or hours later, or exactly at a later midnight.
    rng = random.Random(5)
    start = dt.datetime(2024, 3, 1, 0, 0)
    for i in range(400):
        when = start + dt.timedelta(minutes=10 * rng.randrange(40 * 144))
        tid = f"bg_{i}"
        t(
            tid,
            when,
            f"C_BG{rng.randrange(4)}",
            f"M_BG{rng.randrange(3)}",
            round(rng.uniform(1, 500), 2),
            rng.choice([None, "DB1", "DB2", "DB3"]),
        )
        if rng.random() < 0.15:
            known = when + dt.timedelta(days=rng.choice([0, 1, 6, 7, 8]), hours=rng.choice([0, 14]))
            if rng.random() < 0.3:
                known = dt.datetime.combine(when.date() + dt.timedelta(days=rng.choice([1, 7, 8])), dt.time())
            label(tid, known.isoformat(sep=" "), 1)

    return pl.DataFrame(tx, schema=TRANSACTION_SCHEMA), pl.DataFrame(lb, schema=LABEL_SCHEMA)


# --- the changed day of the synthetic dataset --------------------------------------------------


def _change_day(tx: pl.DataFrame, lb: pl.DataFrame, day: dt.date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Alter ``day``: amounts, merchants and devices of some transactions, drop some (with their
    labels), add a same-second tie and a new fraud label."""
    on_day = tx.filter(pl.col("event_time").dt.date() == day).with_row_index("_i")
    n = pl.col("_i")
    changed = on_day.with_columns(
        amount=pl.when(n % 7 == 0).then((pl.col("amount") * 2.5 + 1).round(2)).otherwise("amount"),
        merchant_id=pl.when(n % 11 == 0).then(pl.lit("M00003")).otherwise("merchant_id"),
        device_id=pl.when(n % 5 == 0).then(pl.lit(None, pl.String)).otherwise("device_id"),
    ).filter(n % 13 != 6)
    first = changed.row(0, named=True)
    extra = pl.DataFrame(
        [{**first, "transaction_id": first["transaction_id"] + "-tie", "amount": 999.0}],
        schema=changed.schema,
    )
    changed = pl.concat([changed, extra]).drop("_i")
    others = tx.filter(pl.col("event_time").dt.date() != day)
    new_tx = pl.concat([others, changed])
    kept_ids = set(new_tx["transaction_id"])
    new_label = pl.DataFrame(
        [
            {
                "transaction_id": changed["transaction_id"][3],
                "label": 1,
                "label_time": dt.datetime.combine(day, dt.time(23, 0)),
                "fraud_scenario": "stolen_card",
            }
        ],
        schema=LABEL_SCHEMA,
    )
    new_lb = pl.concat([lb.filter(pl.col("transaction_id").is_in(kept_ids)), new_label])
    return new_tx, new_lb


# --- fixtures: all dbt builds of the module ------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("exactness")
    hm_tx, hm_lb = _handmade()
    syn_tx, syn_lb = generate_period(SYNTH)
    chg_tx, chg_lb = _change_day(syn_tx, syn_lb, CHANGED_DAY)
    paths = {name: (root / f"{name}.duckdb", root / name) for name in ("handmade", "synthetic", "changed")}
    load_raw(paths["handmade"][0], hm_tx, hm_lb)
    load_raw(paths["synthetic"][0], syn_tx, syn_lb)
    load_raw(paths["changed"][0], chg_tx, chg_lb)

    synth_vars = {"label_delay_days": SYNTH_DELAY}
    # The hand-made build uses `run`, not `build`: its training set is checked by the tests below
    # (a failing dbt data test would abort the whole fixture); the synthetic ones run dbt's tests too.
    jobs = {
        "handmade": ((*paths["handmade"], "run"), {"vars": {"as_of": str(HANDMADE_AS_OF)}}),
        "synthetic": ((*paths["synthetic"], "build"), {"vars": synth_vars}),
        "changed": ((*paths["changed"], "build"), {"vars": synth_vars}),
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_dbt, *args, **kwargs) for name, (args, kwargs) in jobs.items()}
        for future in futures.values():
            future.result()

    out = {
        "handmade": (hm_tx, hm_lb),
        "synthetic": (syn_tx, syn_lb),
        "changed": (chg_tx, chg_lb),
        "paths": paths,
        "tables": {
            name: read_table(path, "features.transaction_features") for name, (path, _) in paths.items()
        },
        "training": {name: read_table(path, "training.training_set") for name, (path, _) in paths.items()},
    }

    # Incremental: replace CHANGED_DAY's raw data in the synthetic warehouse, rebuild that day only,
    # then rebuild it once more.
    db, tmp = paths["synthetic"]
    day_vars = {**synth_vars, "min_day": str(CHANGED_DAY), "max_day": str(CHANGED_DAY)}
    day_tx = chg_tx.filter(pl.col("event_time").dt.date() == CHANGED_DAY)
    load_raw(
        db,
        day_tx,
        chg_lb.filter(pl.col("transaction_id").is_in(day_tx["transaction_id"].implode())),
        CHANGED_DAY,
        CHANGED_DAY + dt.timedelta(days=1),
    )
    run_dbt(db, tmp, "build", vars=day_vars)
    out["incremental"] = read_table(db, "features.transaction_features")
    out["incremental_views"] = {m: read_table(db, f"features.{m}") for m in FEATURE_VIEW_MODELS}
    run_dbt(db, tmp, "build", vars=day_vars)
    out["rerun"] = read_table(db, "features.transaction_features")
    out["rerun_views"] = {m: read_table(db, f"features.{m}") for m in FEATURE_VIEW_MODELS}
    return out


def _oracle(data: tuple[pl.DataFrame, pl.DataFrame], delay: int) -> pl.DataFrame:
    return compute_features(data[0], data[1], SPEC, delay)


def _assert_match(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    problems = feature_mismatches(actual, expected, FEATURES, INT_FEATURES)
    assert not problems, "dbt features differ from the oracle:\n" + "\n".join(problems)


def _row(frame: pl.DataFrame, tid: str) -> dict:
    rows = frame.filter(pl.col("transaction_id") == tid).to_dicts()
    assert len(rows) == 1, f"{tid}: {len(rows)} rows"
    return rows[0]


# --- the oracle itself: hand-checked values on the edges -------------------------------------------


@pytest.fixture(scope="module")
def handmade_oracle() -> pl.DataFrame:
    tx, lb = _handmade()
    return compute_features(tx, lb, SPEC, DEFAULT_DELAY)


def test_oracle_hand_checked_edges(handmade_oracle: pl.DataFrame) -> None:
    """The oracle's own reading of the spec, pinned on cases worked out by hand."""
    o = handmade_oracle
    # Ties: order tie_0, tie_10, tie_11, tie_9 (string order of ids at the same second).
    assert [_row(o, i)["customer_txn_count_1h"] for i in ("tie_0", "tie_10", "tie_11", "tie_9")] == [
        1,
        2,
        3,
        4,
    ]
    assert _row(o, "tie_10")["customer_amount_max_1h"] == 30.0
    assert _row(o, "tie_11")["customer_amount_sum_1h"] == 7 + 30 + 5
    assert _row(o, "tie_11")["customer_distinct_merchant_count_1d"] == 2
    assert _row(o, "tie_11")["customer_first_time_merchant"] == 0  # M_A seen at tie_0
    assert _row(o, "tie_10")["customer_first_time_merchant"] == 1
    assert _row(o, "tie_9")["customer_seconds_since_previous"] == 0.0
    assert _row(o, "tie_11")["customer_first_time_device"] == 0  # null device
    assert _row(o, "tie_11")["merchant_txn_count_1d"] == 2  # tie_0, tie_11 (tie_9 comes later)
    assert _row(o, "us_b")["customer_txn_count_1h"] == 1 and _row(o, "us_a")["customer_txn_count_1h"] == 2
    # Boundaries: exactly T - w is outside, 1 s inside is in.
    anchor = _row(o, "b_anchor")
    assert [anchor[f"customer_txn_count_{w}"] for w in ("1h", "1d", "7d", "30d")] == [2, 4, 6, 8]
    assert anchor["customer_amount_max_30d"] == 300.0  # 1000 at exactly T - 30d is outside
    assert anchor["customer_amount_sum_1h"] == 8 + 9
    assert anchor["customer_distinct_merchant_count_1d"] == 2
    assert anchor["customer_distinct_merchant_count_7d"] == 3
    assert anchor["merchant_txn_count_1d"] == 4  # mb_1d_in, b_1h_out, b_1h_in, b_anchor
    assert anchor["customer_first_time_device"] == 0
    assert _row(o, "u2")["customer_txn_count_1d"] == 2 and _row(o, "u3")["customer_txn_count_1d"] == 1
    # First events and revisits.
    first = _row(o, "g30a")
    assert first["customer_txn_count_30d"] == 1 and first["customer_seconds_since_previous"] is None
    assert first["customer_first_time_merchant"] == 1 and first["customer_first_time_device"] == 1
    g30b = _row(o, "g30b")
    assert (g30b["customer_first_time_merchant"], g30b["customer_first_time_device"]) == (1, 1)
    assert g30b["customer_seconds_since_previous"] is None and g30b["customer_txn_count_30d"] == 1
    g29b = _row(o, "g29b")
    assert (g29b["customer_first_time_merchant"], g29b["customer_first_time_device"]) == (0, 0)
    assert g29b["customer_seconds_since_previous"] == 29 * 86400.0
    assert _row(o, "gs2")["customer_seconds_since_previous"] == 30 * 86400.0 - 1
    assert [_row(o, f"d{i}")["customer_first_time_device"] for i in range(1, 9)] == [1, 0, 0, 1, 0, 1, 1, 0]
    assert _row(o, "tie_dv5")["customer_first_time_device"] == 1  # per customer
    # Merchant risk as of the start of the day, delay 7 days.
    rate = {d: _row(o, f"rp_{d}")["merchant_fraud_rate_7d"] for d in range(17, 22)}
    assert rate[17] == 0.0  # r* are 6 days 9+ hours old at 2024-03-17 00:00
    assert rate[18] == pytest.approx(2 / 6)  # r1, r2 (known exactly at 00:00) of r1-r5, r7
    assert rate[19] == pytest.approx(3 / 6)  # + r3
    assert rate[20] == pytest.approx(4 / 6)  # + r7 (fraud label 2024-03-19 12:00)
    assert _row(o, "rp_18")["merchant_fraud_rate_1d"] == pytest.approx(2 / 6)
    assert _row(o, "rp_19")["merchant_fraud_rate_1d"] == 0.0  # 2024-03-11 is empty
    assert _row(o, "rp_0409")["merchant_fraud_rate_30d"] == pytest.approx(4 / 11)  # r1-r5, r7, rp_17-rp_21
    assert _row(o, "dup_probe")["merchant_fraud_rate_7d"] == 0.5  # r6 counts once
    # Whole days: as of 2024-03-27 00:00 the 1d window is the day 2024-03-19 (x0), so x1 at exactly
    # 2024-03-20 00:00 (7 days old) is outside; it is inside the next day's window with x2.
    assert _row(o, "xp1")["merchant_fraud_rate_1d"] == 0.0  # x0 only
    assert _row(o, "xp1")["merchant_fraud_rate_7d"] == 0.0  # x0 only
    assert _row(o, "xp2")["merchant_fraud_rate_1d"] == 0.5  # x1 (fraud), x2
    assert _row(o, "xp3")["merchant_fraud_rate_7d"] == pytest.approx(1 / 3)  # x0 on the closed start, x1, x2
    assert _row(o, "xp3")["merchant_fraud_rate_30d"] == pytest.approx(1 / 3)
    new = _row(o, "new_merchant")
    assert new["merchant_txn_count_30d"] == 1 and new["merchant_fraud_rate_30d"] == 0.0
    assert _row(o, "zero_2")["customer_amount_to_mean_30d"] is None
    assert _row(o, "b_anchor")["customer_amount_to_mean_30d"] == pytest.approx(
        9 / (sum([2, 300, 4, 50, 6, 70, 8, 9]) / 8)
    )
    # Calendar.
    clock = [_row(o, f"clock_{i}") for i in range(8)]
    assert [c["hour_of_day"] for c in clock] == [21, 22, 5, 0, 6, 23, 0, 3]
    assert [c["is_night"] for c in clock] == [0, 1, 1, 1, 0, 1, 1, 1]
    assert [c["is_weekend"] for c in clock] == [1, 1, 1, 0, 0, 0, 1, 0]


def test_oracle_dispatches_on_kind_and_refuses_unknown_kinds() -> None:
    tx, lb = _handmade()
    extra = Feature(
        "merchant_amount_sum_7d",
        view="extra",
        entity="merchant",
        mode="streaming",
        kind="window_agg",
        dtype="float",
        column="amount",
        agg="sum",
        window="7d",
        window_seconds=7 * 86400,
    )
    night = Feature(
        "early",
        view="ctx",
        entity="transaction",
        mode="on_demand",
        kind="is_night",
        dtype="int",
        params={"start_hour": 1, "end_hour": 5},
    )
    spec = FeatureSpec(
        1,
        SPEC.entities,
        (
            FeatureView("extra", "merchant", "streaming", "", 30 * 86400, (extra,)),
            FeatureView("ctx", "transaction", "on_demand", "", None, (night,)),
        ),
    )
    out = compute_features(tx, lb, spec, DEFAULT_DELAY)
    assert out.columns == ["transaction_id", "merchant_amount_sum_7d", "early"]
    assert _row(out, "tie_11")["merchant_amount_sum_7d"] == 7 + 5
    assert [_row(out, f"clock_{i}")["early"] for i in (7, 2, 3, 1)] == [1, 0, 0, 0]  # 1 <= hour < 5
    bogus = Feature("bogus", view="ctx", entity="transaction", mode="on_demand", kind="bogus", dtype="int")
    with pytest.raises(UnknownFeatureKind):
        compute_features(
            tx,
            lb,
            FeatureSpec(
                1, SPEC.entities, (FeatureView("ctx", "transaction", "on_demand", "", None, (bogus,)),)
            ),
            7,
        )


# --- dbt against the oracle --------------------------------------------------------------------------


def test_feature_columns_in_spec_order(built) -> None:
    for name, table in built["tables"].items():
        columns = table.columns
        start = columns.index(FEATURES[0])
        assert columns[start : start + len(FEATURES)] == FEATURES, name
        assert not set(columns[start + len(FEATURES) :]) & set(FEATURES)
        for f in SPEC.features:
            assert table.schema[f.name] == (pl.Int64 if f.dtype == "int" else pl.Float64), (name, f.name)
        assert table["feature_spec_hash"].unique().to_list() == [SPEC.spec_hash]


def test_handmade_features_match_oracle(built) -> None:
    """Every feature of every hand-made transaction, except the label rates of the few rows pinned
    as known discrepancies below (their other features are compared here too)."""
    actual, expected = built["tables"]["handmade"], _oracle(built["handmade"], DEFAULT_DELAY)
    problems = feature_mismatches(actual, expected, NON_BATCH, INT_FEATURES)
    problems += feature_mismatches(actual, expected, BATCH, INT_FEATURES)
    assert not problems, "dbt features differ from the oracle:\n" + "\n".join(problems)


def _assert_known_rows_match(built, ids: list[str]) -> None:
    actual, expected = built["tables"]["handmade"], _oracle(built["handmade"], DEFAULT_DELAY)
    rows = pl.col("transaction_id").is_in(ids)
    problems = feature_mismatches(actual.filter(rows), expected.filter(rows), BATCH, INT_FEATURES)
    assert not problems, "\n".join(problems)


def test_label_rate_counts_each_fraud_once(built) -> None:
    _assert_known_rows_match(built, ["dup_probe"])


def test_label_rate_window_is_whole_days_before_the_delay(built) -> None:
    """A transaction at exactly A - delay (midnight) is outside, one at A - delay - w is inside."""
    _assert_known_rows_match(built, ["xp1", "xp2", "xp3"])


def test_synthetic_features_match_oracle(built) -> None:
    _assert_match(built["tables"]["synthetic"], _oracle(built["synthetic"], SYNTH_DELAY))


def test_changed_full_build_matches_oracle(built) -> None:
    _assert_match(built["tables"]["changed"], _oracle(built["changed"], SYNTH_DELAY))


def test_incremental_day_rebuild_equals_full_build(built) -> None:
    day = pl.col("event_date") == CHANGED_DAY
    before, after, full = built["tables"]["synthetic"], built["incremental"], built["tables"]["changed"]
    # The change is real: the day's rows differ before and after.
    assert feature_mismatches(after.filter(day), before.filter(day), FEATURES, INT_FEATURES)
    # The rebuilt day equals the full build over the changed data (and the oracle over it).
    problems = feature_mismatches(after.filter(day), full.filter(day), FEATURES, INT_FEATURES)
    assert not problems, "\n".join(problems)
    expected = _oracle(built["changed"], SYNTH_DELAY).filter(
        pl.col("transaction_id").is_in(full.filter(day)["transaction_id"].implode())
    )
    _assert_match(after.filter(day), expected)
    # Every other day is left exactly as it was.
    assert after.filter(~day).sort("transaction_id").equals(before.filter(~day).sort("transaction_id"))


def test_rerunning_a_day_is_idempotent(built) -> None:
    once, twice = built["incremental"], built["rerun"]
    assert twice.height == once.height
    assert (
        twice.group_by("event_date")
        .len()
        .sort("event_date")
        .equals(once.group_by("event_date").len().sort("event_date"))
    )
    assert twice.sort("transaction_id").equals(once.sort("transaction_id"))
    for model, table in built["incremental_views"].items():
        again = built["rerun_views"][model]
        keys = [c for c in ("transaction_id", "merchant_id", "as_of_date") if c in table.columns]
        assert again.height == table.height > 0, model
        assert again.sort(keys).equals(table.sort(keys)), model


# --- the training set --------------------------------------------------------------------------------


def _assert_training(training: pl.DataFrame, expected: pl.DataFrame, features: pl.DataFrame) -> None:
    """The training set's distinct rows against the expectation (row multiplicity: see below)."""
    training = training.unique("transaction_id", keep="first")
    got = training.select("transaction_id", pl.col("label").cast(pl.Int64)).sort("transaction_id")
    want = expected.sort("transaction_id")
    missing = set(want["transaction_id"]) - set(got["transaction_id"])
    extra = set(got["transaction_id"]) - set(want["transaction_id"])
    assert not missing and not extra, f"missing {sorted(missing)[:10]}, unexpected {sorted(extra)[:10]}"
    wrong = got.join(want, on="transaction_id", suffix="_expected").filter(
        pl.col("label") != pl.col("label_expected")
    )
    assert wrong.height == 0, wrong
    # Its features are the feature table's.
    joined = training.select("transaction_id", *FEATURES)
    problems = feature_mismatches(
        joined,
        features.filter(pl.col("transaction_id").is_in(joined["transaction_id"].implode())),
        FEATURES,
        INT_FEATURES,
        rel_tol=0.0,
    )
    assert not problems, problems


def test_training_set_handmade_explicit_as_of(built) -> None:
    tx, lb = built["handmade"]
    expected = expected_training_set(tx, lb, MATURITY, HANDMADE_AS_OF)
    assert {"m_at", "m1", "m2", "m3", "m4"} <= set(expected["transaction_id"])
    assert "m_late" not in set(expected["transaction_id"])
    labels = dict(expected.iter_rows())
    assert (labels["m_at"], labels["m1"], labels["m2"], labels["m3"], labels["m4"]) == (1, 1, 0, 0, 0)
    _assert_training(built["training"]["handmade"], expected, built["tables"]["handmade"])


def test_training_set_one_row_per_transaction_with_explicit_as_of(built) -> None:
    training = built["training"]["handmade"]
    assert training.height == training["transaction_id"].n_unique()


def test_training_set_synthetic_default_as_of(built) -> None:
    tx, lb = built["changed"]
    expected = expected_training_set(tx, lb, MATURITY, tx["event_time"].max())
    assert 0 < expected.height < tx.height and expected["label"].sum() > 0
    training = built["training"]["changed"]
    assert training.height == training["transaction_id"].n_unique() == expected.height
    _assert_training(training, expected, built["tables"]["changed"])
