"""Staged rollout for real: a temporary MLflow registry with tiny LightGBM versions, real decision logs
written with DecisionLog, real Prometheus metrics text from ServiceMetrics, the routing file the
service reads, and the hash-chained audit trail."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import lightgbm as lgb
import numpy as np
import pytest
from prometheus_client import generate_latest

from mlp_platform import lifecycle
from mlp_platform.registry.audit import verify_chain
from mlp_platform.registry.promotion import GateResult, promote
from mlp_platform.rollout import (
    RolloutConfig,
    RolloutDecision,
    RolloutError,
    abort_rollout,
    apply_rollout_decision,
    evaluate_rollout,
    rollout_state,
    start_rollout,
    step_rollout,
)
from mlp_platform.rollout.guardrails import FAIL, NOT_EVALUATED, PASS, WAIT
from mlp_platform.rollout.observe import observe
from mlp_platform.rollout.state import CANARY, SHADOW, RolloutState
from mlp_platform.serving.decision_log import DecisionLog
from mlp_platform.serving.metrics import ServiceMetrics
from mlp_platform.serving.routing import CANARY_STAGES, RoutingFile, choose_arm
from mlp_platform.settings import load_settings

FEATURES = ["f0", "f1", "f2"]
REVIEW, DECLINE = 0.3, 0.6
FAST = RolloutConfig(shadow_soak_s=0, canary_soak_s=0, shadow_min_observations=300, canary_min_observations=100)
MLFLOW_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLP_DECISION_LOG_DIR", "MLP_DECIDERS_DIR")


def _tiny_trained(seed: int) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(FEATURES)))
    y = (x[:, 0] + rng.normal(scale=0.5, size=300) > 1.0).astype(int)
    params = {"objective": "binary", "num_leaves": 4, "num_threads": 1, "verbosity": -1, "seed": seed}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=FEATURES), num_boost_round=5)
    split = SimpleNamespace(as_dict=lambda: {"train_start": "2026-01-01", "test_end": "2026-02-01"})
    return SimpleNamespace(booster=booster, feature_names=FEATURES, params=params, split=split,
                           metrics={"test_average_precision": 0.5}, search=[], config={},
                           data_fingerprint={"rows": 300, "first_day": "2026-01-01", "last_day": "2026-02-01",
                                             "content_sha256": f"seed{seed}"})


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A data directory with three registered versions (gates passed): v1 champion, v2 and v3 candidates."""
    root = tmp_path_factory.mktemp("rollout-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLP_DATA_DIR", str(root / "data"))
        for var in MLFLOW_VARS:
            mp.delenv(var, raising=False)
        settings = load_settings()
        registry = lifecycle.registry_for(settings)
        refs = [registry.log_training(_tiny_trained(seed), spec_hash="test", code_version="test",
                                      operating_threshold=REVIEW) for seed in (1, 2, 3)]
        for ref in refs:
            registry.set_version_tag(ref.version, "gates", "passed")
        promote(registry, lifecycle.audit_for(settings), refs[0], [GateResult("test", True, "fixture")],
                run_id="fixture")
        lifecycle.sync_routing(settings, updated_by="fixture")
    return root / "data"


