"""Resources per environment, all decided by mlp_platform.settings (local embedded vs production)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject

from mlp_platform.data.warehouse import DuckDBWarehouse, SnowflakeWarehouse, Warehouse
from mlp_platform.settings import Settings, load_settings


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse raw data lands in: an embedded DuckDB file, or Snowflake in production (the
    password from the environment through ``dg.EnvVar``; the rest from the settings)."""

    kind: str = "duckdb"
    duckdb_path: str = ""
    snowflake_account: str = ""
    snowflake_user: str = ""
    snowflake_password: str = ""
    snowflake_database: str = "MLP"
    snowflake_warehouse: str = "MLP_WH"
    snowflake_role: str = ""
    snowflake_host: str = ""
    snowflake_port: int = 0
    snowflake_protocol: str = "https"

    def get_warehouse(self) -> Warehouse:
        if self.kind == "snowflake":
            return SnowflakeWarehouse(self.snowflake_account, self.snowflake_user, self.snowflake_password,
                                      self.snowflake_database, self.snowflake_warehouse,
                                      self.snowflake_role or None, self.snowflake_host, self.snowflake_port,
                                      self.snowflake_protocol)
        return DuckDBWarehouse(Path(self.duckdb_path))


class ReviewDatabaseResource(dg.ConfigurableResource):
    """The review cases' database (SQLite under the data directory locally; Postgres in production,
    its URL with its password from the environment through ``dg.EnvVar``)."""

    url: str

    def get_store(self):
        from mlp_platform.review.cases import CaseStore

        return CaseStore.from_url(self.url)


class PlatformSettingsResource(dg.ConfigurableResource):
    """Gives assets the platform settings (source, delays, paths) read from the environment."""

    def get(self) -> Settings:
        return load_settings()


def dbt_project(settings: Settings) -> DbtProject:
    return DbtProject(project_dir=settings.dbt_project_dir, profiles_dir=settings.dbt_project_dir,
                      target=settings.dbt_target, target_path=Path(settings.dbt_target_path))


def dbt_environment(settings: Settings) -> dict[str, str]:
    """Environment the dbt subprocess needs: where the warehouse is, and no telemetry."""
    return {
        "MLP_WAREHOUSE_PATH": str(settings.duckdb_path),
        "MLP_DBT_TARGET": settings.dbt_target,
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DO_NOT_TRACK": "1",
    }


def dbt_executable() -> str:
    """dbt from the running interpreter's environment (the project venv), else from PATH."""
    beside = Path(sys.executable).with_name("dbt")
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


def resources_for(settings: Settings) -> dict[str, object]:
    if settings.warehouse == "snowflake":
        sf = settings.snowflake
        warehouse = WarehouseResource(
            kind="snowflake", snowflake_account=sf.account, snowflake_user=sf.user,
            snowflake_password=dg.EnvVar("SNOWFLAKE_PASSWORD"), snowflake_database=sf.database,
            snowflake_warehouse=sf.warehouse, snowflake_role=sf.role, snowflake_host=sf.host,
            snowflake_port=sf.port, snowflake_protocol=sf.protocol)
    else:
        warehouse = WarehouseResource(kind="duckdb", duckdb_path=str(settings.duckdb_path))
    review = (ReviewDatabaseResource(url=dg.EnvVar("MLP_REVIEW_DATABASE_URL")) if settings.env == "production"
              else ReviewDatabaseResource(url=settings.review_database))
    return {
        "warehouse": warehouse,
        "review_database": review,
        "platform": PlatformSettingsResource(),
        "dbt": DbtCliResource(project_dir=dbt_project(settings), target=settings.dbt_target,
                              dbt_executable=dbt_executable()),
    }
