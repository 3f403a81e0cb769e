"""The Dagster code location: loads, has the expected graph (snapshot), and materialises for real."""

import datetime as dt
import json
import os
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from assets.definitions import build_definitions
from assets.resources import resources_for
from conftest import HANDBOOK
from mlp_platform.deciders.declaration import load_decider

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"
MODEL_KEYS = {"candidate_model", "candidate_evaluation", "model_promotion", "model_card"}
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.get_repository_def().asset_graph
    out = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        out[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitioned": node.partitions_def is not None,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "checks": sorted(c.name + (" [blocking]" if graph.get_check_spec(c).blocking else "")
                             for c in graph.asset_check_keys if c.asset_key == key),
        }
    return out


def test_definitions_load_and_match_the_graph_snapshot(platform_env):
    defs = build_definitions(platform_env())
    snapshot = graph_snapshot(defs)
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
    assert snapshot == json.loads(SNAPSHOT.read_text()), "asset graph changed: review, then UPDATE_SNAPSHOTS=1"
    repo = defs.get_repository_def()
    assert {j.name for j in repo.get_all_jobs()} >= {"daily_features_job", "training_set_job"}
    assert sorted(s.name for s in repo.schedule_defs) == ["credit_monitoring_schedule", "nightly_schedule",
                                                          "review_labels_schedule"]
    # a retrain copies the analysts' newest outcomes in before it rebuilds the training set
    retrain_keys = {k.to_user_string() for k in repo.get_job("retrain_job").asset_layer.selected_asset_keys}
    assert {"raw_analyst_labels", "training/training_set"} <= retrain_keys
    assert {"model_lifecycle_job", "rollback_job", "nightly_job", "retrain_job", "rollout_step_job",
            "abort_rollout_job", "staging_replay_job"} <= {j.name for j in repo.get_all_jobs()}
    sensors = {s.name: s for s in repo.sensor_defs}
    assert {"drift_retrain_sensor", "rollout_sensor", "run_failure_alert_sensor", "credit_drift_sensor",
            "credit_submission_sensor"} <= set(sensors)
    assert sensors["credit_drift_sensor"].job_name == "credit_train_job"
    assert sensors["credit_submission_sensor"].job_name == "credit_submission_job"
    assert sensors["drift_retrain_sensor"].job_name == "retrain_job"
    assert sensors["rollout_sensor"].job_name == "rollout_step_job"
    # the nightly job covers the whole daily chain, one partition per run
    nightly = repo.get_job("nightly_job")
    nightly_keys = {k.to_user_string() for k in nightly.asset_layer.selected_asset_keys}
    assert {"raw_transactions", "features/transaction_features", "online_batch_features", "scoring/batch_scores",
            "monitoring/served_decisions", "monitoring/drift_report"} <= nightly_keys
    assert "monitoring/staging_replay" not in nightly_keys
    promotion = repo.asset_graph.get(dg.AssetKey("model_promotion"))
    assert "all_deps_blocking_checks_passed" in str(promotion.automation_condition)
    for key in repo.asset_graph.get_all_asset_keys():
        assert repo.asset_graph.get(key).description, f"{key} needs a description for the UI"


def _materialize(defs, selection, instance, first=None, last=None, raise_on_error=True):
    graph = defs.get_repository_def().asset_graph
    keys = dg.AssetSelection.from_string(selection).resolve(graph)
    assets = [a for a in defs.assets if any(k in keys for k in a.keys)]
    tags = {RANGE_START: first, RANGE_END: last} if first else None
    return dg.materialize(assets, instance=instance, resources=defs.resources, tags=tags,
                          selection=dg.AssetSelection.from_string(selection),
                          raise_on_error=raise_on_error)


def _check_evaluations(result) -> dict[tuple[str, str], bool]:
    return {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}