@pytest.fixture
def settings(template, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(template, data)
    monkeypatch.setenv("MLP_DATA_DIR", str(data))
    for var in MLFLOW_VARS:
        monkeypatch.delenv(var, raising=False)
    return load_settings()


def decide(score: float) -> str:
    return "decline" if score >= DECLINE else "review" if score >= REVIEW else "approve"


class Traffic:
    """The scoring service's observable side effects for a stream of transactions: decision and shadow
    records in a real decision log and the Prometheus counters of a real ServiceMetrics."""

    def __init__(self, settings, seed: int = 0, log_dir: Path | None = None):
        self.settings = settings
        self.rng = np.random.default_rng(seed)
        self.log = DecisionLog(log_dir or settings.data_dir / "serving" / "decisions")
        self.metrics = ServiceMetrics()
        self.customers = 0

    def metrics_text(self) -> str:
        return generate_latest(self.metrics.registry).decode()

    def serve(self, n: int | None = None, *, challenger_n: int | None = None, shift=lambda s, rng: s,
              latency_s: float = 0.002, challenger_latency_s: float | None = None) -> None:
        """Score ``n`` transactions (or until ``challenger_n`` landed on the challenger) under the routing
        file as it is now. ``shift`` turns the champion's score into the candidate's."""
        routing = RoutingFile(self.settings.routing_path).read()
        records, served, on_challenger = [], 0, 0
        while (n is not None and served < n) or (challenger_n is not None and on_challenger < challenger_n):
            self.customers += 1
            arm, version = choose_arm(routing, f"customer-{self.customers}")
            base = float(self.rng.beta(0.6, 12))
            score = float(np.clip(shift(base, self.rng), 0, 1)) if arm == "challenger" else base
            decision_id = uuid.uuid4().hex
            records.append({"decision_id": decision_id, "kind": "decision",
                            "time": dt.datetime.now(dt.UTC).isoformat(), "arm": arm, "model_version": version,
                            "score": score, "decision": decide(score), "degraded": False,
                            "customer_hash": f"h{self.customers}", "routing_revision": routing.revision})
            self.metrics.requests.labels("/v1/score", "200").inc()
            self.metrics.decisions.labels(decide(score), arm).inc()
            latency = challenger_latency_s if arm == "challenger" and challenger_latency_s else latency_s
            self.metrics.latency.labels("score", arm).observe(latency)
            for shadow in routing.shadows:
                if shadow != version:
                    shadow_score = float(np.clip(shift(base, self.rng), 0, 1))
                    records.append({"decision_id": f"{decision_id}:shadow:{shadow}", "kind": "shadow",
                                    "of_decision": decision_id, "time": dt.datetime.now(dt.UTC).isoformat(),
                                    "model_version": shadow, "score": shadow_score,
                                    "decision": decide(shadow_score), "served_decision": decide(score)})
                    self.metrics.shadow_scores.labels(shadow).inc()
                    if decide(shadow_score) != decide(score):
                        self.metrics.shadow_disagreements.labels(shadow).inc()
            served += 1
            on_challenger += arm == "challenger"
        results = self.log.append_many(records, trusted=True)
        assert not [r for r in results if isinstance(r, BaseException)]

    def fail(self, n: int, status: str = "503") -> None:
        """Requests the service answered with an error (no decision logged)."""
        self.metrics.requests.labels("/v1/score", status).inc(n)

    def close(self) -> None:
        self.log.close()


def same(score: float, rng) -> float:
    """A candidate close to the champion: the same score with a little noise."""
    return score + float(rng.normal(0, 0.002))


def later(seconds: float = 1.0) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


def events(settings) -> list[dict]:
    return lifecycle.audit_for(settings).records()


def verdicts(decision: RolloutDecision) -> dict[str, str]:
    return {g.name: g.verdict for g in decision.guardrails}


def challenger_share_of_customers(state, n: int = 10_000) -> float:
    return sum(choose_arm(state, f"share-check-{i}")[0] == "challenger" for i in range(n)) / n


# --- pure functions ------------------------------------------------------------------------------


def test_psi_on_fixed_bins():
    from mlp_platform.rollout.scores import N_BINS, PSI_FLOOR, SCORE_BIN_EDGES, ScoreSample, psi, score_bin

    assert score_bin(0.0) == 0 and score_bin(0.0009) == 0 and score_bin(0.001) == 1
    assert score_bin(1.0) == N_BINS - 1 and score_bin(1.7) == N_BINS - 1 and score_bin(-0.2) == 0
    assert score_bin(0.55) == SCORE_BIN_EDGES.index(0.5)
    same_counts = [10] * N_BINS
    assert psi(same_counts, same_counts) == 0.0
    assert psi([5] * N_BINS, [50] * N_BINS) == pytest.approx(0.0)  # shares, not counts
    # two bins only differ: 50/50 vs 80/20 -> (0.8-0.5) ln(1.6) + (0.2-0.5) ln(0.4)
    expected, actual = [0] * N_BINS, [0] * N_BINS
    expected[0], expected[1], actual[0], actual[1] = 50, 50, 80, 20
    manual = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(expected, actual) == pytest.approx(manual)
    # an empty bin counts as a floor share: finite, large
    actual = [0] * N_BINS
    actual[5] = 100
    floor_psi = psi(expected, actual)
    assert math.isfinite(floor_psi) and floor_psi > 5
    assert floor_psi == pytest.approx(2 * (PSI_FLOOR - 0.5) * math.log(PSI_FLOOR / 0.5)
                                      + (1 - PSI_FLOOR) * math.log(1 / PSI_FLOOR))
    with pytest.raises(ValueError, match="same bins"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        psi([0] * N_BINS, same_counts)
    # a sample adds up and survives JSON
    sample = ScoreSample()
    for s, d in ((0.0005, "approve"), (0.4, "review"), (0.95, "decline"), (0.96, "decline")):
        sample.add(s, d)
    again = ScoreSample.from_dict(json.loads(json.dumps(sample.to_dict())))
    assert again.counts == sample.counts and again.n == 4 and again.rate("decline") == 0.5
    assert sample.merged(again).n == 8
    with pytest.raises(ValueError, match="NaN"):
        sample.add(float("nan"), "approve")


def test_state_transitions_are_pure_and_checked():
    from mlp_platform.rollout.state import RolloutStateError, begin, step

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    state = begin("7", "3", "run-a", t0, {"x": 1})
    assert (state.stage, state.share, state.active, len(state.history)) == (SHADOW, 0.0, True, 1)
    canary = step(state, CANARY, 0.01, t0 + dt.timedelta(hours=1), "ok", "run-b", [{"name": "g"}])
    assert canary.stage_started_at == "2026-01-01T01:00:00+00:00" and canary.history[-1]["from"] == {
        "stage": SHADOW, "share": 0.0}
    assert state.stage == SHADOW  # the original is untouched
    with pytest.raises(RolloutStateError, match="no step"):
        step(canary, CANARY, 0.01, t0, "same share", "run")
    with pytest.raises(RolloutStateError, match="no step"):
        step(state, "completed", 1.0, t0, "skipping the canary", "run")
    done = step(canary, "rolled_back", 0.0, t0, "bad", "run")
    with pytest.raises(RolloutStateError, match="already rolled_back"):
        step(done, CANARY, 0.05, t0, "again", "run")
    assert RolloutState.from_json(done.to_json()) == done
    with pytest.raises(RolloutStateError, match="not JSON"):
        RolloutState.from_json("{half")
    with pytest.raises(RolloutStateError, match="lacks"):
        RolloutState.from_json('{"candidate": "1"}')
    with pytest.raises(RolloutStateError, match="timezone"):
        begin("7", "3", "run", dt.datetime(2026, 1, 1), {})


def test_config_is_validated():
    with pytest.raises(ValueError, match="end at 1.0"):
        RolloutConfig(canary_stages=(0.01, 0.5))
    with pytest.raises(ValueError, match="increasing"):
        RolloutConfig(canary_stages=(0.5, 0.1, 1.0))
    with pytest.raises(ValueError, match="max_score_psi"):
        RolloutConfig(max_score_psi=-1)
    with pytest.raises(ValueError, match="unknown rollout config keys"):
        RolloutConfig.from_dict({"max_psi": 0.1})
    assert RolloutConfig.from_dict(FAST.to_dict()) == FAST


# --- the happy path ------------------------------------------------------------------------------


def test_full_rollout_shadow_canary_steps_champion(settings):
    traffic = Traffic(settings)
    try:
        outcome = start_rollout(settings, "2", "run-start", FAST, metrics_text=traffic.metrics_text())
        registry = lifecycle.registry_for(settings)
        routing = RoutingFile(settings.routing_path).read()
        assert outcome.applied and outcome.state.stage == SHADOW
        assert (routing.champion, routing.challenger, routing.shadows) == ("1", None, ("2",))
        assert "run-start" in routing.updated_by
        assert registry.alias("shadow") == "2" and registry.alias("champion") == "1"
        assert events(settings)[-1]["event"] == "rollout_started"
        assert events(settings)[-1]["baseline_champion"] == "1"

        traffic.serve(400, shift=same)
        decision = evaluate_rollout(settings, later(), FAST, traffic.metrics_text())
        assert decision.action == "advance", decision.reason
        assert (decision.to_stage, decision.to_share) == (CANARY, CANARY_STAGES[0])
        assert verdicts(decision) == {"shadow_disagreement": PASS, "score_psi": PASS, "decline_rate_increase": PASS,
                                      "error_rate": PASS, "latency_p99_ms": NOT_EVALUATED}
        json.dumps(decision.to_dict())  # Dagster metadata
        seen_shares = []
        for share in CANARY_STAGES:
            outcome = apply_rollout_decision(settings, decision, f"run-{share}", metrics_text=traffic.metrics_text())
            assert outcome.applied and outcome.action == "advance", outcome.message
            routing = RoutingFile(settings.routing_path).read()
            assert (routing.champion, routing.challenger, routing.challenger_share, routing.shadows) == (
                "1", "2", share, ())
            assert f"run-{share}" in routing.updated_by
            assert registry.alias("challenger") == "2" and registry.alias("shadow") is None
            assert registry.version_tags("2")["promotion"] == f"rollout:canary {share:g}"
            last = events(settings)[-1]
            assert (last["event"], last["share_to"], last["by_run"]) == ("rollout_advanced", share, f"run-{share}")
            assert {g["name"] for g in last["guardrails"]} >= {"score_psi", "error_rate", "latency_p99_ms"}
            # sticky routing honours the share
            observed = challenger_share_of_customers(routing)
            assert abs(observed - share) <= 0.01 + 3 * math.sqrt(share * (1 - share) / 10_000), (share, observed)
            seen_shares.append(observed)

            traffic.serve(challenger_n=FAST.canary_min_observations + 20, shift=same)
            decision = evaluate_rollout(settings, later(), FAST, traffic.metrics_text())
            assert verdicts(decision)["latency_p99_ms"] == PASS, decision.reason
            if share < 1.0:
                assert decision.action == "advance", decision.reason
                assert decision.to_share == CANARY_STAGES[CANARY_STAGES.index(share) + 1]
        # at 100% the champion arm saw nothing: the reference is the earlier stages' champion decisions
        assert decision.observation["champion_n"] == 0
        assert decision.action == "complete", decision.reason
        psi_detail = next(g.detail for g in decision.guardrails if g.name == "score_psi")
        assert "earlier stages" in psi_detail
        outcome = apply_rollout_decision(settings, decision, "run-final", metrics_text=traffic.metrics_text())
        assert outcome.applied and outcome.action == "complete"
        routing = RoutingFile(settings.routing_path).read()
        assert (routing.champion, routing.challenger, routing.challenger_share, routing.shadows) == ("2", None, 0.0, ())
        assert registry.alias("champion") == "2" and registry.alias("previous_champion") == "1"
        assert registry.alias("challenger") is None
        assert registry.version_tags("2")["promotion"] == "champion"
        state = rollout_state(settings)
        assert state.stage == "completed" and [h["to"]["stage"] for h in state.history] == [
            SHADOW, CANARY, CANARY, CANARY, CANARY, "completed"]
        names = [r["event"] for r in events(settings)]
        assert names[-7:] == ["rollout_started", "rollout_advanced", "rollout_advanced", "rollout_advanced",
                              "rollout_advanced", "promotion", "rollout_completed"]
        assert verify_chain(events(settings)).ok
        assert evaluate_rollout(settings, later(), FAST).action == "none"
        assert seen_shares[0] < seen_shares[1] < seen_shares[2] < seen_shares[3] == 1.0
        # the model card's trail shows the rollout
        trail = lifecycle.card_evidence(settings, "2")["audit"]
        assert {"rollout_started", "rollout_completed"} <= {r["event"] for r in trail}
    finally:
        traffic.close()


# --- waiting -------------------------------------------------------------------------------------


def test_waits_for_soak_and_for_enough_observations(settings):
    traffic = Traffic(settings)
    try:
        soaking = RolloutConfig(shadow_soak_s=3600, shadow_min_observations=300)
        start_rollout(settings, "2", "run-start", soaking)
        traffic.serve(400, shift=same)
        decision = evaluate_rollout(settings, later(60), soaking)
        assert decision.action == "wait" and "soak" in decision.reason
        assert 3400 < decision.soak_remaining_s <= 3540
        # without metrics the error-rate guardrail is explicitly not evaluated, never passed
        assert verdicts(decision)["error_rate"] == NOT_EVALUATED and "error_rate not evaluated" in decision.reason
        # soak over: the same evidence advances
        snapshot = (settings.rollout_path.read_bytes(), settings.routing_path.read_bytes(), len(events(settings)))
        assert evaluate_rollout(settings, later(3601), soaking).action == "advance"
        # evaluating is read-only
        assert snapshot == (settings.rollout_path.read_bytes(), settings.routing_path.read_bytes(),
                            len(events(settings)))
        # too few observations: a wait, not a pass
        greedy = RolloutConfig(shadow_soak_s=0, shadow_min_observations=5000)
        decision = evaluate_rollout(settings, later(), greedy)
        assert decision.action == "wait"
        assert verdicts(decision)["shadow_disagreement"] == WAIT and "not enough data" in decision.reason
        assert "400 paired shadow scores, need 5000" in decision.reason
        # a stage that never gathers enough data (say the service cannot load the candidate) times out
        decision = evaluate_rollout(settings, later(2 * 86_400), greedy)
        assert decision.action == "rollback" and "stage timed out" in decision.reason
        # require_metrics turns the missing metrics source into a wait
        strict = RolloutConfig(shadow_soak_s=0, shadow_min_observations=300, require_metrics=True)
        decision = evaluate_rollout(settings, later(), strict)
        assert decision.action == "wait" and verdicts(decision)["error_rate"] == WAIT
        # a wait applies nothing
        outcome = apply_rollout_decision(settings, decision, "run-x")
        assert not outcome.applied and rollout_state(settings).stage == SHADOW
    finally:
        traffic.close()


def test_metrics_without_a_stage_snapshot_are_not_evaluated(settings):
    traffic = Traffic(settings)
    try:
        start_rollout(settings, "2", "run-start", FAST)  # no metrics text at the start
        traffic.serve(350, shift=same)
        decision = evaluate_rollout(settings, later(), FAST, traffic.metrics_text())
        error = next(g for g in decision.guardrails if g.name == "error_rate")
        assert error.verdict == NOT_EVALUATED and "no metrics snapshot" in error.detail
        assert decision.action == "advance"
    finally:
        traffic.close()


# --- guardrail failures roll back ---------------------------------------------------------------


def _assert_rolled_back(settings, outcome, guardrail: str) -> None:
    assert outcome.applied and outcome.action == "rollback"
    routing = RoutingFile(settings.routing_path).read()
    assert (routing.champion, routing.challenger, routing.challenger_share, routing.shadows) == ("1", None, 0.0, ())
    assert "run-guard" in routing.updated_by
    registry = lifecycle.registry_for(settings)
    assert registry.alias("champion") == "1"
    assert registry.alias("shadow") is None and registry.alias("challenger") is None
    assert registry.version_tags("2")["promotion"] == "rolled_back"
    assert rollout_state(settings).stage == "rolled_back"
    last = events(settings)[-1]
    assert last["event"] == "rollout_rolled_back" and guardrail in last["reason"]
    failed = [g for g in last["guardrails"] if g["verdict"] == FAIL]
    assert [g["name"] for g in failed] == [guardrail] and failed[0]["value"] > failed[0]["limit"]
    assert verify_chain(events(settings)).ok
    assert choose_arm(routing, "anyone") == ("champion", "1")


def test_shadow_disagreement_rolls_back(settings):
    traffic = Traffic(settings)
    try:
        start_rollout(settings, "2", "run-start", FAST)
        # the candidate declines a slice of what the champion approves: same score shape elsewhere
        flip = lambda s, rng: 0.65 if rng.random() < 0.1 else s  # noqa: E731
        traffic.serve(400, shift=flip)
        only_disagreement = replace(FAST, max_score_psi=10, max_decline_rate_increase=1)
        decision = evaluate_rollout(settings, later(), only_disagreement)
        assert decision.action == "rollback", decision.reason
        assert [g.name for g in decision.failed] == ["shadow_disagreement"]
        value = decision.failed[0].value
        assert 0.05 < value < 0.2 and f"{value:.4g}" in decision.reason
        _assert_rolled_back(settings, apply_rollout_decision(settings, decision, "run-guard"), "shadow_disagreement")
    finally:
        traffic.close()


#: A bigger first canary step keeps the guardrail-failure tests small.
QUARTER = replace(FAST, canary_stages=(0.25, 1.0))


def _to_canary(settings, traffic: Traffic) -> None:
    start_rollout(settings, "2", "run-start", QUARTER, metrics_text=traffic.metrics_text())
    traffic.serve(350, shift=same)
    decision = evaluate_rollout(settings, later(), QUARTER, traffic.metrics_text())
    assert decision.action == "advance" and decision.to_share == 0.25, decision.reason
    apply_rollout_decision(settings, decision, "run-canary", metrics_text=traffic.metrics_text())
    assert RoutingFile(settings.routing_path).read().challenger_share == 0.25


def test_score_distribution_shift_in_canary_rolls_back(settings):
    traffic = Traffic(settings)
    try:
        _to_canary(settings, traffic)
        # the challenger's scores are squeezed towards 0: few decisions change, the distribution does
        traffic.serve(challenger_n=150, shift=lambda s, rng: s / 8)
        decision = evaluate_rollout(settings, later(), QUARTER, traffic.metrics_text())
        assert decision.action == "rollback", decision.reason
        assert "score_psi" in [g.name for g in decision.failed]
        psi_result = next(g for g in decision.guardrails if g.name == "score_psi")
        assert psi_result.value > FAST.max_score_psi and psi_result.limit == FAST.max_score_psi
        assert verdicts(decision)["decline_rate_increase"] == PASS  # fewer declines is not an increase
        outcome = apply_rollout_decision(settings, decision, "run-guard")
        assert outcome.applied
        assert RoutingFile(settings.routing_path).read().challenger is None
        assert "score_psi" in events(settings)[-1]["reason"]
        assert verify_chain(events(settings)).ok
    finally:
        traffic.close()


def test_decline_rate_increase_in_canary_rolls_back(settings):
    traffic = Traffic(settings)
    try:
        _to_canary(settings, traffic)
        # the challenger declines 1 in 20 customers the champion would approve
        traffic.serve(challenger_n=150, shift=lambda s, rng: 0.7 if rng.random() < 0.05 else s)
        decision = evaluate_rollout(settings, later(), QUARTER, traffic.metrics_text())
        assert decision.action == "rollback", decision.reason
        decline = next(g for g in decision.guardrails if g.name == "decline_rate_increase")
        assert decline.verdict == FAIL and 0.01 < decline.value < 0.15
        assert "decline_rate_increase" in decision.reason
    finally:
        traffic.close()


def test_challenger_latency_p99_from_metrics_rolls_back(settings):
    traffic = Traffic(settings)
    try:
        _to_canary(settings, traffic)
        traffic.serve(challenger_n=150, shift=same, challenger_latency_s=0.2)
        decision = evaluate_rollout(settings, later(), QUARTER, traffic.metrics_text())
        assert decision.action == "rollback", decision.reason
        latency = next(g for g in decision.guardrails if g.name == "latency_p99_ms")
        assert latency.verdict == FAIL and latency.value == 250.0  # the 0.25 s bucket holds the p99
        assert "latency_p99_ms=250" in decision.reason
        # without the metrics text, the same evidence cannot judge latency: not evaluated, stated
        blind = evaluate_rollout(settings, later(), QUARTER)
        assert verdicts(blind)["latency_p99_ms"] == NOT_EVALUATED and blind.action == "advance"
        _assert_rolled_back(settings, apply_rollout_decision(settings, decision, "run-guard"), "latency_p99_ms")
    finally:
        traffic.close()


def test_error_rate_from_metrics_rolls_back(settings):
    traffic = Traffic(settings)
    try:
        _to_canary(settings, traffic)
        traffic.serve(challenger_n=150, shift=same)
        traffic.fail(40)  # answered 503 (no decision taken), counted by the service
        decision = evaluate_rollout(settings, later(), QUARTER, traffic.metrics_text())
        assert decision.action == "rollback", decision.reason
        error = next(g for g in decision.guardrails if g.name == "error_rate")
        assert error.verdict == FAIL and error.value == pytest.approx(40 / error.observations)
        _assert_rolled_back(settings, apply_rollout_decision(settings, decision, "run-guard"), "error_rate")
    finally:
        traffic.close()


# --- stale decisions, starts, aborts ---------------------------------------------------------------


def test_stale_decision_is_not_applied(settings):
    traffic = Traffic(settings)
    try:
        start_rollout(settings, "2", "run-start", FAST)
        traffic.serve(350, shift=same)
        decision = evaluate_rollout(settings, later(), FAST)
        assert apply_rollout_decision(settings, decision, "run-1").applied
        routing_before = RoutingFile(settings.routing_path).read()
        audit_before = len(events(settings))
        # the same decision a second time, as a sensor would hand it to a job (through JSON run config)
        handed = RolloutDecision.from_dict(json.loads(json.dumps(decision.to_dict())))
        assert handed == decision
        again = apply_rollout_decision(settings, handed, "run-2")
        assert not again.applied and "stale decision" in again.message
        rollback = RolloutDecision("rollback", "old news", "2", "1", SHADOW, 0.0, decision.stage_started_at,
                                   "rolled_back", 0.0)
        assert not apply_rollout_decision(settings, rollback, "run-3").applied
        assert RoutingFile(settings.routing_path).read() == routing_before
        assert len(events(settings)) == audit_before
        assert rollout_state(settings).share == CANARY_STAGES[0]
    finally:
        traffic.close()


def test_start_refusals_and_abort(settings):
    registry = lifecycle.registry_for(settings)
    registry.set_version_tag("3", "gates", "failed")
    with pytest.raises(RolloutError, match="gates='failed'"):
        start_rollout(settings, "3", "run", FAST)
    with pytest.raises(RolloutError, match="not registered"):
        start_rollout(settings, "99", "run", FAST)
    with pytest.raises(RolloutError, match="already the champion"):
        start_rollout(settings, "1", "run", FAST)
    assert start_rollout(settings, "2", "run", FAST).applied
    assert not start_rollout(settings, "2", "run-again", FAST).applied  # idempotent
    registry.set_version_tag("3", "gates", "passed")
    with pytest.raises(RolloutError, match="rollout of v2 is active"):
        start_rollout(settings, "3", "run", FAST)
    with pytest.raises(ValueError, match="needs a reason"):
        abort_rollout(settings, "run-abort", " ")
    outcome = abort_rollout(settings, "run-abort", "on-call saw odd reason codes")
    assert outcome.applied and rollout_state(settings).stage == "rolled_back"
    assert RoutingFile(settings.routing_path).read().shadows == ()
    assert "on-call saw odd reason codes" in events(settings)[-1]["reason"]
    # after a rollback another candidate may start
    assert start_rollout(settings, "3", "run-3", FAST).state.candidate == "3"
    assert verify_chain(events(settings)).ok


def test_no_champion_means_the_candidate_serves_directly(settings):
    registry = lifecycle.registry_for(settings)
    registry.clear_alias("champion")
    outcome = start_rollout(settings, "2", "run-first", FAST)
    assert outcome.applied and outcome.state.stage == "completed"
    assert registry.alias("champion") == "2"
    routing = RoutingFile(settings.routing_path).read()
    assert (routing.champion, routing.challenger, routing.shadows) == ("2", None, ())
    last_two = events(settings)[-2:]
    assert [r["event"] for r in last_two] == ["promotion", "rollout_completed"]
    assert "no champion" in last_two[1]["reason"]


def test_champion_changed_under_the_rollout_rolls_back(settings):
    start_rollout(settings, "2", "run-start", FAST)
    lifecycle.registry_for(settings).set_alias("champion", "3")  # someone promoted by hand meanwhile
    decision = evaluate_rollout(settings, later(), FAST)
    assert decision.action == "rollback" and "champion changed" in decision.reason


# --- reading the decision log ----------------------------------------------------------------------


def test_observation_reads_every_worker_log_and_skips_torn_tails(settings):
    start_rollout(settings, "2", "run-start", FAST)
    state = rollout_state(settings)
    root = settings.data_dir / "serving" / "decisions"
    workers = [Traffic(settings, seed=i, log_dir=root / f"worker-{i}") for i in range(2)]
    try:
        workers[0].serve(120, shift=same)
        workers[1].serve(80, shift=same)
    finally:
        for worker in workers:
            worker.close()
    # one degraded decision (and its shadow) is left out of the comparison
    with DecisionLog(root / "worker-1") as log:
        log.append({"decision_id": "deg", "kind": "decision", "time": dt.datetime.now(dt.UTC).isoformat(),
                    "arm": "champion", "model_version": "1", "score": 0.01, "decision": "review", "degraded": True})
        log.append({"decision_id": "deg:shadow:2", "kind": "shadow", "of_decision": "deg", "model_version": "2",
                    "time": dt.datetime.now(dt.UTC).isoformat(), "score": 0.01, "decision": "approve",
                    "served_decision": "review"})
    segment = sorted((root / "worker-0").glob("decisions-*.jsonl"))[-1]
    with open(segment, "ab") as fh:  # a commit in progress: no newline yet
        fh.write(b'{"decision_id":"half","kind":"decision","ti')
    with open(sorted((root / "worker-1").glob("decisions-*.jsonl"))[-1], "ab") as fh:
        fh.write(bytes(4096))  # space the writer zero-filled ahead: not a line
    obs = observe(state, root, later())
    assert obs.shadow_pairs == 200 and obs.candidate.n == 200 and obs.champion.n == 200
    assert obs.degraded_skipped == 1 and obs.unpaired_shadows == 0
    assert obs.log.unreadable_lines == 1 and obs.log.directories == 2
    # records before the stage started are not part of it
    assert observe(state, root, dt.datetime.fromisoformat(state.stage_started_at)).shadow_pairs == 0


def test_interrupted_completion_is_finished_not_rolled_back(settings):
    traffic = Traffic(settings)
    try:
        _to_canary(settings, traffic)
        traffic.serve(challenger_n=120, shift=same)
        decision = evaluate_rollout(settings, later(), QUARTER, traffic.metrics_text())
        apply_rollout_decision(settings, decision, "run-100", metrics_text=traffic.metrics_text())
        assert rollout_state(settings).share == 1.0
        # the completing job died after moving the champion alias, before writing the rollout state
        registry = lifecycle.registry_for(settings)
        registry.set_alias("previous_champion", "1")
        registry.set_alias("champion", "2")
        decision = evaluate_rollout(settings, later(), QUARTER, traffic.metrics_text())
        assert decision.action == "complete" and "interrupted" in decision.reason
        outcome = apply_rollout_decision(settings, decision, "run-finish")
        assert outcome.applied and rollout_state(settings).stage == "completed"
        assert registry.alias("champion") == "2" and registry.alias("previous_champion") == "1"
        assert RoutingFile(settings.routing_path).read().challenger is None
    finally:
        traffic.close()


def test_step_rollout_judges_and_applies_in_one_call(settings):
    traffic = Traffic(settings)
    try:
        start_rollout(settings, "2", "run-start", FAST, metrics_text=traffic.metrics_text())
        decision, outcome = step_rollout(settings, "run-tick-1", FAST, metrics_text=traffic.metrics_text())
        assert decision.action == "wait" and not outcome.applied
        traffic.serve(350, shift=same)
        decision, outcome = step_rollout(settings, "run-tick-2", FAST, metrics_text=traffic.metrics_text(),
                                         now=later())
        assert decision.action == "advance" and outcome.applied and outcome.state.share == CANARY_STAGES[0]
        assert outcome.state.metrics_snapshot is not None  # the new stage counts from here
        assert outcome.to_dict()["routing_revision"] == RoutingFile(settings.routing_path).read().revision
    finally:
        traffic.close()


def test_bad_inputs_get_clear_errors(settings):
    start_rollout(settings, "2", "run-start", FAST)
    with pytest.raises(ValueError, match="not in the Prometheus text format"):
        evaluate_rollout(settings, later(), FAST, "<html>bad gateway</html>")
    with pytest.raises(ValueError, match="timezone"):
        evaluate_rollout(settings, dt.datetime(2030, 1, 1), FAST)
    with pytest.raises(ValueError, match="unknown rollout action"):
        apply_rollout_decision(settings, RolloutDecision("promote", "?"), "run")
    with pytest.raises(ValueError, match="unknown rollout decision keys"):
        RolloutDecision.from_dict({"action": "wait", "reason": "", "verdict": "?"})
    settings.rollout_path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        evaluate_rollout(settings, later(), FAST)


def test_lost_challenger_role_stops_the_canary_step(settings):
    traffic = Traffic(settings)
    try:
        _to_canary(settings, traffic)
        traffic.serve(challenger_n=120, shift=same)
        decision = evaluate_rollout(settings, later(), QUARTER, traffic.metrics_text())
        assert decision.action == "advance"
        lifecycle.registry_for(settings).clear_alias("challenger")  # an operator cleared it by hand
        with pytest.raises(RolloutError, match="no longer holds the challenger role"):
            apply_rollout_decision(settings, decision, "run")
        assert rollout_state(settings).share == 0.25  # nothing moved
    finally:
        traffic.close()
