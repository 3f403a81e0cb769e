"""Helpers for the feature tests: load canonical frames into a DuckDB warehouse, run the real dbt
project against it and read the resulting tables back as polars frames.

Every dbt invocation gets its own ``--target-path`` / ``--log-path`` under a temporary directory
(other processes use ``dbt_project/target`` concurrently) and its own warehouse file through
``MLP_WAREHOUSE_PATH``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

from mlp_platform.data.contracts import validate_labels, validate_transactions
from mlp_platform.data.warehouse import DuckDBWarehouse, ensure_analyst_labels, with_event_date

REPO_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"


class DbtError(RuntimeError):
    """A dbt invocation failed; the message holds its command line and output."""


def load_raw(
    path: Path | str,
    transactions: pl.DataFrame,
    labels: pl.DataFrame,
    first_day: dt.date | None = None,
    end_day: dt.date | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validate canonical frames with the data contracts and write them into raw.transactions /
    raw.labels of the DuckDB file at ``path``, replacing the days [first_day, end_day) (default:
    the days the transactions cover). Labels get the event_date of their transaction.

    Returns the validated frames as written (with event_date)."""
    tx, _ = validate_transactions(transactions)
    lb, _ = validate_labels(labels, tx)
    tx = with_event_date(tx)
    lb = lb.join(tx.select("transaction_id", "event_date"), on="transaction_id", how="left")
    if first_day is None:
        first_day = tx["event_date"].min() if tx.height else dt.date(1970, 1, 1)
    if end_day is None:
        end_day = tx["event_date"].max() + dt.timedelta(days=1) if tx.height else first_day
    warehouse = DuckDBWarehouse(Path(path))
    warehouse.replace_days("transactions", tx, first_day, end_day)
    warehouse.replace_days("labels", lb, first_day, end_day)
    ensure_analyst_labels(warehouse)
    return tx, lb


def dbt_executable_args() -> list[str]:
    exe = Path(sys.executable).with_name("dbt")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "dbt.cli.main"]


def run_dbt(
    warehouse_path: Path | str,
    tmp_dir: Path | str,
    *args: str,
    vars: dict | None = None,
    timeout: float = 300,
) -> str:
    """Run ``dbt <args>`` (e.g. ``run_dbt(db, tmp, "build")``) against the warehouse file, with
    target and log paths under ``tmp_dir``. Returns dbt's output; raises DbtError on failure."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        *dbt_executable_args(),
        *args,
        "--project-dir", str(DBT_PROJECT_DIR),
        "--profiles-dir", str(DBT_PROJECT_DIR),
        "--target-path", str(tmp_dir / "target"),
        "--log-path", str(tmp_dir / "logs"),
    ]  # fmt: skip
    if args and args[0] in ("build", "run") and "--select" not in args and "-s" not in args:
        # the transaction (fraud) models only: each application decider's generated model reads its
        # own raw table, which these warehouses do not hold (tests/test_decider_dbt_features.py)
        cmd += ["--exclude", "path:models/deciders"]
    if vars:
        cmd += ["--vars", json.dumps(vars)]
    env = {
        **os.environ,
        "MLP_WAREHOUSE_PATH": str(Path(warehouse_path).resolve()),
        "MLP_DBT_TARGET": "local",
        "DO_NOT_TRACK": "1",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DBT_USE_COLORS": "false",
    }
    proc = subprocess.run(cmd, cwd=DBT_PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise DbtError(f"dbt failed (exit {proc.returncode}): {' '.join(cmd)}\n{output}")
    return output


def read_table(path: Path | str, table: str) -> pl.DataFrame:
    """The whole table (e.g. ``"features.transaction_features"``) as a polars frame."""
    return DuckDBWarehouse(Path(path)).query(f"select * from {table}")


def compiled_sql(tmp_dir: Path | str, model: str) -> str:
    """The compiled SQL dbt wrote for ``model`` into the target path under ``tmp_dir``."""
    matches = sorted((Path(tmp_dir) / "target" / "compiled").rglob(f"{model}.sql"))
    if not matches:
        raise FileNotFoundError(f"no compiled SQL of model {model} under {tmp_dir}")
    return "\n".join(m.read_text() for m in matches)


def feature_mismatches(
    actual: pl.DataFrame,
    expected: pl.DataFrame,
    feature_names: list[str],
    int_features: set[str],
    rel_tol: float = 1e-9,
) -> list[str]:
    """Differences between two frames of features keyed by transaction_id: rows present in only
    one of them, then every (transaction, feature) whose values differ (ints and flags exactly,
    floats within ``rel_tol`` relative, nulls in the same places). Empty when they match."""
    problems: list[str] = []
    got_ids, want_ids = set(actual["transaction_id"]), set(expected["transaction_id"])
    if actual["transaction_id"].is_duplicated().any():
        problems.append(
            f"duplicate transaction_id rows: {actual.filter(pl.col('transaction_id').is_duplicated())['transaction_id'].unique().to_list()[:10]}"
        )
    if got_ids - want_ids:
        problems.append(
            f"{len(got_ids - want_ids)} unexpected row(s), e.g. {sorted(got_ids - want_ids)[:10]}"
        )
    if want_ids - got_ids:
        problems.append(f"{len(want_ids - got_ids)} missing row(s), e.g. {sorted(want_ids - got_ids)[:10]}")
    joined = expected.select("transaction_id", *feature_names).join(
        actual.select("transaction_id", *feature_names), on="transaction_id", how="inner", suffix="__got"
    )
    for name in feature_names:
        bad = []
        for tid, want, got in joined.select("transaction_id", name, f"{name}__got").iter_rows():
            if want is None or got is None:
                same = want is None and got is None
            elif name in int_features:
                same = want == got
            else:
                same = abs(want - got) <= rel_tol * max(abs(want), abs(got))
            if not same:
                bad.append(f"{tid}: got {got!r}, expected {want!r}")
        if bad:
            problems.append(f"{name}: {len(bad)} mismatch(es): " + "; ".join(bad[:8]))
    return problems


def decider_feature_models(settings):
    """The Dagster dbt asset definition of the application deciders' generated feature models (from
    the parsed manifest of ``settings``' dbt project): what a decider's graph materialises with."""
    from assets.features import build_feature_assets

    return next(a for a in build_feature_assets(settings) if a.op.name == "decider_feature_models")
