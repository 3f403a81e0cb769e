"""Several deciders in one scoring process: the fraud decider (/v1/score, and its alias
/v1/deciders/fraud/decide) and the credit decider (/v1/deciders/credit/...), a real credit champion
trained on the German credit data and promoted through its gates, each with its own keys, decision
log, metrics label and hot reload."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from test_serving_api import ADMIN, AUTH, KEY, make_service, register, txn

from mlp_platform.application_lifecycle import (
    decide_application_candidate,
    gate_application_candidate,
    load_application_data,
    train_application_candidate,
)
from mlp_platform.data.german_credit import load_german_credit
from mlp_platform.deciders.declaration import load_decider
from mlp_platform.evaluation.cv_backtest import CVBacktestConfig
from mlp_platform.registry.mlflow_registry import ModelRegistry
from mlp_platform.runtime.loading import registry_loader
from mlp_platform.serving.app import create_app
from mlp_platform.serving.deciders import DeciderHost, DeciderMetrics
from mlp_platform.serving.decision_log import verify_log
from mlp_platform.serving.routing import RoutingFile, RoutingState
from mlp_platform.settings import PROJECT_ROOT, load_settings

pytestmark = pytest.mark.slow
CREDIT_KEY = "credit-key-789"
CREDIT = {"Authorization": f"Bearer {CREDIT_KEY}"}
QUICK = CVBacktestConfig(n_splits=3, n_repeats=1, n_boot=50)


def promote_credit(settings, credit) -> str:
    candidate = train_application_candidate(settings, credit, load_application_data(settings, credit, "german"), QUICK)
    gates = gate_application_candidate(settings, credit, candidate)
    assert decide_application_candidate(settings, credit, candidate, gates, run_id="t", actor="t").promoted
    return candidate.ref.version


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deciders")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLP_DATA_DIR", str(tmp / "data"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        settings = load_settings()
        if not settings.german_credit_path.exists():
            pytest.skip("shared dataset not mounted (MLP_GERMAN_CREDIT_PATH)")
        v1 = register(settings, 1)
        RoutingFile(settings.routing_path).write(RoutingState(champion=v1, updated_by="test"))
        credit = load_decider(PROJECT_ROOT / "deciders", "credit")
        credit_v1 = promote_credit(settings, credit)
        applications = load_german_credit(settings.german_credit_path).applications
        yield {"settings": settings, "v1": v1, "tmp": tmp, "mp": mp, "credit": credit, "credit_v1": credit_v1,
               "applications": [_jsonable(r) for r in applications.head(200).to_dicts()]}


def _jsonable(row: dict) -> dict:
    return {k: v for k, v in row.items() if v is not None}


def make_host(platform, tmp_path, deciders=None, registry=None) -> DeciderHost:
    from prometheus_client import CollectorRegistry

    settings = platform["settings"]
    host = DeciderHost(deciders or [platform["credit"]], log_root=tmp_path, keys={"credit": (CREDIT_KEY,)},
                       admin_keys=(ADMIN,), loader=lambda d: registry_loader(settings, "auto", d),
                       champion=lambda d: ModelRegistry.from_settings(settings, d).alias("champion"),
                       metrics=DeciderMetrics(registry or CollectorRegistry()))
    host.refresh()
    return host


@pytest.fixture
def client(platform, tmp_path):
    service = make_service(platform, tmp_path)
    host = make_host(platform, tmp_path, registry=service.metrics.registry)
    with TestClient(create_app(service, host=host)) as c:
        c.service, c.host = service, host
        yield c


def test_credit_decisions_carry_reasons_and_are_logged_in_their_own_chain(client, platform, tmp_path):
    credit = platform["credit"]
    actions, declines = set(), 0
    for application in platform["applications"][:120]:
        r = client.post("/v1/deciders/credit/decide", json=application, headers=CREDIT)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["decider"] == "credit" and body["model_version"] == platform["credit_v1"]
        assert body["decision"] in credit.policy.actions and 0 < body["score"] < 1
        actions.add(body["decision"])
        if body["decision"] in credit.policy.reasons_for:
            assert 1 <= len(body["reasons"]) <= 4
            codes = {e.code for e in credit.reasons.catalogue.values()}
            assert {x["code"] for x in body["reasons"]} <= codes
        if body["decision"] == "decline":
            declines += 1
        record = client.get(f"/v1/deciders/credit/decisions/{body['decision_id']}", headers=CREDIT).json()
        assert record["decision"] == body["decision"] and record["application_id"] == application["application_id"]
        assert "sex" not in record["features"] and "age_years" not in record["features"]  # not model inputs
    assert declines > 0 and len(actions) >= 3
    report = verify_log(tmp_path / "decisions-credit")
    assert report.ok and report.records == 120
    # the fraud decider's own log holds none of them
    assert len(client.service.decisions) == 0
    metrics = client.get("/metrics").text
    assert 'mlp_decider_decisions_total{decider="credit",decision="decline"}' in metrics


def test_a_key_calls_only_its_decider(client, platform):
    application = platform["applications"][0]
    assert client.post("/v1/deciders/credit/decide", json=application, headers=AUTH).status_code == 401
    assert client.post("/v1/score", json=txn(1), headers=CREDIT).status_code == 401
    assert client.post("/v1/deciders/fraud/decide", json=txn(1), headers=CREDIT).status_code == 401
    assert client.post("/v1/deciders/credit/decide", json=application).status_code == 401
    admin = {"X-API-Key": ADMIN}
    assert client.post("/v1/deciders/credit/decide", json=application, headers=admin).status_code == 200
    # the document names the hosted deciders: any other name is refused before any work (422 naming it)
    r = client.post("/v1/deciders/nope/decide", json=application, headers=admin)
    assert r.status_code == 422 and "name" in r.json()["fields"][0]
    decided = client.post("/v1/deciders/credit/decide", json=application, headers=CREDIT).json()
    # a fraud key cannot read a credit decision either
    assert client.get(f"/v1/deciders/credit/decisions/{decided['decision_id']}", headers=AUTH).status_code == 401


def test_the_fraud_alias_is_the_fraud_route(client):
    a = client.post("/v1/score", json=txn(10), headers=AUTH)
    b = client.post("/v1/deciders/fraud/decide", json=txn(11), headers=AUTH)
    assert a.status_code == b.status_code == 200
    assert set(a.json()) == set(b.json()) and b.json()["decision"] in ("approve", "review", "decline")


@pytest.mark.parametrize("change, field", [
    ({"requested_amount": -5}, "requested_amount"),
    ({"term_months": 0}, "term_months"),
    ({"purpose": "<script>alert(1)</script>"}, "purpose"),
    ({"checking_account": "rich"}, "checking_account"),
    ({"age_years": 12}, "age_years"),
    ({"surprise": 1}, "surprise"),
    ({"application_id": ""}, "application_id"),
])
def test_a_bad_application_is_a_422_naming_the_field(client, platform, change, field):
    application = {**platform["applications"][0], **change}
    r = client.post("/v1/deciders/credit/decide", json=application, headers=CREDIT)
    assert r.status_code == 422 and field in r.json()["fields"], r.text
    r = client.post("/v1/deciders/credit/decide", content=b'{"requested_amount": NaN}', headers=CREDIT)
    assert r.status_code == 422


def test_a_counter_offer_is_the_nearest_approvable_condition_and_every_candidate_is_logged(client, platform,
                                                                                          tmp_path):
    offered = 0
    for application in platform["applications"][:150]:
        r = client.post("/v1/deciders/credit/counter-offer", json=application, headers=CREDIT)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["decision"] == "approve":
            assert body["candidates"] == [] and body["offer"] is None
            continue
        assert 1 <= len(body["candidates"]) <= 16
        assert all(c["requested_amount"] <= application["requested_amount"] for c in body["candidates"])
        if body["offer"] is not None:
            offered += 1
            assert body["offer"]["decision"] == "approve"
            assert body["offer"] == next(c for c in body["candidates"] if c["decision"] == "approve")
        log = client.host.slot("credit").log
        for i, candidate in enumerate(body["candidates"]):
            record = log.get(f"{body['decision_id']}:candidate:{i}")
            assert record["of_decision"] == body["decision_id"] and record["score"] == candidate["score"]
            assert record["offered"] == (candidate == body["offer"])
    assert offered > 0
    assert verify_log(tmp_path / "decisions-credit").ok


def test_a_promotion_of_one_decider_reloads_it_alone(client, platform):
    settings, credit = platform["settings"], platform["credit"]
    before = client.get("/readyz").json()["champion"]
    v2 = promote_credit(settings, credit)
    assert client.get("/v1/deciders").json()["credit"]["version"] == platform["credit_v1"]
    assert client.post("/v1/admin/reload", headers={"X-API-Key": ADMIN}).status_code == 200
    status = client.get("/v1/deciders").json()
    assert status["credit"]["version"] == v2 and status["credit"]["ready"]
    assert client.get("/readyz").json()["champion"] == before  # the fraud decider did not move
    body = client.post("/v1/deciders/credit/decide", json=platform["applications"][3], headers=CREDIT).json()
    assert body["model_version"] == v2


def test_a_decider_without_a_champion_answers_503_and_the_others_serve(platform, tmp_path):
    other = load_decider(PROJECT_ROOT / "deciders", "credit").model_copy(
        update={"model": load_decider(PROJECT_ROOT / "deciders", "credit").model.model_copy(
            update={"registered_name": "credit-untrained"})})
    service = make_service(platform, tmp_path)
    host = make_host(platform, tmp_path, [other])
    with TestClient(create_app(service, host=host)) as c:
        r = c.post("/v1/deciders/credit/decide", json=platform["applications"][0], headers=CREDIT)
        assert r.status_code == 503 and "credit" in r.json()["detail"]
        assert c.post("/v1/score", json=txn(20), headers=AUTH).status_code == 200
        assert c.get("/v1/deciders").json()["credit"]["ready"] is False
    assert KEY  # the fraud key fixture is the fraud decider's


def test_a_credit_only_process_hosts_credit_alone(platform, tmp_path):
    """One Deployment per decider: MLP_SERVE_DECIDERS=credit starts a process (the uvicorn factory the
    Deployment runs) with the credit decider and no fraud decider: /v1/score is not there, /readyz
    says ready once credit serves its champion, decisions are logged in credit's own chain. Before
    the fix, the fraud service was always built (its /v1/score answered and its readiness ruled)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    settings = platform["settings"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLP_DATA_DIR": str(settings.data_dir), "MLP_SERVE_DECIDERS": "credit",
           "MLP_DECIDER_API_KEYS": f"credit:{CREDIT_KEY}", "MLP_ADMIN_KEYS": ADMIN,
           "MLP_DECISION_LOG_DIR": str(tmp_path / "decisions" / "pod-0")}
    env.pop("MLP_API_KEYS", None)
    with (tmp_path / "server.log").open("wb") as server_log:
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "mlp_platform.serving.app:app_from_env",
                                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=server_log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, (tmp_path / "server.log").read_text()[-2000:]
        champion = ModelRegistry.from_settings(settings, platform["credit"]).alias("champion")
        assert ready.json()["deciders"] == {"credit": {"version": champion, "ready": True, "error": None}}
        assert httpx.post(f"{base}/v1/score", headers=AUTH, json=txn(1)).status_code == 404
        assert httpx.get(f"{base}/v1/deciders").json().keys() == {"credit"}
        answer = httpx.post(f"{base}/v1/deciders/credit/decide", headers=CREDIT, json=platform["applications"][0])
        assert answer.status_code == 200 and answer.json()["decider"] == "credit"
        assert httpx.post(f"{base}/v1/deciders/credit/decide", headers=AUTH,
                          json=platform["applications"][0]).status_code == 401  # the fraud key is nobody here
        assert 'mlp_decider_decisions_total{decider="credit"' in httpx.get(f"{base}/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=20)
    # the pod's own chain under the decider's directory: two replicas never write one log
    log_dir = tmp_path / "decisions" / "decisions-credit" / "pod-0"
    assert verify_log(log_dir).ok and verify_log(log_dir).records >= 1
    assert not (tmp_path / "decisions" / "pod-0").exists()  # no fraud decider, no fraud log
