"""The model lifecycle for real: LightGBM training, a temporary MLflow store, backtests, gates,
promotion, refusal, rollback and model cards, on a small synthetic warehouse built by dbt."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from featurelib import run_dbt

from mlp_platform import lifecycle
from mlp_platform.data.ingest import ingest_days
from mlp_platform.data.warehouse import DuckDBWarehouse
from mlp_platform.evaluation.gates import GateConfig, consistency_gate, latency_gate
from mlp_platform.features.spec import default_spec
from mlp_platform.registry.audit import verify_chain
from mlp_platform.runtime.scorer import ModelSchemaError, Scorer
from mlp_platform.settings import load_settings
from mlp_platform.training.trainer import TrainingConfig, matrix

FAST = TrainingConfig(seed=7, n_candidates=2, n_folds=2, max_rounds=120, search_max_rounds=60)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lifecycle")
    env = {"MLP_DATA_DIR": str(tmp / "data"), "MLP_SYNTH_CUSTOMERS": "250", "MLP_SYNTH_MERCHANTS": "80",
           "MLP_SYNTH_DAYS": "60"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for var in ("MLP_SOURCE", "MLP_ENV", "MLP_WAREHOUSE", "MLFLOW_TRACKING_URI", "MLP_SYNTH_DRIFT_START"):
            mp.delenv(var, raising=False)
        settings = load_settings()
        first, end = settings.source_days()
        ingest_days(settings, DuckDBWarehouse(settings.duckdb_path), first, end)
        run_dbt(settings.duckdb_path, tmp / "dbt", "build")
        training = lifecycle.load_training_set(settings)
        ref, trained, threshold = lifecycle.train_candidate(settings, training, FAST)
        evaluation = lifecycle.evaluate_candidate(settings, ref, training)
        outcome = lifecycle.promote_candidate(settings, evaluation, run_id="test-first")
        yield {"settings": settings, "training": training, "v1": ref, "trained": trained, "threshold": threshold,
               "evaluation": evaluation, "outcome": outcome, "mp": mp}


def test_first_model_passes_gates_and_becomes_champion(world):
    evaluation, outcome, settings = world["evaluation"], world["outcome"], world["settings"]
    assert {g.name: g.passed for g in evaluation.gates} == {
        "data": True, "consistency": True, "latency": True, "performance": True, "bias": True}
    assert outcome.promoted and outcome.role == "champion"
    registry = lifecycle.registry_for(settings)
    assert registry.alias("champion") == world["v1"].version
    # the MLflow run carries lineage and the feature list
    tags = registry.version_tags(world["v1"].version)
    assert tags["feature_spec_hash"] == default_spec().spec_hash
    assert json.loads(tags["features"]) == default_spec().feature_names
    run = registry.client.get_run(world["v1"].run_id)
    assert run.data.tags["data.content_sha256"] == world["trained"].data_fingerprint["content_sha256"]
    assert "test_average_precision" in run.data.metrics
    artifacts = {a.path for a in registry.client.list_artifacts(world["v1"].run_id)}
    assert {"backtest.json", "gates.json", "model_card.md", "model_card.html", "plots"} <= artifacts


def test_training_is_deterministic_and_uses_only_spec_features(world):
    trained = world["trained"]
    assert trained.feature_names == default_spec().feature_names
    assert not {"label", "fraud_scenario", "label_time"} & set(trained.booster.feature_name())
    test_days = trained.split.test
    assert trained.split.train[1] <= trained.split.valid[0] and trained.split.valid[1] <= test_days[0]
    assert (trained.split.valid[0] - trained.split.train[1]).days == FAST.gap_days
    from mlp_platform.training.trainer import train_model

    again = train_model(world["training"], default_spec().feature_names, FAST)
    x = matrix(world["training"].head(2000), trained.feature_names)
    assert np.array_equal(again.booster.predict(x), trained.booster.predict(x))
    # the search never saw the test window
    assert all(r["folds"] >= 1 for r in trained.search)


def test_model_card_is_built_from_recorded_evidence(world):
    settings, version = world["settings"], world["v1"].version
    card = lifecycle.write_model_card(settings, version)
    backtest = world["evaluation"].backtest
    for section in ("Intended use", "Out of scope", "## Data", "## Features", "## Metrics", "## Fairness",
                    "## Gates", "## Limitations", "## Lineage", "## Promotion and approval trail"):
        assert section in card
    ap = backtest["candidate"]["average_precision"]
    assert f"{ap:.4f}" in card
    assert world["trained"].data_fingerprint["content_sha256"] in card
    assert "promotion" in card and "first model: all gates passed" in card


def test_worse_model_is_refused_and_champion_kept(world):
    settings, training = world["settings"], world["training"]
    rng = np.random.default_rng(0)
    shuffled = training.with_columns(pl.Series("label", rng.permutation(training["label"].to_numpy())))
    worse, _, _ = lifecycle.train_candidate(settings, shuffled, FAST)
    evaluation = lifecycle.evaluate_candidate(settings, worse, training)
    gates = {g.name: g for g in evaluation.gates}
    assert evaluation.champion_version == world["v1"].version
    assert not gates["performance"].passed and "REFUSED" in gates["performance"].summary
    outcome = lifecycle.promote_candidate(settings, evaluation, run_id="test-worse")
    assert not outcome.promoted
    registry = lifecycle.registry_for(settings)
    assert registry.alias("champion") == world["v1"].version
    events = [r["event"] for r in lifecycle.audit_for(settings).records() if r["version"] == worse.version]
    assert "promotion_refused" in events
    assert registry.version_tags(worse.version)["promotion"] == "refused"


def test_biased_model_is_refused(world):
    """A model trained to flag ecom traffic far more often: judged on channel, the bias gate refuses it."""
    settings, training = world["settings"], world["training"]
    rng = np.random.default_rng(1)
    biased_labels = np.where((training["channel"].to_numpy() == "ecom") & (rng.random(training.height) < 0.3),
                             1, training["label"].to_numpy())
    biased, _, _ = lifecycle.train_candidate(settings, training.with_columns(pl.Series("label", biased_labels)),
                                             FAST)
    config = GateConfig(bias_segments=("channel",), min_group_size=50, min_group_frauds=2,
                        tolerances=(("average_precision", 1.0),))  # judge bias alone
    evaluation = lifecycle.evaluate_candidate(settings, biased, training, config)
    gates = {g.name: g for g in evaluation.gates}
    assert not gates["bias"].passed and "ecom" in gates["bias"].summary
    assert gates["performance"].passed
    assert not lifecycle.promote_candidate(settings, evaluation, run_id="test-biased").promoted


def test_consistency_and_latency_gates_can_fail(world):
    settings = world["settings"]
    registry = lifecycle.registry_for(settings)
    scorer = lifecycle.load_scorer(registry, world["v1"].version)
    rows = matrix(world["training"].head(50), scorer.feature_names)
    truth = world["trained"].booster.predict(rows)
    assert consistency_gate(scorer, rows, truth, scorer.feature_names).passed
    off = consistency_gate(scorer, rows, truth + 1e-6, scorer.feature_names)
    assert not off.passed and off.details["max_abs_diff"] == pytest.approx(1e-6, rel=1e-3)
    reordered = list(reversed(scorer.feature_names))
    assert not consistency_gate(scorer, rows, truth, reordered).passed
    assert latency_gate(scorer, rows, budget_p99_us=1e6, samples=200).passed
    too_strict = latency_gate(scorer, rows, budget_p99_us=0.001, samples=200)
    assert not too_strict.passed and too_strict.details["p99_us"] > 0.001


def test_incompatible_model_is_refused_by_the_serving_loader(world, tmp_path):
    registry = lifecycle.registry_for(world["settings"])
    model_dir = registry.model_dir(world["v1"].version)
    with pytest.raises(ModelSchemaError, match="differ from the feature specification"):
        Scorer.from_model_dir(model_dir, list(reversed(default_spec().feature_names)))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "MLmodel").write_text("flavors: {python_function: {}}\n")
    with pytest.raises(ModelSchemaError, match="not a LightGBM"):
        Scorer.from_model_dir(corrupt)


def test_retrain_promote_then_rollback_restores_previous_champion(world):
    """Second model promoted (champion vs candidate side by side), then rolled back."""
    settings, training = world["settings"], world["training"]
    registry = lifecycle.registry_for(settings)
    v1 = world["v1"].version
    assert registry.alias("champion") == v1
    better, _, _ = lifecycle.train_candidate(settings, training, TrainingConfig(
        seed=11, n_candidates=2, n_folds=2, max_rounds=120, search_max_rounds=60))
    # this test is about rollback: wide tolerances so the small window's intervals do not decide
    lenient = GateConfig(tolerances=(("average_precision", 1.0), ("recall_at_fpr", 1.0)))
    evaluation = lifecycle.evaluate_candidate(settings, better, training, lenient)
    assert evaluation.champion_version == v1 and "paired" in evaluation.backtest
    assert evaluation.backtest["impact"]["overall"]["flip_rate"] is not None
    assert lifecycle.promote_candidate(settings, evaluation, run_id="test-second").promoted
    assert registry.alias("champion") == better.version and registry.alias("previous_champion") == v1
    outcome = lifecycle.rollback_champion(settings, run_id="test-rollback", reason="guardrail breached")
    assert outcome.version == v1 and registry.alias("champion") == v1
    records = lifecycle.audit_for(settings).records()
    assert records[-1]["event"] == "rollback" and records[-1]["replaced"] == better.version
    assert verify_chain(records).ok


def test_audit_chain_catches_an_edited_record(world, tmp_path):
    records = lifecycle.audit_for(world["settings"]).records()
    assert len(records) >= 2 and verify_chain(records).ok
    edited = [dict(r) for r in records]
    edited[1]["reason"] = "nothing to see here"
    check = verify_chain(edited)
    assert not check.ok and check.first_broken == 1
    removed = records[:1] + records[2:]
    assert verify_chain(removed).first_broken == 1


def test_cards_exist_for_every_version(world):
    registry = lifecycle.registry_for(world["settings"])
    versions = registry.client.search_model_versions(f"name='{registry.model_name}'")
    assert len(versions) >= 2
    for mv in versions:
        names = {a.path for a in registry.client.list_artifacts(mv.run_id)}
        assert "model_card.md" in names, f"v{mv.version} has no card"
    assert Path(world["settings"].audit_dir).exists()


def test_a_fresh_process_loads_the_champion_through_the_registry(world):
    """The serving loader in a new interpreter (no global MLflow state) finds the registered model."""
    import subprocess
    import sys

    code = ("from mlp_platform.settings import load_settings\n"
            "from mlp_platform.runtime.loading import registry_loader\n"
            f"m = registry_loader(load_settings())('{world['v1'].version}')\n"
            "print(m.version, len(m.feature_names), len(m.artifact_sha256))\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**env, "MLP_DATA_DIR": str(world["settings"].data_dir)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [world["v1"].version, str(len(default_spec().feature_names)), "64"]


def test_logging_a_model_leaves_no_global_mlflow_uri_behind(world):
    import os

    assert "MLFLOW_TRACKING_URI" not in os.environ or os.environ["MLFLOW_TRACKING_URI"] != \
        world["settings"].mlflow_tracking_uri
