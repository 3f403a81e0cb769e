"""The per-decider Dagster graphs: every application decider declared as a file gets the same asset
graph under its own key prefix and group, materialises for real (the German credit data, a real
MLflow store), and its blocking gate checks stop a promotion of a candidate that fails one."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml

from assets.deciders import GATES, application_decider_assets, build_decider_assets
from assets.resources import PlatformSettingsResource
from mlp_platform.deciders.declaration import load_decider, write_variant
from mlp_platform.registry.roles import audit_for, registry_for
from mlp_platform.settings import PROJECT_ROOT, load_settings

pytestmark = pytest.mark.slow
QUICK = {"n_splits": 3, "n_repeats": 1, "n_boot": 50}


@pytest.fixture
def settings(german_settings):
    return german_settings


def run_config(prefix: str) -> dict:
    return {"ops": {f"{prefix}__training_data": {"config": {"source": "german"}},
                    f"{prefix}__candidate_model": {"config": QUICK}}}


def test_the_credit_graph_materialises_and_promotes(settings):
    credit = load_decider(PROJECT_ROOT / "deciders", "credit")
    assets, checks, _jobs = application_decider_assets(credit)
    with dg.instance_for_test() as instance:
        result = dg.materialize([*assets, *checks], instance=instance, resources={"platform": PlatformSettingsResource()},
                                run_config=run_config("credit"))
        assert result.success
        evaluations = result.get_asset_check_evaluations()
        assert {e.check_name for e in evaluations} == {f"gate_{g}" for g in GATES}
        assert all(e.passed for e in evaluations)
        outcome = result.output_for_node("credit__model_promotion")
        assert outcome["promoted"] and outcome["role"] == "champion"
    assert registry_for(settings, credit).alias("champion") == outcome["version"]
    assert audit_for(settings, credit).records()[-1]["event"] == "promotion"


def test_a_decider_added_as_a_file_gets_its_graph_and_its_gates_block(settings, tmp_path, monkeypatch):
    credit = load_decider(PROJECT_ROOT / "deciders", "credit")
    directory = tmp_path / "deciders"
    write_variant(load_decider(PROJECT_ROOT / "deciders"), directory, {})  # the fraud decider
    write_variant(credit, directory, {})
    doc = yaml.safe_load((directory / "credit.yaml").read_text())
    doc["name"], doc["model"]["registered_name"] = "credit_strict", "credit-strict"
    doc["gates"]["minimums"]["roc_auc"] = 0.97
    (directory / "credit_strict.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("MLP_DECIDERS_DIR", str(directory))
    assets, checks, jobs, schedules = build_decider_assets(load_settings())
    keys = {k.to_user_string() for a in assets for k in a.keys}
    assert {"credit/candidate_model", "credit_strict/candidate_model", "credit_strict/model_promotion"} <= keys
    assert {j.name for j in jobs} == {"credit_train_job", "credit_strict_train_job", "credit_submission_job",
                                     "credit_strict_submission_job", "credit_monitoring_job",
                                     "credit_strict_monitoring_job", "credit_rollout_step_job",
                                     "credit_strict_rollout_step_job"}
    assert {s.name for s in schedules} == {"credit_monitoring_schedule", "credit_strict_monitoring_schedule"}
    assert "credit_strict/monitoring_report" in keys
    strict = load_decider(directory, "credit_strict")
    own_assets, own_checks, _ = application_decider_assets(strict)
    with dg.instance_for_test() as instance:
        result = dg.materialize([*own_assets, *own_checks], instance=instance, raise_on_error=False,
                                resources={"platform": PlatformSettingsResource()},
                                run_config=run_config("credit_strict"))
        failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
        assert failed == {"gate_performance"}
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        # the blocking check stopped the promotion: a reverted blocking flag would materialise it
        assert "credit_strict/model_promotion" not in materialized
        assert "credit_strict/candidate_evaluation" in materialized
    assert registry_for(settings, strict).alias("champion") is None
    assert registry_for(settings, credit).alias("champion") is None  # the other decider is untouched
