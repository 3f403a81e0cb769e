"""The per-decider Dagster graphs: every application decider declared as a file gets the same asset
graph under its own key prefix and group, materialises for real (the German credit data, a real
MLflow store), and its blocking gate checks stop a promotion of a candidate that fails one."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
import yaml
from featurelib import decider_feature_models

from assets.deciders import GATES, application_decider_assets, build_decider_assets
from assets.resources import resources_for
from mlp_platform.deciders.declaration import load_decider, write_variant
from mlp_platform.registry.roles import audit_for, registry_for
from mlp_platform.settings import PROJECT_ROOT, load_settings

pytestmark = pytest.mark.slow
QUICK = {"n_splits": 3, "n_repeats": 1, "n_boot": 50}


@pytest.fixture
def settings(german_settings):
    return german_settings


def run_config(prefix: str) -> dict:
    return {"ops": {f"{prefix}__applications": {"config": {"source": "german"}},
                    f"{prefix}__candidate_model": {"config": QUICK}}}


def test_the_credit_graph_materialises_and_promotes(settings):
    credit = load_decider(PROJECT_ROOT / "deciders", "credit")
    assets, checks, _jobs = application_decider_assets(credit)
    dbt = decider_feature_models(settings)
    with dg.instance_for_test() as instance:
        result = dg.materialize([*assets, *checks, dbt], instance=instance, resources=resources_for(settings),
                                run_config=run_config("credit"), selection=dg.AssetSelection.groups("credit"))
        assert result.success
        materialized = [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()]
        # the features come from the generated dbt model, between the applications and the training data
        assert materialized.index("credit/applications") < materialized.index("credit/features") \
            < materialized.index("credit/training_data")
        evaluations = result.get_asset_check_evaluations()
        assert {e.check_name for e in evaluations} == {
            *(f"gate_{g}" for g in GATES), "feature_parity", "unique_credit_features_application_id",
            "not_null_credit_features_application_id"}
        assert all(e.passed for e in evaluations)
        training = result.asset_value(dg.AssetKey(["credit", "training_data"]))
        assert training.features is not None and training.features.height == 1000
        outcome = result.output_for_node("credit__model_promotion")
        assert outcome["promoted"] and outcome["role"] == "champion"
    assert registry_for(settings, credit).alias("champion") == outcome["version"]
    assert audit_for(settings, credit).records()[-1]["event"] == "promotion"


def test_a_decider_added_as_a_file_gets_its_graph_and_its_gates_block(settings, tmp_path, monkeypatch):
    """A new declaration file and `mlp prepare` (which generates its dbt feature model) give the
    decider its whole graph, dbt features included, with no code change; its gates are its own."""
    from mlp_platform.cli import prepare_project

    credit = load_decider(PROJECT_ROOT / "deciders", "credit")
    directory = tmp_path / "deciders"
    write_variant(load_decider(PROJECT_ROOT / "deciders"), directory, {})  # the fraud decider
    write_variant(credit, directory, {})
    doc = yaml.safe_load((directory / "credit.yaml").read_text())
    doc["name"], doc["model"]["registered_name"] = "credit_strict", "credit-strict"
    doc["gates"]["minimums"]["roc_auc"] = 0.97
    (directory / "credit_strict.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    # a copy of the project (its dbt project and instance template) to generate the new model into
    root = tmp_path / "project"
    shutil.copytree(PROJECT_ROOT / "dbt_project", root / "dbt_project",
                    ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    shutil.copytree(PROJECT_ROOT / "deploy" / "local", root / "deploy" / "local")
    monkeypatch.setenv("MLP_PROJECT_ROOT", str(root))
    monkeypatch.setenv("MLP_GERMAN_CREDIT_PATH", str(settings.german_credit_path))
    monkeypatch.setenv("MLP_DECIDERS_DIR", str(directory))
    local = load_settings()
    prepare_project(local)
    assert (root / "dbt_project" / "models" / "deciders" / "credit_strict_features.sql").exists()
    assets, checks, jobs, schedules = build_decider_assets(local)
    keys = {k.to_user_string() for a in assets for k in a.keys}
    assert {"credit/candidate_model", "credit_strict/candidate_model", "credit_strict/model_promotion",
            "credit_strict/applications"} <= keys
    dbt = decider_feature_models(local)
    assert {k.to_user_string() for k in dbt.keys} == {"credit/features", "credit_strict/features"}
    assert dbt.group_names_by_key[dg.AssetKey(["credit_strict", "features"])] == "credit_strict"
    assert {j.name for j in jobs} == {"credit_train_job", "credit_strict_train_job", "credit_submission_job",
                                     "credit_strict_submission_job", "credit_monitoring_job",
                                     "credit_strict_monitoring_job", "credit_rollout_step_job",
                                     "credit_strict_rollout_step_job"}
    assert {s.name for s in schedules} == {"credit_monitoring_schedule", "credit_strict_monitoring_schedule"}
    assert "credit_strict/monitoring_report" in keys
    strict = load_decider(directory, "credit_strict")
    own_assets, own_checks, _ = application_decider_assets(strict)
    with dg.instance_for_test() as instance:
        result = dg.materialize([*own_assets, *own_checks, dbt], instance=instance, raise_on_error=False,
                                resources=resources_for(local), run_config=run_config("credit_strict"),
                                selection=dg.AssetSelection.groups("credit_strict"))
        failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
        assert failed == {"gate_performance"}
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        # the blocking check stopped the promotion: a reverted blocking flag would materialise it
        assert "credit_strict/model_promotion" not in materialized
        assert {"credit_strict/features", "credit_strict/candidate_evaluation"} <= materialized
        assert "credit/features" not in materialized  # the other decider's model was not built
    assert registry_for(local, strict).alias("champion") is None
    assert registry_for(local, credit).alias("champion") is None  # the other decider is untouched
