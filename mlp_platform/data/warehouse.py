"""The warehouse: where raw partitions land and dbt builds the feature tables.

Embedded default: one DuckDB file under the project's data directory. Production: Snowflake
(credentials from the environment). Writes are idempotent per day: replacing days
[first_day, end_day) deletes what those days held and inserts the new rows in one transaction, so
a partition can be re-run any number of times.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import polars as pl

RAW_SCHEMA = "raw"
RAW_TABLES = ("transactions", "labels")


class Warehouse(Protocol):
    def replace_days(self, table: str, frame: pl.DataFrame, first_day: dt.date, end_day: dt.date) -> int: ...

    def replace_table(self, table: str, frame: pl.DataFrame) -> int: ...

    def query(self, sql: str) -> pl.DataFrame: ...


def with_event_date(frame: pl.DataFrame, time_column: str = "event_time") -> pl.DataFrame:
    return frame.with_columns(pl.col(time_column).dt.date().alias("event_date"))


def _check_table(table: str) -> None:
    if table not in RAW_TABLES:
        raise ValueError(f"unknown raw table {table!r}; expected one of {RAW_TABLES}")


_DECIDER_TABLE = re.compile(r"^[a-z][a-z0-9_]{0,40}_(applications|outcomes)$")


def _check_decider_table(table: str) -> None:
    if not _DECIDER_TABLE.match(table):
        raise ValueError(f"raw table {table!r}: a decider's raw tables are <decider>_applications and "
                         "<decider>_outcomes")


@dataclass(frozen=True)
class DuckDBWarehouse:
    path: Path

    def connect(self, read_only: bool = False):
        import duckdb

        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(self.path), read_only=read_only)

    def replace_days(self, table: str, frame: pl.DataFrame, first_day: dt.date, end_day: dt.date) -> int:
        """Make days [first_day, end_day) of raw.<table> hold exactly ``frame`` (needs event_date)."""
        _check_table(table)
        if "event_date" not in frame.columns:
            raise ValueError("frame needs an event_date column (see with_event_date)")
        outside = frame.filter((pl.col("event_date") < first_day) | (pl.col("event_date") >= end_day))
        if outside.height:
            raise ValueError(f"{outside.height} row(s) of raw.{table} fall outside {first_day}..{end_day}")
        arrow = frame.to_arrow()  # noqa: F841  (referenced by name in SQL below)
        with self.connect() as con:
            con.execute(f"create schema if not exists {RAW_SCHEMA}")
            con.execute(f"create table if not exists {RAW_SCHEMA}.{table} as select * from arrow limit 0")
            con.execute("begin transaction")
            con.execute(f"delete from {RAW_SCHEMA}.{table} where event_date >= ? and event_date < ?",
                        [first_day, end_day])
            con.execute(f"insert into {RAW_SCHEMA}.{table} by name select * from arrow")
            con.execute("commit")
        return frame.height

    def replace_table(self, table: str, frame: pl.DataFrame) -> int:
        """Make raw.<table> (a decider's applications or outcomes) hold exactly ``frame``, in one
        transaction: a reader sees the old rows or the new ones, never a mix."""
        _check_decider_table(table)
        arrow = frame.to_arrow()  # noqa: F841  (referenced by name in SQL below)
        with self.connect() as con:
            con.execute(f"create schema if not exists {RAW_SCHEMA}")
            con.execute("begin transaction")
            con.execute(f"create or replace table {RAW_SCHEMA}.{table} as select * from arrow")
            con.execute("commit")
        return frame.height

    def query(self, sql: str) -> pl.DataFrame:
        with self.connect(read_only=True) as con:
            return con.sql(sql).pl()


@dataclass(frozen=True)
class SnowflakeWarehouse:
    """Production warehouse. Connection parameters come from the environment (SNOWFLAKE_*)."""

    account: str
    user: str
    password: str
    database: str
    warehouse: str
    role: str | None = None

    @classmethod
    def from_env(cls) -> SnowflakeWarehouse:
        missing = [v for v in ("SNOWFLAKE_ACCOUNT", "SNOWFLAKE_USER", "SNOWFLAKE_PASSWORD") if not os.environ.get(v)]
        if missing:
            raise RuntimeError(f"Snowflake warehouse selected but {', '.join(missing)} not set")
        return cls(account=os.environ["SNOWFLAKE_ACCOUNT"], user=os.environ["SNOWFLAKE_USER"],
                   password=os.environ["SNOWFLAKE_PASSWORD"],
                   database=os.environ.get("SNOWFLAKE_DATABASE", "MLP"),
                   warehouse=os.environ.get("SNOWFLAKE_WAREHOUSE", "MLP_WH"),
                   role=os.environ.get("SNOWFLAKE_ROLE"))

    def connect(self):
        import snowflake.connector

        return snowflake.connector.connect(account=self.account, user=self.user, password=self.password,
                                           database=self.database, warehouse=self.warehouse, role=self.role,
                                           schema=RAW_SCHEMA.upper())

    def replace_days(self, table: str, frame: pl.DataFrame, first_day: dt.date, end_day: dt.date) -> int:
        from snowflake.connector.pandas_tools import write_pandas

        _check_table(table)
        pdf = frame.to_pandas()
        pdf.columns = [c.upper() for c in pdf.columns]
        con = self.connect()
        try:
            cur = con.cursor()
            cur.execute(f"create schema if not exists {RAW_SCHEMA}")
            if not _table_exists(cur, table):
                # DDL commits implicitly in Snowflake: the first load creates the table on its own.
                write_pandas(con, pdf, table.upper(), schema=RAW_SCHEMA.upper(), auto_create_table=True,
                             use_logical_type=True)
            else:
                cur.execute("begin")
                cur.execute(f"delete from {RAW_SCHEMA}.{table} where event_date >= %s and event_date < %s",
                            (first_day, end_day))
                write_pandas(con, pdf, table.upper(), schema=RAW_SCHEMA.upper(), use_logical_type=True)
                cur.execute("commit")
        finally:
            con.close()
        return frame.height

    def replace_table(self, table: str, frame: pl.DataFrame) -> int:
        """Make raw.<table> (a decider's applications or outcomes) hold exactly ``frame``
        (write_pandas with overwrite: a new table swapped in for the old)."""
        from snowflake.connector.pandas_tools import write_pandas

        _check_decider_table(table)
        pdf = frame.to_pandas()
        pdf.columns = [c.upper() for c in pdf.columns]
        con = self.connect()
        try:
            con.cursor().execute(f"create schema if not exists {RAW_SCHEMA}")
            write_pandas(con, pdf, table.upper(), schema=RAW_SCHEMA.upper(), auto_create_table=True,
                         overwrite=True, use_logical_type=True)
        finally:
            con.close()
        return frame.height

    def query(self, sql: str) -> pl.DataFrame:
        con = self.connect()
        try:
            cur = con.cursor()
            cur.execute(sql)
            pdf = cur.fetch_pandas_all()
        finally:
            con.close()
        pdf.columns = [c.lower() for c in pdf.columns]
        return pl.from_pandas(pdf)


def _table_exists(cursor, table: str) -> bool:
    cursor.execute(
        "select count(*) from information_schema.tables where table_schema = %s and table_name = %s",
        (RAW_SCHEMA.upper(), table.upper()))
    return cursor.fetchone()[0] > 0


def warehouse_for(settings) -> Warehouse:
    """The warehouse the settings select (DuckDB locally, Snowflake in production)."""
    if settings.warehouse == "snowflake":
        return SnowflakeWarehouse.from_env()
    return DuckDBWarehouse(settings.duckdb_path)
