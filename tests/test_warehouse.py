import datetime as dt

import polars as pl
import pytest

from mlp_platform.data.ingest import ingest_days
from mlp_platform.data.warehouse import DuckDBWarehouse, SnowflakeWarehouse, with_event_date

D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)


def frame(ids, day, amount=1.0):
    return with_event_date(pl.DataFrame({
        "transaction_id": ids,
        "event_time": [dt.datetime.combine(day, dt.time(12))] * len(ids),
        "amount": [amount] * len(ids),
    }))


def test_replace_days_is_idempotent_and_scoped(tmp_path):
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    wh.replace_days("transactions", frame(["a", "b"], D1), D1, D2)
    wh.replace_days("transactions", frame(["c"], D2), D2, D3)
    wh.replace_days("transactions", frame(["a2"], D1, 5.0), D1, D2)  # rerun of day 1 with new data
    wh.replace_days("transactions", frame(["a2"], D1, 5.0), D1, D2)  # and again: same result
    rows = wh.query("select transaction_id, amount from raw.transactions order by 1")
    assert rows.rows() == [("a2", 5.0), ("c", 1.0)]


def test_rows_outside_the_days_are_refused(tmp_path):
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    with pytest.raises(ValueError, match="outside"):
        wh.replace_days("transactions", frame(["a"], D2), D1, D2)
    with pytest.raises(ValueError, match="unknown raw table"):
        wh.replace_days("accounts", frame(["a"], D1), D1, D2)


def test_ingest_synthetic_days(platform_env):
    settings = platform_env()
    wh = DuckDBWarehouse(settings.duckdb_path)
    result = ingest_days(settings, wh, D1, D3)
    counts = wh.query("select count(*) as n, count(distinct event_date) as d from raw.transactions").row(0)
    assert counts == (result.transactions, 2) and result.transactions > 100
    labels = wh.query("select count(*) from raw.labels l join raw.transactions t using (transaction_id)").item()
    assert labels == result.labels
    with pytest.raises(ValueError, match="outside the synthetic source range"):
        ingest_days(settings, wh, dt.date(2025, 12, 31), D2)


def test_snowflake_warehouse_through_fakesnow(fakesnow_warehouse):
    """The production writer, exercised against fakesnow (Snowflake cannot be reached here)."""
    wh = fakesnow_warehouse
    wh.replace_days("transactions", frame(["a", "b"], D1), D1, D2)
    wh.replace_days("transactions", frame(["a"], D1, 7.0), D1, D2)
    out = wh.query("select transaction_id, amount from raw.transactions order by 1")
    assert out.rows() == [("a", 7.0)]


def test_snowflake_needs_credentials(monkeypatch):
    monkeypatch.delenv("SNOWFLAKE_PASSWORD", raising=False)
    with pytest.raises(RuntimeError, match="SNOWFLAKE_PASSWORD"):
        SnowflakeWarehouse.from_env()
