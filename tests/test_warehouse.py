import datetime as dt

import duckdb
import polars as pl
import pytest
import snowflake.connector.errors

from mlp_platform.data.ingest import ingest_days
from mlp_platform.data.warehouse import DuckDBWarehouse, SnowflakeWarehouse, WarehouseError, with_event_date

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


ENGINE_ERRORS = (duckdb.Error, snowflake.connector.errors.Error)


@pytest.fixture(params=["duckdb", "snowflake"])
def warehouse(request, tmp_path):
    """Each test below runs on both engines: the embedded DuckDB file and Snowflake's protocol (the
    fakesnow server, a separate process)."""
    if request.param == "duckdb":
        return DuckDBWarehouse(tmp_path / "w.duckdb")
    return request.getfixturevalue("fakesnow_warehouse")


def test_replace_days_is_idempotent_and_scoped_on_both_engines(warehouse):
    warehouse.replace_days("transactions", frame(["a", "b"], D1), D1, D2)
    warehouse.replace_days("transactions", frame(["c"], D2), D2, D3)
    warehouse.replace_days("transactions", frame(["a2"], D1, 5.0), D1, D2)
    warehouse.replace_days("transactions", frame(["a2"], D1, 5.0), D1, D2)
    rows = warehouse.query("select transaction_id, amount from raw.transactions order by 1")
    assert rows.columns == ["transaction_id", "amount"]  # lower case on both (Snowflake answers upper case)
    assert rows.rows() == [("a2", 5.0), ("c", 1.0)]


def test_values_round_trip_and_a_failed_transaction_leaves_nothing(warehouse):
    now = dt.datetime(2026, 3, 1, 12, 30, 15, 250000)
    rows = pl.DataFrame({"id": ["x", "y", "it's \"quoted\"; drop table t --"], "n": [1, None, 3],
                         "score": [0.25, None, 1e-300], "flag": [True, False, None],
                         "day": [D1, D2, None], "seen_at": [now, None, now], "payload": [b"\x00\xff<b>", None, b""]})
    warehouse.replace_rows("tests.values_kept", rows, "1 = 1")
    back = warehouse.query("select * from tests.values_kept order by n nulls last, id")
    assert sorted(back["id"].to_list()) == sorted(rows["id"].to_list())  # a hostile string stays a value
    by_id = {r["id"]: r for r in back.to_dicts()}
    assert by_id["x"]["n"] == 1 and by_id["x"]["score"] == 0.25 and by_id["x"]["flag"] is True
    assert by_id["x"]["day"] == D1 and by_id["x"]["seen_at"] == now and bytes(by_id["x"]["payload"]) == b"\x00\xff<b>"
    assert by_id["y"]["n"] is None and by_id["y"]["seen_at"] is None and by_id["y"]["payload"] is None
    # a failure inside the transaction: the delete is rolled back with the insert, nothing is lost
    with pytest.raises(ENGINE_ERRORS), warehouse.session() as s, s.transaction():
        s.execute("delete from tests.values_kept")
        s.execute("insert into tests.values_kept (id, n) values (?, ?)", ["z", "not a number"])
    assert warehouse.query("select count(*) as n from tests.values_kept")["n"][0] == 3


def test_existing_keys_beyond_one_chunk_and_names_that_are_not_identifiers(warehouse):
    keys = pl.DataFrame({"k": [f"k{i}" for i in range(2500)]})
    warehouse.replace_rows("tests.keys", keys, "1 = 1")
    with warehouse.session() as s:
        found = s.existing_keys("tests.keys", "k", [f"k{i}" for i in range(0, 5000, 2)])
        assert len(found) == 1250 and "k2498" in found and "k2500" not in found
        assert s.table_exists("tests.keys") and not s.table_exists("tests.absent")
        for hostile in ("tests.keys; drop table raw.transactions", 'tests."Keys"', "keys--", "a.b.c"):
            with pytest.raises(WarehouseError, match="identifier"):
                s.existing_keys(hostile, "k", ["k1"])
        with pytest.raises(WarehouseError, match="DDL inside a transaction"), s.transaction():
            s.ensure_table("tests.other", keys)


def test_ddl_inside_a_transaction_is_refused_before_snowflake_would_commit_it(fakesnow_warehouse):
    with fakesnow_warehouse.session() as s:
        s.ensure_table("tests.t", pl.DataFrame({"a": [1]}))
        with pytest.raises(WarehouseError, match="staging inside a transaction"), s.transaction():
            s.stage(pl.DataFrame({"a": [1]}))


def test_every_statement_sent_to_snowflake_parses_in_the_snowflake_dialect(fakesnow_warehouse, fakesnow_stack):
    """What this module's tests sent, as the server received it (the recorder of local_stack)."""
    import sqlglot

    fakesnow_warehouse.replace_days("transactions", frame(["a"], D1), D1, D2)
    statements = [s["sql"] for s in fakesnow_stack.statements()]
    assert any(s.startswith("insert into raw.transactions") for s in statements)
    for sql in statements:
        sqlglot.parse(sql, read="snowflake", error_level=sqlglot.ErrorLevel.RAISE)


def test_snowflake_needs_credentials(monkeypatch):
    from mlp_platform.settings import load_settings

    monkeypatch.setenv("MLP_ENV", "production")
    monkeypatch.delenv("SNOWFLAKE_PASSWORD", raising=False)
    with pytest.raises(WarehouseError, match="SNOWFLAKE_PASSWORD"):
        SnowflakeWarehouse.from_settings(load_settings())
