"""Staged rollout per application decider (``promotion: staged``): a candidate that passes its gates
starts in shadow (scored beside the champion, logged, never served), goes through the declared
canary stages (a share of the applicants served by it, sticky per applicant) and becomes champion,
all judged from the decider's own decision logs, in its own routing state, rollout state and audit
trail; the fraud decider's rollout files are untouched. Real models trained on the German credit
data, a real MLflow store, the real decider host and decision logs."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import orjson
import pytest
from prometheus_client import CollectorRegistry

from mlp_platform.application_lifecycle import (
    decide_application_candidate,
    gate_application_candidate,
    load_application_data,
    train_application_candidate,
)
from mlp_platform.deciders.declaration import load_decider, write_variant
from mlp_platform.deciders.validate import rollout_config
from mlp_platform.evaluation.cv_backtest import CVBacktestConfig
from mlp_platform.registry.mlflow_registry import ModelRegistry
from mlp_platform.registry.roles import audit_for, registry_for, rollout_path_for, routing_path_for
from mlp_platform.rollout.machine import abort_rollout, apply_rollout_decision, evaluate_rollout
from mlp_platform.runtime.loading import registry_loader
from mlp_platform.serving.deciders import DeciderHost, DeciderMetrics
from mlp_platform.serving.routing import RoutingFile
from mlp_platform.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow
QUICK = CVBacktestConfig(n_splits=3, n_repeats=1, n_boot=50)
ROLLOUT = {"shadow_soak_s": 0, "canary_soak_s": 0, "shadow_min_observations": 30, "canary_min_observations": 10,
           "canary_stages": [0.5, 1.0], "max_shadow_disagreement": 0.2, "max_decline_rate_increase": 0.2,
           "max_score_psi": 1.0}


@pytest.fixture
def staged(german_settings, tmp_path):
    credit = load_decider(PROJECT_ROOT / "deciders", "credit")
    directory = tmp_path / "deciders"
    write_variant(credit, directory, {"model": {"registered_name": "credit-staged"}, "promotion": "staged",
                                      "rollout": ROLLOUT}, as_name="credit_staged")
    return load_decider(directory, "credit_staged")


def train_and_decide(settings, decider, metrics: str | None = None):
    candidate = train_application_candidate(settings, decider, load_application_data(settings, decider, "german"),
                                            QUICK)
    gates = gate_application_candidate(settings, decider, candidate)
    return decide_application_candidate(settings, decider, candidate, gates, run_id="t", actor="t",
                                        metrics_text=metrics)


def host_for(settings, decider, tmp_path) -> DeciderHost:
    def routing(decl):
        path = routing_path_for(settings, decl)
        return RoutingFile(path).read() if path.exists() else None

    host = DeciderHost([decider], log_root=tmp_path / "logs", keys={}, admin_keys=(),
                       loader=lambda d: registry_loader(settings, "auto", d),
                       champion=lambda d: ModelRegistry.from_settings(settings, d).alias("champion"),
                       metrics=DeciderMetrics(CollectorRegistry()), routing=routing)
    host.refresh()
    return host


def metrics_text(host) -> str:
    """What the service's /metrics answers (the host's registry, exposition format)."""
    from prometheus_client import generate_latest

    return generate_latest(host.metrics.registry).decode()


def verdicts(decision) -> dict:
    return {g.name: g for g in decision.guardrails}


def decide_all(host, name, applications) -> list[dict]:
    async def run():
        return [await host.decide(name, a) for a in applications]
    return asyncio.run(run())


def log_records(tmp_path, name) -> list[dict]:
    out = []
    for segment in sorted((tmp_path / "logs" / f"decisions-{name}").glob("decisions-*.jsonl")):
        out += [orjson.loads(line) for line in segment.read_bytes().splitlines() if line.strip(b"\0").strip()]
    return out


def wait_for_shadows(tmp_path, name, n, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(r.get("kind") == "shadow" for r in log_records(tmp_path, name)) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} shadow records after {timeout} s")


def test_a_staged_candidate_goes_shadow_canary_champion(german_settings, staged, tmp_path):
    settings, name = german_settings, staged.name
    first = train_and_decide(settings, staged)
    assert first.promoted and first.role == "champion"  # the first model serves directly
    host = host_for(settings, staged, tmp_path)
    second = train_and_decide(settings, staged, metrics_text(host))  # the shadow stage's metrics snapshot
    assert second.promoted and second.role == "shadow"
    host.refresh()
    registry = registry_for(settings, staged)
    v1, v2 = first.version, second.version
    assert registry.alias("champion") == v1 and registry.alias("shadow") == v2
    assert RoutingFile(routing_path_for(settings, staged)).read().shadows == (v2,)

    apps = load_application_data(settings, staged, "german").applications
    requests = [{k: v for k, v in r.items() if v is not None} for r in apps.head(240).to_dicts()]
    config = rollout_config(staged)
    logs = tmp_path / "logs" / f"decisions-{name}"
    try:
        assert host.status()[name]["shadow"] == v2
        answers = decide_all(host, name, requests[:60])
        assert {a["model_version"] for a in answers} == {v1}  # a shadow is never served
        wait_for_shadows(tmp_path, name, 60)
        decision = evaluate_rollout(settings, dt.datetime.now(dt.UTC), config, metrics_text(host),
                                    decision_log_dir=logs, decider=staged)
        assert decision.action == "advance" and decision.to_share == 0.5, decision.reason
        shadow_errors = verdicts(decision)["error_rate"]
        assert shadow_errors.verdict == "pass" and shadow_errors.observations >= 60 and "shadow decisions of" in shadow_errors.detail
        assert apply_rollout_decision(settings, decision, "t", metrics_text=metrics_text(host), decider=staged).applied
        host.refresh()
        assert host.status()[name]["challenger"] == v2 and host.status()[name]["challenger_share"] == 0.5

        answers = decide_all(host, name, requests[60:180])
        served = [a["model_version"] for a in answers]
        assert 30 < served.count(v2) < 90 and served.count(v1) > 30  # about half the applicants
        arms = {r["decision_id"]: r["arm"] for r in log_records(tmp_path, name) if r.get("kind") == "decision"}
        assert {arms[a["decision_id"]] for a in answers if a["model_version"] == v2} == {"challenger"}
        # sticky: the same applicant gets the same arm again
        again = decide_all(host, name, requests[60:80])
        assert [a["model_version"] for a in again] == served[:20]

        decision = evaluate_rollout(settings, dt.datetime.now(dt.UTC), config, metrics_text(host),
                                    decision_log_dir=logs, decider=staged)
        assert decision.action == "advance" and decision.to_share == 1.0, decision.reason
        # the decider's own series judge its canary (before: "not evaluated", no metrics were read)
        judged = verdicts(decision)
        assert judged["error_rate"].verdict == "pass" and judged["error_rate"].observations == served.count(v2) + 20 - \
            [a["model_version"] for a in again].count(v1)
        assert judged["latency_p99_ms"].verdict == "pass" and judged["latency_p99_ms"].observations == judged["error_rate"].observations
        assert apply_rollout_decision(settings, decision, "t", decider=staged).applied
        host.refresh()
        assert {a["model_version"] for a in decide_all(host, name, requests[180:220])} == {v2}
        decision = evaluate_rollout(settings, dt.datetime.now(dt.UTC), config, decision_log_dir=logs, decider=staged)
        assert decision.action == "complete", decision.reason
        assert apply_rollout_decision(settings, decision, "t", decider=staged).applied
        host.refresh()
        assert host.status()[name] == {"version": v2, "ready": True, "error": None}
    finally:
        host.close()
    assert registry.alias("champion") == v2 and registry.alias("previous_champion") == v1
    events = [r["event"] for r in audit_for(settings, staged).records()]
    assert events == ["promotion", "rollout_started", "rollout_advanced", "rollout_advanced", "promotion",
                      "rollout_completed"]
    # the fraud decider's rollout and routing files were never written
    assert not settings.rollout_path.exists() and not settings.routing_path.exists()
    assert rollout_path_for(settings, staged).exists()


def test_an_aborted_staged_rollout_leaves_the_champion_serving(german_settings, staged, tmp_path):
    settings = german_settings
    v1 = train_and_decide(settings, staged).version
    v2 = train_and_decide(settings, staged).version
    outcome = abort_rollout(settings, "t", "the data scientist found a leak", decider=staged)
    assert outcome.applied and outcome.action == "rollback"
    registry = registry_for(settings, staged)
    assert registry.alias("champion") == v1 and registry.alias("shadow") is None
    assert registry.version_tags(v2)["promotion"] == "rolled_back"
    host = host_for(settings, staged, tmp_path)
    try:
        assert host.status()[staged.name] == {"version": v1, "ready": True, "error": None}
    finally:
        host.close()


def test_a_failing_challenger_is_rolled_back_by_the_deciders_error_guardrail(german_settings, staged, tmp_path):
    """A challenger whose decisions fail (here its scorer raises) is rolled back by the decider's
    own error-rate guardrail, read from its service's metrics by arm; the champion arm is unharmed."""
    settings, name = german_settings, staged.name
    v1 = train_and_decide(settings, staged).version
    host = host_for(settings, staged, tmp_path)
    v2 = train_and_decide(settings, staged, metrics_text(host)).version
    host.refresh()
    config = rollout_config(staged)
    logs = tmp_path / "logs" / f"decisions-{name}"
    apps = load_application_data(settings, staged, "german").applications
    requests = [{k: v for k, v in r.items() if v is not None} for r in apps.head(200).to_dicts()]
    try:
        decide_all(host, name, requests[:40])
        wait_for_shadows(tmp_path, name, 40)
        decision = evaluate_rollout(settings, dt.datetime.now(dt.UTC), config, metrics_text(host),
                                    decision_log_dir=logs, decider=staged)
        assert decision.action == "advance", decision.reason
        assert apply_rollout_decision(settings, decision, "t", metrics_text=metrics_text(host), decider=staged).applied
        host.refresh()
        challenger = host.slot(name).challenger
        assert challenger is not None and challenger.version == v2

        def broken(request):
            raise RuntimeError("the challenger's scorer failed")
        challenger.decide = broken  # a fault in the model under rollout, not in the guardrail
        failures = 0
        for request in requests[40:200]:
            try:
                decide_all(host, name, [request])
            except RuntimeError:
                failures += 1
        assert failures > 10
        decision = evaluate_rollout(settings, dt.datetime.now(dt.UTC), config, metrics_text(host),
                                    decision_log_dir=logs, decider=staged)
        errors = verdicts(decision)["error_rate"]
        assert decision.action == "rollback" and errors.verdict == "fail", decision.reason
        assert errors.value == 1.0 and errors.observations == failures  # every challenger-arm request, none of the champion's
        assert apply_rollout_decision(settings, decision, "t", decider=staged).applied
        host.refresh()
        assert host.status()[name] == {"version": v1, "ready": True, "error": None}
    finally:
        host.close()
    assert registry_for(settings, staged).alias("champion") == v1
