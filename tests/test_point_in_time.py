"""Leakage: the features of a transaction may only depend on what was known at its decision time.

A synthetic dataset is built twice with the real dbt project: as generated, and with its future
rewritten after a cut time t (t is the instant of an actual transaction, mid-period): a third of
the transactions with event_time > t dropped, the others given other amounts, merchants, customers
and devices; labels with label_time > t dropped or flipped, new fraud labels known after t for
earlier transactions, a same-instant tie at t with a greater transaction_id, and the label
metadata fraud_scenario scrambled everywhere. The features of every transaction with
event_time <= t must be identical in both builds. Label metadata must never reach a feature:
neither the compiled SQL of the feature models nor the spec loader let it.
"""

from __future__ import annotations

import copy
import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pytest
import yaml

from mlp_platform.data.schema import LABEL_METADATA_COLUMNS, LABEL_SCHEMA
from mlp_platform.data.synthetic import SyntheticConfig, generate_period
from mlp_platform.features.spec import SPEC_PATH, SpecError, default_spec, parse_spec
from tests.feature_oracle import compute_features
from tests.featurelib import compiled_sql, feature_mismatches, load_raw, read_table, run_dbt

SPEC = default_spec()
FEATURES = SPEC.feature_names
INT_FEATURES = {f.name for f in SPEC.features if f.dtype == "int"}
CONFIG = SyntheticConfig(seed=23, start_date=dt.date(2026, 3, 2), days=40, n_customers=100, n_merchants=30)
CUT_DAY = dt.date(2026, 3, 27)
FEATURE_MODELS = ("fv_customer_velocity", "fv_merchant_velocity", "fv_merchant_risk", "transaction_features")
DELAY = 2  # short label delay: labels known shortly after t would matter within the test period


def _cut_time(tx: pl.DataFrame) -> dt.datetime:
    """The event_time of the transaction closest to 13:37 on CUT_DAY (an actual event instant)."""
    target = dt.datetime.combine(CUT_DAY, dt.time(13, 37))
    return tx.sort((pl.col("event_time") - target).abs()).row(0, named=True)["event_time"]


