"""Shared fixtures: an isolated data directory and settings per test (never the project's data/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlp_platform.settings import PROJECT_ROOT, load_settings

HANDBOOK = PROJECT_ROOT.parent / "shared" / "data" / "fraud_handbook" / "transactions.parquet"

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


@pytest.fixture
def platform_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings pointing at a fresh data directory; returns a function to (re)load them."""
    monkeypatch.setenv("MLP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLP_WAREHOUSE_PATH", str(tmp_path / "data" / "warehouse.duckdb"))
    for var in ("MLP_SOURCE", "MLP_ENV", "MLP_WAREHOUSE", "MLP_SYNTH_DRIFT_START", "MLFLOW_TRACKING_URI",
                "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLP_SYNTH_CUSTOMERS", "150")
    monkeypatch.setenv("MLP_SYNTH_MERCHANTS", "60")
    return load_settings


@pytest.fixture
def german_settings(tmp_path, monkeypatch):
    """Settings on a fresh data dir (a local MLflow store) with the German credit data mounted."""
    from mlp_platform.settings import load_settings

    monkeypatch.setenv("MLP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = load_settings()
    if not settings.german_credit_path.exists():
        pytest.skip("shared dataset not mounted (MLP_GERMAN_CREDIT_PATH)")
    return settings


@pytest.fixture(scope="module")
def fakesnow_stack(tmp_path_factory):
    """A fakesnow server process on loopback (mlp_platform.local_stack): Snowflake's HTTP protocol,
    every statement parsed in the Snowflake dialect, and recorded (``stack.statements()``)."""
    from mlp_platform.local_stack import fakesnow_server

    with fakesnow_server(tmp_path_factory.mktemp("fakesnow")) as stack:
        yield stack


@pytest.fixture
def fakesnow_warehouse(fakesnow_stack):
    """The production (Snowflake) warehouse over the fakesnow server, its schemas emptied first."""
    from mlp_platform.data.warehouse import SnowflakeWarehouse

    env = fakesnow_stack.env
    warehouse = SnowflakeWarehouse(env["SNOWFLAKE_ACCOUNT"], env["SNOWFLAKE_USER"], env["SNOWFLAKE_PASSWORD"],
                                   env["SNOWFLAKE_DATABASE"], host=env["SNOWFLAKE_HOST"],
                                   port=int(env["SNOWFLAKE_PORT"]), protocol="http")
    with warehouse.session() as session:
        for schema in ("raw", "scoring", "monitoring", "tests"):
            session.execute(f"drop schema if exists {schema} cascade")
    return warehouse


@pytest.fixture
def nats(tmp_path):
    """A real nats-server with JetStream file storage on loopback (tests/natslib.py)."""
    from tests.natslib import NatsServer

    with NatsServer(tmp_path / "jetstream") as server:
        yield server
