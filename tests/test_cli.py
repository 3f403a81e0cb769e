"""The `mlp` command line, run for real (the demo goes through Dagster into a temporary data dir)."""

import datetime as dt

import duckdb
from typer.testing import CliRunner

from mlp_platform.cli import app
from mlp_platform.features.spec import default_spec

runner = CliRunner()


def test_spec_show_lists_every_feature(monkeypatch):
    monkeypatch.setattr("mlp_platform.cli.console.width", 200)
    result = runner.invoke(app, ["spec", "show"])
    assert result.exit_code == 0, result.output
    for name in default_spec().feature_names:
        assert name in result.output


def test_spec_check_passes_when_in_sync():
    result = runner.invoke(app, ["spec", "check"])
    assert result.exit_code == 0 and "in sync" in result.output


def test_demo_materialises_through_dagster(platform_env, monkeypatch):
    monkeypatch.setenv("MLP_SYNTH_DAYS", "45")
    settings = platform_env()
    result = runner.invoke(app, ["demo"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "demo done" in result.output and "Dagster UI" in result.output
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        raw = con.execute("select count(*) from raw.transactions").fetchone()[0]
        feats = con.execute("select count(*) from features.transaction_features").fetchone()[0]
        training = con.execute("select count(*) from training.training_set").fetchone()[0]
    assert raw == feats > 0 and 0 < training < raw
    # the runs are recorded in the project's Dagster instance (what the UI shows)
    runs = list((settings.dagster_home / "history" / "runs").glob("*.db"))
    assert len(runs) >= 3
    # a candidate was trained, evaluated and either promoted or refused by a gate, with the reason
    assert "last model decision:" in result.output
    roles = runner.invoke(app, ["model", "roles"])
    assert roles.exit_code == 0 and "champion" in roles.output
    from mlp_platform.lifecycle import registry_for

    assert registry_for(settings).alias("champion")  # (seeded world: the first model passes its gates)
    # the nightly step of the demo ran for the last day: batch scores, drift report, Evidently HTML
    last = settings.source_days()[1] - dt.timedelta(days=1)
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        scored = con.execute("select count(*) from scoring.batch_scores where day = ?", [last]).fetchone()[0]
        day_raw = con.execute("select count(*) from raw.transactions where event_date = ?", [last]).fetchone()[0]
        drift = con.execute("select count(*) from monitoring.drift_daily where day = ?", [last]).fetchone()[0]
    assert scored == day_raw > 0 and drift == 1
    assert (settings.monitoring_dir / "reports" / f"drift-{last}.html").exists()
    assert (settings.monitoring_dir / "drift_latest.json").exists()
    audit = runner.invoke(app, ["model", "audit"])
    assert audit.exit_code == 0 and "chain intact" in audit.output
    assert ("promotion " in audit.output) or ("promotion_refused" in audit.output)
    card = runner.invoke(app, ["model", "card", "1"])
    assert card.exit_code == 0 and "# Model card: fraud-detector v1" in card.output
    refused = runner.invoke(app, ["model", "rollback", "--reason", "test"])
    assert refused.exit_code == 1 and ("no predecessor" in refused.output or "no champion" in refused.output)


def test_bad_configuration_is_a_clear_error_not_a_traceback(platform_env, monkeypatch):
    monkeypatch.setenv("MLP_SOURCE", "kafka")
    result = runner.invoke(app, ["warehouse"])
    assert result.exit_code == 2
    assert "MLP_SOURCE" in result.output and "Traceback" not in result.output


def test_model_routing_sets_and_advances_the_canary(platform_env):
    import json

    from mlp_platform.serving.routing import RoutingFile, RoutingState

    settings = platform_env()
    RoutingFile(settings.routing_path).write(RoutingState(champion="1", challenger="2"))
    first = runner.invoke(app, ["model", "routing", "--challenger-share", "0.05"])
    assert first.exit_code == 0 and json.loads(first.output)["challenger_share"] == 0.05
    advanced = runner.invoke(app, ["model", "routing", "--advance"])
    assert json.loads(advanced.output)["challenger_share"] == 0.25
    assert RoutingFile(settings.routing_path).read().challenger_share == 0.25
    bad = runner.invoke(app, ["model", "routing", "--challenger-share", "1.5"])
    assert bad.exit_code == 1 and "refused" in bad.output
