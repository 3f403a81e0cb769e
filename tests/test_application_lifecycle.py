"""The credit decider's lifecycle end to end on the German credit data: a candidate trained,
backtested, registered in the decider's own registered model, gated and promoted with its own audit
trail and model card; a candidate that breaks a declared gate is refused with the reason; the
serving loader brings the champion back with its training population."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mlp_platform.application_lifecycle import (
    MODEL_CARD,
    decide_application_candidate,
    gate_application_candidate,
    load_application_data,
    train_application_candidate,
)
from mlp_platform.deciders.declaration import load_decider, write_variant
from mlp_platform.evaluation.cv_backtest import CVBacktestConfig
from mlp_platform.registry.audit import verify_chain
from mlp_platform.registry.roles import audit_for, registry_for
from mlp_platform.settings import PROJECT_ROOT

QUICK = CVBacktestConfig(n_splits=4, n_repeats=1, n_boot=100)


@pytest.fixture
def settings(german_settings):
    return german_settings


@pytest.mark.slow
def test_a_credit_candidate_is_gated_promoted_and_served(settings):
    from mlp_platform.runtime.loading import registry_loader

    credit = load_decider(PROJECT_ROOT / "deciders", "credit")
    data = load_application_data(settings, credit, "german")
    candidate = train_application_candidate(settings, credit, data, QUICK)
    gates = gate_application_candidate(settings, credit, candidate)
    assert [g.name for g in gates] == ["data", "performance", "fairness", "monotonicity", "consistency", "latency"]
    assert all(g.passed for g in gates), [g.summary for g in gates if not g.passed]
    outcome = decide_application_candidate(settings, credit, candidate, gates, run_id="test", actor="test")
    assert outcome.promoted and outcome.role == "champion"
    registry = registry_for(settings, credit)
    assert registry.model_name == "credit-origination" and registry.alias("champion") == candidate.ref.version
    assert registry_for(settings).alias("champion") is None  # the fraud model's roles are untouched
    card = registry.load_text(candidate.ref.run_id, MODEL_CARD)
    assert "Promoted to champion" in card and "| roc_auc |" in card and "monotonicity" in card
    records = audit_for(settings, credit).records()
    assert [r["event"] for r in records] == ["promotion"] and verify_chain(records).ok
    assert not audit_for(settings).records()  # its own trail, not fraud's
    # the serving loader brings the champion back through the spec's schema, with its population
    loaded = registry_loader(settings, decider=credit)(candidate.ref.version)
    assert loaded.feature_names == credit.spec.feature_names
    assert "requested_amount" in loaded.populations and "monthly_income" not in loaded.populations


@pytest.mark.slow
def test_a_candidate_breaking_a_declared_gate_is_refused_with_the_reason(settings, tmp_path):
    strict = load_decider(write_variant(load_decider(PROJECT_ROOT / "deciders", "credit"), tmp_path / "deciders",
                                        {"gates": {"minimums": {"roc_auc": 0.95}}}), "credit")
    data = load_application_data(settings, strict, "german")
    candidate = train_application_candidate(settings, strict, data, QUICK)
    gates = gate_application_candidate(settings, strict, candidate)
    failed = [g for g in gates if not g.passed]
    assert [g.name for g in failed] == ["performance"] and "minimum 0.95" in failed[0].summary
    outcome = decide_application_candidate(settings, strict, candidate, gates, run_id="test", actor="test")
    assert not outcome.promoted and "performance" in outcome.reason
    registry = registry_for(settings, strict)
    assert registry.alias("champion") is None
    assert registry.version_tags(candidate.ref.version)["promotion"] == "refused"
    card = registry.load_text(candidate.ref.run_id, MODEL_CARD)
    assert "Refused" in card and "**performance**: FAIL" in card
    assert audit_for(settings, strict).records()[-1]["event"] == "promotion_refused"


@pytest.mark.slow
def test_the_cli_trains_and_explains(settings, monkeypatch):
    from mlp_platform.cli import app

    result = CliRunner().invoke(app, ["deciders", "train", "credit", "--source", "german", "--repeats", "1",
                                      "--folds", "3"])
    assert result.exit_code == 0, result.output
    assert "promoted to champion" in result.output and "pass fairness" in result.output
    result = CliRunner().invoke(app, ["deciders", "train", "credit", "--source", "nowhere"])
    assert result.exit_code == 1 and "unknown source 'nowhere'" in result.output
    result = CliRunner().invoke(app, ["deciders", "train", "fraud"])
    assert result.exit_code == 1 and "does not decide applications" in result.output


def test_synthetic_training_data_is_matured_by_application_date(settings):
    import datetime as dt

    from mlp_platform.data.credit_synthetic import CreditSyntheticConfig, generate_period

    credit = load_decider(PROJECT_ROOT / "deciders", "credit")
    data = load_application_data(settings, credit, "synthetic")
    s = settings.synthetic
    world = CreditSyntheticConfig(seed=s.seed, start_date=s.start_date, days=max(s.days, 240),
                                  performance_window_days=credit.labels.delay_days)
    _, every_outcome = generate_period(world)
    cutoff = dt.datetime.combine(world.end_date, dt.time()) - dt.timedelta(days=credit.labels.maturity_days)
    assert data.immature > 0 and data.applications["event_time"].max() < cutoff
    assert data.outcomes.height == data.applications.height
    # selecting by "outcome already known" instead would over-represent bads (known at default,
    # goods only at the window's end): 0.38 against the world's 0.24 when this was written
    assert abs(data.outcomes["label"].mean() - every_outcome["label"].mean()) < 0.02
