"""Online/offline parity: the online store computes, transaction by transaction, exactly what the dbt
feature tables hold.

A synthetic dataset (150 customers, 50 merchants, 40 days) is loaded into a real DuckDB file and
built with the real dbt project. It is then replayed through the online store in (event_time,
transaction_id) order, one day at a time: before each day D the merchant_risk values dbt computed
with as_of_date = D are materialised as of D, then D's transactions are scored. Every feature of
every transaction is compared with ``features.transaction_features`` (ints and flags exactly,
floats within 1e-9 relative, nulls in the same places), in particular those of the last two days,
scored after more than 30 days of history (the longest lookback), on both backends: embedded and
a real Redis server (its packed replies read by the same Python code).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import polars as pl
import pytest

from mlp_platform.data.synthetic import SyntheticConfig, generate_period
from mlp_platform.features.spec import default_spec
from mlp_platform.serving.online_store import EmbeddedBackend, OnlineFeatureStore
from mlp_platform.serving.online_store_redis import RedisBackend
from tests.featurelib import feature_mismatches, load_raw, read_table, run_dbt
from tests.test_online_store import redis_server_process

SPEC = default_spec()
FEATURES = SPEC.feature_names
INT_FEATURES = {f.name for f in SPEC.features if f.dtype == "int"}
RISK = [f.name for f in SPEC.view("merchant_risk").features]
CONFIG = SyntheticConfig(seed=5, start_date=dt.date(2026, 1, 1), days=40, n_customers=150, n_merchants=50)
TARGET_DAYS = [CONFIG.end_date - dt.timedelta(days=1), CONFIG.end_date]  # after 38 days of history


@pytest.fixture(scope="module")
def offline(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("parity")
    transactions, labels = generate_period(CONFIG)
    db = root / "warehouse.duckdb"
    load_raw(db, transactions, labels)
    run_dbt(db, root / "dbt", "run", "--select", "+transaction_features")
    return {
        "transactions": transactions,
        "features": read_table(db, "features.transaction_features"),
        "merchant_risk": read_table(db, "features.fv_merchant_risk"),
    }


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory) -> Iterator[int]:
    with redis_server_process(tmp_path_factory.mktemp("redis")) as (_, port):
        yield port


@pytest.fixture(params=["embedded", "redis"])
def store(request, tmp_path) -> Iterator[OnlineFeatureStore]:
    """The embedded backend; Redis (the Lua script's packed replies)."""
    if request.param == "embedded":
        backend = EmbeddedBackend(tmp_path / "store")
    else:
        port = request.getfixturevalue("redis_port")
        backend = RedisBackend(f"redis://127.0.0.1:{port}/0", prefix=f"parity:{uuid.uuid4().hex[:8]}", timeout=5)
    with OnlineFeatureStore(backend) as s:
        yield s


def test_online_features_equal_the_offline_tables(offline, store) -> None:
    transactions: pl.DataFrame = offline["transactions"]
    risk: pl.DataFrame = offline["merchant_risk"]
    rows = sorted(transactions.to_dicts(), key=lambda r: (r["event_time"], r["transaction_id"]))
    got: list[dict] = []
    missing_risk: list[str] = []
    current_day = None
    for row in rows:
        day = row["event_time"].date()
        if day != current_day:  # the daily materialisation of the batch view, as of the start of D
            current_day = day
            n = store.materialize_batch("merchant_risk", risk.filter(pl.col("as_of_date") == day), day)
            assert n == risk.filter(pl.col("as_of_date") == day).height
        features = store.score_features(row)
        if features.missing:
            missing_risk.append(row["transaction_id"])
        assert features.batch_as_of["merchant_risk"] in (None, dt.datetime.combine(day, dt.time()))
        got.append({"transaction_id": row["transaction_id"], "event_date": day, **features.to_dict()})

    schema = {"transaction_id": pl.String(), "event_date": pl.Date()}
    schema.update({name: pl.Int64() if name in INT_FEATURES else pl.Float64() for name in FEATURES})
    actual = pl.DataFrame(got, schema=schema)
    expected: pl.DataFrame = offline["features"]
    assert expected.height == transactions.height

    # The target days first (after more than the 30-day lookback of history), then every day.
    for day in TARGET_DAYS:
        on_day = pl.col("event_date") == day
        assert actual.filter(on_day).height > 100
        problems = feature_mismatches(actual.filter(on_day), expected.filter(on_day), FEATURES, INT_FEATURES)
        assert not problems, f"online features of {day} differ from dbt's:\n" + "\n".join(problems)
    problems = feature_mismatches(actual, expected, FEATURES, INT_FEATURES)
    assert not problems, "online features differ from dbt's:\n" + "\n".join(problems)

    # The comparison is not vacuous: fraud rates, new merchants and devices, long histories on the
    # target days; first events (no previous one) earlier.
    target = actual.filter(pl.col("event_date").is_in(TARGET_DAYS))
    assert target["merchant_fraud_rate_30d"].max() > 0 and target["merchant_fraud_rate_7d"].max() > 0
    assert actual["customer_seconds_since_previous"].null_count() > 0
    assert target["customer_first_time_device"].sum() > 0 and target["customer_first_time_merchant"].sum() > 0
    assert target["customer_txn_count_30d"].max() > 30
    # dbt materialises a merchant's risk for every day it has transactions: nothing is missing.
    assert not missing_risk
