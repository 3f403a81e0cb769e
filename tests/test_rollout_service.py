"""The staged rollout against the real scoring service: two LightGBM versions in a temporary MLflow
store, the FastAPI app scoring transactions, its decision log and its /metrics. Checks that what the
service writes (decision and shadow records, metric names and labels) is what the rollout reads."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from test_serving_api import ADMIN, AUTH, KEY, register, txn

from mlp_platform import lifecycle
from mlp_platform.registry.audit import verify_chain
from mlp_platform.rollout import RolloutConfig, apply_rollout_decision, evaluate_rollout, start_rollout
from mlp_platform.rollout.guardrails import NOT_EVALUATED, PASS
from mlp_platform.rollout.observe import decision_log_root
from mlp_platform.runtime.loading import registry_loader
from mlp_platform.serving.app import create_app
from mlp_platform.serving.decision_log import DecisionLog
from mlp_platform.serving.metrics import ServiceMetrics
from mlp_platform.serving.routing import RoutingFile
from mlp_platform.serving.service import ModelPool, ScoringService, ServingConfig
from mlp_platform.serving.store_url import store_from_url
from mlp_platform.settings import load_settings

#: Plumbing, not model quality: limits wide enough for two small models trained on random features.
CONFIG = RolloutConfig(shadow_soak_s=0, canary_soak_s=0, shadow_min_observations=40, canary_min_observations=30,
                       canary_stages=(0.25, 1.0), max_score_psi=50, max_shadow_disagreement=1.0,
                       max_decline_rate_increase=1.0, max_error_rate=0.0, max_p99_latency_ms=1000)


@pytest.fixture
def service_world(tmp_path, monkeypatch):
    monkeypatch.setenv("MLP_DATA_DIR", str(tmp_path / "data"))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLP_DECISION_LOG_DIR"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings()
    v1, v2 = register(settings, 1), register(settings, 2)
    registry = lifecycle.registry_for(settings)
    registry.set_version_tag(v2, "gates", "passed")
    registry.set_alias("champion", v1)
    lifecycle.sync_routing(settings, updated_by="test")
    config = ServingConfig(feature_store_url="memory://", decision_log_dir=decision_log_root(settings),
                           routing_path=settings.routing_path, api_keys=(KEY,), admin_keys=(ADMIN,),
                           id_hash_key=b"k" * 32, reload_interval_s=3600)
    metrics = ServiceMetrics()
    pool = ModelPool(registry_loader(settings), RoutingFile(config.routing_path), metrics)
    assert pool.refresh()
    service = ScoringService(config, store_from_url(config.feature_store_url),
                             DecisionLog(config.decision_log_dir), pool, metrics)
    with TestClient(create_app(service)) as client:
        client.service = service
        yield settings, client, v1, v2


def _traffic(client, start: int, n: int) -> int:
    for i in range(start, start + n):
        r = client.post("/v1/score", json=txn(i, customer=f"C{i}", amount=5.0 + (i * 37) % 900), headers=AUTH)
        assert r.status_code == 200, r.text
    client.service.flush_shadows()
    return start + n


def _reload(client) -> None:
    assert client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def _metrics(client) -> str:
    return client.get("/metrics").text


def test_rollout_reads_what_the_service_writes(service_world):
    settings, client, v1, v2 = service_world
    start_rollout(settings, v2, "run-start", CONFIG, metrics_text=_metrics(client))
    _reload(client)
    assert client.service.pool.snapshot[0].shadows == (v2,)
    i = _traffic(client, 0, 60)
    decision = evaluate_rollout(settings, dt.datetime.now(dt.UTC), CONFIG, _metrics(client))
    assert decision.observation["shadow_pairs"] == 60, decision.observation
    assert decision.action == "advance", decision.reason
    verdicts = {g.name: g.verdict for g in decision.guardrails}
    assert verdicts == {"shadow_disagreement": PASS, "score_psi": PASS, "decline_rate_increase": PASS,
                        "error_rate": PASS, "latency_p99_ms": NOT_EVALUATED}
    assert next(g for g in decision.guardrails if g.name == "error_rate").observations == 60

    apply_rollout_decision(settings, decision, "run-canary", metrics_text=_metrics(client))
    _reload(client)
    assert client.service.pool.snapshot[0].challenger_share == 0.25
    i = _traffic(client, i, 200)
    decision = evaluate_rollout(settings, dt.datetime.now(dt.UTC), CONFIG, _metrics(client))
    observed = decision.observation
    assert observed["candidate_n"] + observed["champion_n"] == 200 and 30 <= observed["candidate_n"] <= 80
    latency = next(g for g in decision.guardrails if g.name == "latency_p99_ms")
    assert latency.verdict == PASS and latency.observations == observed["candidate_n"]
    assert decision.action == "advance" and decision.to_share == 1.0, decision.reason

    apply_rollout_decision(settings, decision, "run-100", metrics_text=_metrics(client))
    _reload(client)
    i = _traffic(client, i, 40)
    decision = evaluate_rollout(settings, dt.datetime.now(dt.UTC), CONFIG, _metrics(client))
    assert decision.observation["candidate_n"] == 40 and decision.observation["champion_n"] == 0
    assert decision.action == "complete", decision.reason
    apply_rollout_decision(settings, decision, "run-final", metrics_text=_metrics(client))
    _reload(client)
    body = client.post("/v1/score", json=txn(i, customer="C-after"), headers=AUTH).json()
    assert body["model"]["version"] == v2 and body["model"]["arm"] == "champion"
    assert verify_chain(lifecycle.audit_for(settings).records()).ok