def test_materialise_synthetic_ingest_features_and_training_set(platform_env):
    settings = platform_env()
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        result = _materialize(defs, "group:ingest or group:staging or group:features", instance,
                              "2026-01-01", "2026-02-14")
        assert result.success
        checks = _check_evaluations(result)
        assert checks[("raw_transactions", "contract_critical")] is True
        assert checks[("raw_labels", "contract_critical")] is True
        assert ("raw_transactions", "contract_defaults") in checks
        dbt_checks = [k for k in checks if k[0].startswith("features/")]
        assert len(dbt_checks) >= 10 and all(checks[k] for k in dbt_checks)
        training = _materialize(defs, "group:training", instance)
        assert training.success
        # the model lifecycle: train -> registered version -> backtest -> gates -> promotion -> card
        fast = {"ops": {"candidate_model": {"config": {"n_candidates": 2, "n_folds": 2, "max_rounds": 80}}}}
        # the fraud decider's model assets (unprefixed keys; application deciders have their own prefix)
        model_assets = [a for a in defs.assets if any(len(k.path) == 1 and k.path[0] in MODEL_KEYS for k in a.keys)]
        from mlp_platform.deciders.declaration import load_deciders
        from mlp_platform.settings import load_settings

        application = {d.name for d in load_deciders(load_settings().deciders_dir).values()
                       if d.request.schema_name == "application"}
        fraud_checks = [c for c in defs.asset_checks if not any(k.asset_key.path[0] in application
                                                                for k in c.check_keys)]
        model = dg.materialize([*model_assets, *fraud_checks], instance=instance,
                               resources=defs.resources, run_config=fast)
        assert model.success
        gates = _check_evaluations(model)
        assert set(gates) == {("candidate_evaluation", f"gate_{g}") for g in
                              ("data", "consistency", "latency", "performance", "bias")}
        assert all(gates.values())
        promotion = instance.get_latest_materialization_event(dg.AssetKey("model_promotion"))
        meta = promotion.asset_materialization.metadata
        assert meta["promoted"].value is True and meta["role"].value == "champion"
        card = instance.get_latest_materialization_event(dg.AssetKey("model_card"))
        assert "# Model card: fraud-detector v1" in card.asset_materialization.metadata["card"].value
        # batch features pushed for the serving layer, as of the start of the day
        pushed = _materialize(defs, "online_batch_features", instance, "2026-02-10", "2026-02-10")
        assert pushed.success
        mats = instance.get_latest_materialization_event(dg.AssetKey(["features", "transaction_features"]))
        assert mats is not None
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        raw = con.execute("select count(*) from raw.transactions").fetchone()[0]
        feats = con.execute("select count(*), count(distinct event_date) from features.transaction_features").fetchone()
        train = con.execute("select count(*), max(event_time) from training.training_set").fetchone()
    assert feats == (raw, 45)
    # training rows are only those whose label matured (14 days) before the newest event
    newest_mature = dt.datetime(2026, 2, 15) - dt.timedelta(days=load_decider(settings.deciders_dir).labels.maturity_days)
    assert 0 < train[0] < raw and train[1] <= newest_mature
    snapshot = settings.batch_snapshot_dir / "merchant_risk" / "2026-02-10.json"
    rows = json.loads(snapshot.read_text())["rows"]
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        expected = con.execute("select merchant_id, merchant_fraud_rate_30d from features.fv_merchant_risk "
                               "where as_of_date = '2026-02-10'").fetchall()
    assert len(rows) == len(expected) > 0
    from mlp_platform.serving.batch_push import SnapshotLoader
    from mlp_platform.serving.store_url import store_from_url

    merchant, rate = max(expected, key=lambda r: r[1])
    with store_from_url("memory://") as store:
        assert SnapshotLoader(settings.batch_snapshot_dir).load_new(store) == 1
        served = store.score_features({"transaction_id": "probe", "event_time": dt.datetime(2026, 2, 10, 12),
                                       "customer_id": "C_PROBE", "merchant_id": merchant, "amount": 10.0})
        assert served.to_dict()["merchant_fraud_rate_30d"] == pytest.approx(rate)
        assert not {"merchant_fraud_rate_30d"} & served.missing


@pytest.mark.skipif(not HANDBOOK.exists(), reason="shared dataset not mounted")
def test_critical_contract_violation_fails_the_partition_and_writes_nothing(platform_env, tmp_path, monkeypatch):
    bad = tmp_path / "bad.parquet"
    rows = pl.read_parquet(HANDBOOK).filter(pl.col("TX_DATETIME") < dt.datetime(2018, 4, 1, 1)).head(50)
    rows = rows.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(-5.0).otherwise(pl.col("TX_AMOUNT")).alias("TX_AMOUNT"))
    bad_id = rows["TRANSACTION_ID"][3]
    rows.write_parquet(bad)
    monkeypatch.setenv("MLP_SOURCE", "handbook")
    monkeypatch.setenv("MLP_HANDBOOK_PATH", str(bad))
    settings = platform_env()
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        result = _materialize(defs, "group:ingest", instance, "2018-04-01", "2018-04-01", raise_on_error=False)
        assert not result.success
        evaluations = result.get_asset_check_evaluations()
        failed = [e for e in evaluations if not e.passed]
        assert [(e.asset_key.to_user_string(), e.check_name) for e in failed] == [
            ("raw_transactions", "contract_critical")]
        assert f"id={bad_id}" in failed[0].metadata["examples.negative_amount"].value
    assert not settings.duckdb_path.exists() or duckdb.connect(str(settings.duckdb_path)).execute(
        "select count(*) from information_schema.tables where table_schema = 'raw'").fetchone()[0] == 0


@pytest.mark.skipif(not HANDBOOK.exists(), reason="shared dataset not mounted")
def test_materialise_the_real_dataset(platform_env, monkeypatch):
    monkeypatch.setenv("MLP_SOURCE", "handbook")
    settings = platform_env()
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        result = _materialize(defs, "group:ingest or group:staging or group:features", instance,
                              "2018-04-01", "2018-04-03")
        assert result.success
        assert all(_check_evaluations(result).values())
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        n, frauds = con.execute("select count(*), sum(label) from raw.labels l").fetchone()
        feats = con.execute("select count(*), count(distinct customer_id) from features.transaction_features").fetchone()
    expected = pl.scan_parquet(HANDBOOK).filter(pl.col("TX_DATETIME") < dt.datetime(2018, 4, 4)).select(
        pl.len(), pl.col("TX_FRAUD").sum()).collect().row(0)
    assert feats[0] == expected[0] and frauds == expected[1] and feats[1] > 1000


def test_resources_follow_the_environment(platform_env, monkeypatch):
    local = resources_for(platform_env())
    assert local["warehouse"].kind == "duckdb"
    monkeypatch.setenv("MLP_ENV", "production")
    prod = resources_for(platform_env())
    assert prod["warehouse"].kind == "snowflake" and prod["dbt"].target == "production"