def _rewrite_future(tx: pl.DataFrame, lb: pl.DataFrame, t: dt.datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Everything after t dropped or changed; everything up to t (but fraud_scenario) kept."""
    merchants = sorted(tx["merchant_id"].unique())
    customers = sorted(tx["customer_id"].unique())
    after = pl.col("event_time") > t
    rotate = {m: merchants[(i + 1) % len(merchants)] for i, m in enumerate(merchants)}
    shift = {c: customers[(i + 7) % len(customers)] for i, c in enumerate(customers)}
    new_tx = tx.with_columns(
        amount=pl.when(after).then(pl.col("amount") * 3 + 1).otherwise("amount"),
        merchant_id=pl.when(after).then(pl.col("merchant_id").replace(rotate)).otherwise("merchant_id"),
        customer_id=pl.when(after & (pl.col("amount") > 50))
        .then(pl.col("customer_id").replace(shift))
        .otherwise("customer_id"),
        device_id=pl.when(after).then(pl.lit("DFUTURE")).otherwise("device_id"),
    )
    # A tie at exactly t that comes after the transaction at t in (event_time, transaction_id) order.
    at_t = tx.filter(pl.col("event_time") == t).sort("transaction_id").row(-1, named=True)
    tie = pl.DataFrame(
        [{**at_t, "transaction_id": at_t["transaction_id"] + "~tie", "amount": 5000.0}], schema=tx.schema
    )
    dropped = new_tx.filter(after).sort("transaction_id").gather_every(3)["transaction_id"]
    new_tx = pl.concat([new_tx.filter(~pl.col("transaction_id").is_in(dropped.implode())), tie])

    known_after = pl.col("label_time") > t
    flipped = (
        lb.filter(~pl.col("transaction_id").is_in(dropped.implode()))
        .sort("transaction_id", "label_time")
        .with_row_index("_i")
        .filter(~known_after | (pl.col("_i") % 2 == 0))  # drop half of the labels known after t
        .drop("_i")
        .with_columns(  # flip the other half
            label=pl.when(known_after).then(1 - pl.col("label")).otherwise("label").cast(pl.Int8),
            fraud_scenario=pl.lit("scrambled"),
        )
    )
    # New fraud labels, known after t, for unlabelled transactions before t (and for the tie).
    labelled = set(lb["transaction_id"])
    before = tx.filter(~after & ~pl.col("transaction_id").is_in(list(labelled))).sort("event_time")
    extra = before.gather_every(5).select(
        "transaction_id",
        label=pl.lit(1, pl.Int8),
        label_time=pl.max_horizontal(pl.col("event_time"), pl.lit(t)) + pl.duration(hours=1),
        fraud_scenario=pl.lit("large_amount"),
    )
    tie_label = pl.DataFrame(
        [
            {
                "transaction_id": at_t["transaction_id"] + "~tie",
                "label": 1,
                "label_time": t + dt.timedelta(seconds=1),
                "fraud_scenario": "x",
            }
        ],
        schema=LABEL_SCHEMA,
    )
    return new_tx, pl.concat([flipped, extra.cast(LABEL_SCHEMA), tie_label])


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("pit")
    tx, lb = generate_period(CONFIG)
    t = _cut_time(tx)
    variants = {"full": (tx, lb), "rewritten": _rewrite_future(tx, lb, t)}
    paths = {}
    for name, (v_tx, v_lb) in variants.items():
        paths[name] = (root / f"{name}.duckdb", root / name)
        load_raw(paths[name][0], v_tx, v_lb)
    with ThreadPoolExecutor(max_workers=len(variants)) as pool:
        futures = [
            pool.submit(run_dbt, db, tmp, "build", vars={"label_delay_days": DELAY})
            for db, tmp in paths.values()
        ]
        for future in futures:
            future.result()
    tables = {name: read_table(db, "features.transaction_features") for name, (db, _) in paths.items()}
    return {"t": t, "variants": variants, "paths": paths, "tables": tables}


def test_the_cut_is_mid_period_and_the_future_really_differs(builds) -> None:
    t, (tx, _), (new_tx, new_lb) = builds["t"], builds["variants"]["full"], builds["variants"]["rewritten"]
    assert tx["event_time"].min() < t - dt.timedelta(days=20)
    assert tx["event_time"].max() > t + dt.timedelta(days=10)
    later = pl.col("event_time") > t
    assert 0 < new_tx.filter(later).height < tx.filter(later).height
    assert new_lb.filter(pl.col("label_time") > t).height > 0
    assert new_lb.filter(pl.col("label_time") > t, pl.col("label") == 0).height > 0  # flipped frauds
    # The transactions after t have different features in the rewritten build (so they would show).
    full, rewritten = builds["tables"]["full"], builds["tables"]["rewritten"]
    problems = feature_mismatches(rewritten.filter(later), full.filter(later), FEATURES, INT_FEATURES)
    assert any("missing row" in p for p in problems)
    assert len(problems) >= len(FEATURES) // 2, problems
    assert any(p.startswith("merchant_fraud_rate") for p in problems)


def test_features_up_to_t_do_not_see_the_future(builds) -> None:
    t = builds["t"]
    full = builds["tables"]["full"].filter(pl.col("event_time") <= t)
    rewritten = builds["tables"]["rewritten"]
    rewritten = rewritten.filter(pl.col("transaction_id").is_in(full["transaction_id"].implode()))
    assert full.height > 1000
    assert full.filter(pl.col("merchant_fraud_rate_30d") > 0).height > 100
    problems = feature_mismatches(rewritten, full, FEATURES, INT_FEATURES)
    assert not problems, f"features of transactions at or before {t} changed:\n" + "\n".join(problems)


def test_the_tie_at_t_is_seen_only_by_itself(builds) -> None:
    t = builds["t"]
    changed = builds["tables"]["rewritten"]
    tie = changed.filter(pl.col("transaction_id").str.ends_with("~tie")).row(0, named=True)
    original = changed.filter(pl.col("transaction_id") == tie["transaction_id"].removesuffix("~tie")).row(
        0, named=True
    )
    assert tie["event_time"] == original["event_time"] == t
    assert tie["customer_txn_count_1h"] == original["customer_txn_count_1h"] + 1
    assert tie["customer_amount_max_1h"] == 5000.0 and original["customer_amount_max_1h"] < 5000.0


def test_every_variant_matches_the_oracle(builds) -> None:
    for name, (tx, lb) in builds["variants"].items():
        problems = feature_mismatches(
            builds["tables"][name], compute_features(tx, lb, SPEC, DELAY), FEATURES, INT_FEATURES
        )
        assert not problems, f"{name}:\n" + "\n".join(problems)


# --- label metadata never reaches a feature ---------------------------------------------------------


def test_feature_sql_never_references_label_metadata(builds) -> None:
    _, tmp = builds["paths"]["full"]
    assert "fraud_scenario" in compiled_sql(tmp, "stg_labels")  # the check below can see it
    for model in FEATURE_MODELS:
        sql = compiled_sql(tmp, model).lower()
        assert "fraud_scenario" not in sql, model
    db, _ = builds["paths"]["full"]
    for model in FEATURE_MODELS:
        columns = set(read_table(db, f"features.{model}").columns)
        assert not columns & LABEL_METADATA_COLUMNS, (model, columns & LABEL_METADATA_COLUMNS)


def _spec_doc() -> dict:
    with open(SPEC_PATH) as fh:
        return yaml.safe_load(fh)


def _with_feature(view_name: str, feature: dict) -> dict:
    doc = copy.deepcopy(_spec_doc())
    next(v for v in doc["feature_views"] if v["name"] == view_name)["features"].append(feature)
    return doc


LEAKY_FEATURES = [
    ("customer_velocity", {"kind": "window_distinct", "column": "fraud_scenario", "windows": ["1d"]}),
    ("customer_velocity", {"kind": "first_time", "column": "fraud_scenario"}),
    ("customer_velocity", {"kind": "window_agg", "column": "label", "aggs": ["sum"], "windows": ["7d"]}),
    (
        "customer_velocity",
        {
            "kind": "ratio_to_feature",
            "name": "leak",
            "column": "label",
            "denominator": "customer_amount_mean_30d",
        },
    ),
    ("merchant_velocity", {"kind": "window_agg", "column": "label_time", "aggs": ["max"], "windows": ["1d"]}),
    ("transaction_context", {"kind": "request_value", "column": "label"}),
]


@pytest.mark.parametrize(("view", "feature"), LEAKY_FEATURES)
def test_parse_spec_refuses_label_metadata_as_input(view: str, feature: dict) -> None:
    with pytest.raises(SpecError, match="label metadata"):
        parse_spec(_with_feature(view, feature))


def test_parse_spec_accepts_the_same_features_on_ordinary_columns() -> None:
    assert parse_spec(_spec_doc()).feature_names == FEATURES
    spec = parse_spec(_with_feature("customer_velocity", {"kind": "first_time", "column": "channel"}))
    assert "customer_first_time_channel" in spec.feature_names
    spec = parse_spec(
        _with_feature(
            "customer_velocity", {"kind": "window_distinct", "column": "country", "windows": ["1d"]}
        )
    )
    assert "customer_distinct_country_count_1d" in spec.feature_names
