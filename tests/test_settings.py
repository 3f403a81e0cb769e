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


def test_the_metrics_url_names_a_deciders_own_service(platform_env, monkeypatch):
    monkeypatch.setenv("MLP_SERVICE_METRICS_URL", "http://mlp-decider-{decider}.mlp.svc:8000/metrics")
    s = load_settings()
    assert s.metrics_url("credit") == "http://mlp-decider-credit.mlp.svc:8000/metrics"
    assert s.metrics_url() == "http://mlp-decider-fraud.mlp.svc:8000/metrics"
    monkeypatch.setenv("MLP_SERVICE_METRICS_URL", "http://127.0.0.1:8000/metrics")
    assert load_settings().metrics_url("credit") == "http://127.0.0.1:8000/metrics"  # one process hosts all
