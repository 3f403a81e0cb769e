import datetime as dt

import pytest

from mlp_platform.settings import SettingsError, load_settings


def test_local_defaults(platform_env, tmp_path):
    s = platform_env()
    assert s.env == "local" and s.source == "synthetic" and s.warehouse == "duckdb"
    assert s.duckdb_path == (tmp_path / "data" / "warehouse.duckdb").resolve()
    assert s.dagster_home.parent == s.data_dir
    assert s.source_days() == (dt.date(2026, 1, 1), dt.date(2026, 3, 2))


def test_production_selects_snowflake(platform_env, monkeypatch):
    monkeypatch.setenv("MLP_ENV", "production")
    s = platform_env()
    assert s.warehouse == "snowflake" and s.dbt_target == "production"


def test_handbook_range(platform_env, monkeypatch):
    monkeypatch.setenv("MLP_SOURCE", "handbook")
    assert platform_env().source_days() == (dt.date(2018, 4, 1), dt.date(2018, 10, 1))


@pytest.mark.parametrize(("var", "value", "message"), [
    ("MLP_SOURCE", "kafka", "MLP_SOURCE"),
    ("MLP_SYNTH_DAYS", "ten", "MLP_SYNTH_DAYS"),
    ("MLP_SYNTH_DRIFT_START", "next tuesday", "MLP_SYNTH_DRIFT_START"),
    ("MLP_ENV", "staging-ish", "MLP_ENV"),
    ("MLP_HANDBOOK_LABEL_DELAY_DAYS", "-1", "MLP_HANDBOOK_LABEL_DELAY_DAYS"),
    ("MLP_SCORER_BACKEND", "numba", "MLP_SCORER_BACKEND"),
])
def test_bad_settings_name_the_variable(platform_env, monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()
