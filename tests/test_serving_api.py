"""The scoring service for real: a LightGBM model registered in a temporary MLflow store, the online
feature store, the durable decision log, routing and hot swaps, behind the FastAPI app."""

import asyncio
import dataclasses
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from test_online_store import redis_server_process

from mlp_platform import lifecycle
from mlp_platform.features.spec import default_spec
from mlp_platform.registry.mlflow_registry import REFERENCE_PROFILE
from mlp_platform.runtime.loading import registry_loader
from mlp_platform.serving.api_models import TransactionIn
from mlp_platform.serving.app import create_app
from mlp_platform.serving.decision_log import DecisionLog, verify_log
from mlp_platform.serving.metrics import ServiceMetrics
from mlp_platform.serving.routing import BUCKETS, RoutingFile, RoutingState, bucket, choose_arm
from mlp_platform.serving.service import ModelPool, ScoringService, ServingConfig
from mlp_platform.serving.store_url import store_from_url
from mlp_platform.settings import load_settings
from mlp_platform.training.trainer import TrainingConfig, matrix, train_model
from tests.servinglib import HISTORY_REPLAY_ENV, config_from_env

KEY, ADMIN = "score-key-123", "admin-key-456"
AUTH = {"Authorization": f"Bearer {KEY}"}


def synthetic_training_frame(seed: int, n: int = 6000) -> pl.DataFrame:
    """A training frame with the spec's columns; fraud depends on amount and recent velocity."""
    rng = np.random.default_rng(seed)
    names = default_spec().feature_names
    data = {name: rng.random(n) * 10 for name in names}
    data["amount"] = rng.lognormal(3, 1, n)
    logit = 0.02 * data["amount"] + 0.5 * data["customer_txn_count_1h"] - 7
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    start = dt.datetime(2026, 1, 1)
    times = [start + dt.timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 40 * 86400, n))]
    return pl.DataFrame({**data, "label": label, "transaction_id": [f"t{i:06d}" for i in range(n)],
                         "event_time": times, "feature_spec_hash": default_spec().spec_hash}).with_columns(
        pl.col("event_time").dt.date().alias("event_date"))


def register(settings, seed: int) -> str:
    """Train and register a version with its reference profile (the training population its reasons
    and drift are judged against; a cheap calibration: the thresholds are not what these tests use)."""
    from mlp_platform.monitoring.profile import build_reference_profile

    frame = synthetic_training_frame(seed)
    names = default_spec().feature_names
    trained = train_model(frame, names, TrainingConfig(seed=seed, n_candidates=1, n_folds=2, max_rounds=60,
                                                       search_max_rounds=30, gap_days=2))
    registry = lifecycle.registry_for(settings)
    ref = registry.log_training(trained, spec_hash=default_spec().spec_hash, code_version="test",
                                operating_threshold=0.3)
    profile = build_reference_profile(frame, names, trained.booster.predict(matrix(frame, names), num_threads=1),
                                      n_boot=3, calibration_sizes=(1000,))
    registry.log_text(ref.run_id, profile.to_json(), REFERENCE_PROFILE)
    return ref.version


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLP_DATA_DIR", str(tmp / "data"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        settings = load_settings()
        v1, v2 = register(settings, 1), register(settings, 2)
        RoutingFile(settings.routing_path).write(RoutingState(champion=v1, updated_by="test"))
        yield {"settings": settings, "v1": v1, "v2": v2, "tmp": tmp, "mp": mp}


def make_service(platform, tmp_path, store_url="memory://", **overrides) -> ScoringService:
    settings = platform["settings"]
    config = ServingConfig(feature_store_url=store_url, decision_log_dir=tmp_path / "decisions",
                           routing_path=tmp_path / "routing.json", api_keys=(KEY,), admin_keys=(ADMIN,),
                           id_hash_key=b"k" * 32, reload_interval_s=3600, **overrides)
    routing = RoutingFile(config.routing_path)
    routing.write(RoutingState(champion=platform["v1"], updated_by="test"))
    metrics = ServiceMetrics()
    pool = ModelPool(registry_loader(settings), routing, metrics)
    assert pool.refresh()
    return ScoringService(config, store_from_url(store_url, **config.store_options()), DecisionLog(config.decision_log_dir),
                          pool, metrics)


def txn(i: int, customer: str = "C1", **extra) -> dict:
    base = {"transaction_id": f"T{i:08d}", "event_time": (dt.datetime(2026, 3, 1, 12) + dt.timedelta(seconds=i)).isoformat(),
            "customer_id": customer, "merchant_id": f"M{i % 7}", "amount": 20.0 + i % 50, "currency": "EUR",
            "channel": "ecom", "country": "DE", "merchant_category": "5411", "device_id": "D1"}
    base.update(extra)
    return base


@pytest.fixture
def client(platform, tmp_path):
    service = make_service(platform, tmp_path)
    with TestClient(create_app(service)) as c:
        c.service = service
        yield c


def test_score_and_explain_a_decision(client, platform):
    r = client.post("/v1/score", json=txn(1), headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"arm": "champion", "version": platform["v1"], "score": body["score"]}
    assert body["decision"] in ("approve", "review", "decline") and 0 <= body["score"] <= 1
    assert body["thresholds"]["review"] == pytest.approx(0.3) and body["latency_ms"] > 0
    trace = client.get(f"/v1/decisions/{body['decision_id']}", headers=AUTH)
    assert trace.status_code == 200
    record = trace.json()["record"]
    assert record["model_version"] == platform["v1"] and len(record["model_sha256"]) == 64
    assert set(record["features"]) == set(default_spec().feature_names)
    assert record["customer_hash"] != "C1" and "C1" not in str(record)  # no raw identifier stored
    assert "fraud score" in trace.json()["explanation"]
    # review/decline decisions carry reason codes with readable text
    client.service.config = dataclasses.replace(client.service.config, threshold_overrides=(("review", 0.0),))
    flagged = client.post("/v1/score", json=txn(2), headers=AUTH).json()
    assert flagged["decision"] in ("review", "decline") and 1 <= len(flagged["reasons"]) <= 3
    assert all(reason["contribution"] > 0 and reason["code"].startswith("R") for reason in flagged["reasons"])
    # an approve has no inline reasons: the trace computes them on demand
    client.service.config = dataclasses.replace(client.service.config, threshold_overrides=(("review", 1.0), ("decline", 1.0)))
    approved = client.post("/v1/score", json=txn(3, amount=5000.0), headers=AUTH).json()
    assert approved["decision"] == "approve" and approved["reasons"] == []
    explained = client.get(f"/v1/decisions/{approved['decision_id']}", headers=AUTH).json()["explanation"]
    assert "raised the score most" in explained or "No factor" in explained
    assert client.get("/v1/decisions/nope", headers=AUTH).status_code == 404


@pytest.mark.parametrize(("change", "field"), [
    ({"amount": None}, "amount"), ({"amount": -3}, "amount"), ({"event_time": "yesterday"}, "event_time"),
    ({"transaction_id": ""}, "transaction_id"), ({"customer_id": None}, "customer_id"),
    ({"transaction_id": "T\x1f1"}, "transaction_id"), ({"device_id": "D\x1f1"}, "device_id"),  # store separator
])
def test_critical_field_errors_are_422_naming_the_field(client, change, field):
    body = {k: v for k, v in {**txn(5), **change}.items() if v is not None}
    r = client.post("/v1/score", json=body, headers=AUTH)
    assert r.status_code == 422 and field in r.json()["fields"]


def test_bad_input_never_500(client):
    assert client.post("/v1/score", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
                       ).status_code == 422
    big = client.post("/v1/score", content=b"{" + b" " * 70_000 + b"}",
                      headers={**AUTH, "content-type": "application/json"})
    assert big.status_code == 413
    assert client.post("/v1/score", json=txn(6)).status_code == 401
    assert client.post("/v1/score", json=txn(6), headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v1/admin/reload", headers=AUTH).status_code == 401
    assert client.post("/v1/admin/reload", headers={"X-API-Key": ADMIN}).status_code == 200
    defaulted = client.post("/v1/score", json=txn(7, channel="carrier-pigeon", country=None), headers=AUTH)
    assert defaulted.status_code == 200 and set(defaulted.json()["defaults_applied"]) == {"channel", "country"}
    metrics = client.get("/metrics").text
    assert 'mlp_request_defaults_total{field="channel"} 1.0' in metrics
    assert "mlp_request_latency_seconds_bucket" in metrics and "mlp_score_bucket" in metrics


def test_health_readiness_and_openapi(client, platform):
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["champion"] == platform["v1"]
    schema = client.get("/openapi.json").json()
    assert "/v1/score" in schema["paths"] and schema["components"]["schemas"]["TransactionIn"]["examples"]


def test_routing_is_sticky_with_the_configured_share():
    state = RoutingState(champion="1", challenger="2", challenger_share=0.25)
    arms = [choose_arm(state, f"C{i}")[0] for i in range(20_000)]
    share = arms.count("challenger") / len(arms)
    assert 0.23 < share < 0.27
    assert all(choose_arm(state, f"C{i}") == choose_arm(state, f"C{i}") for i in range(500))
    assert bucket("C42") == bucket("C42") and 0 <= bucket("C42") < BUCKETS
    # raising the canary share only adds customers to the challenger, never moves one back
    wider = RoutingState(champion="1", challenger="2", challenger_share=0.5)
    assert all(choose_arm(wider, f"C{i}")[0] == "challenger" for i in range(2000)
               if choose_arm(state, f"C{i}")[0] == "challenger")
    with pytest.raises(ValueError):
        RoutingState(champion="1", challenger_share=0.5).validate()
    from mlp_platform.serving.routing import next_canary_share

    assert [next_canary_share(s) for s in (0.0, 0.01, 0.05, 0.25, 1.0)] == [0.01, 0.05, 0.25, 1.0, 1.0]


def test_challenger_split_and_shadow_off_the_critical_path(client, platform, tmp_path):
    routing = RoutingFile(client.service.config.routing_path)
    routing.write(RoutingState(champion=platform["v1"], challenger=platform["v2"], challenger_share=0.5,
                               shadows=(platform["v2"],)))
    assert client.service.pool.refresh()
    seen = {}
    for i in range(60):
        customer = f"C{i % 20}"
        version = client.post("/v1/score", json=txn(100 + i, customer=customer), headers=AUTH).json()["model"]["version"]
        assert seen.setdefault(customer, version) == version  # sticky
    assert set(seen.values()) == {platform["v1"], platform["v2"]}
    # a shadow that hangs: scoring must not wait for it
    release = threading.Event()
    _, models = client.service.pool.snapshot
    client.service._shadow_queue.put((slow_model(models[platform["v2"]], release), np.zeros(32), "blocker", "approve"))
    champion_customer = next(f"S{i}" for i in range(1000) if bucket(f"S{i}") >= BUCKETS // 2)
    started = time.perf_counter()
    r = client.post("/v1/score", json=txn(500, customer=champion_customer), headers=AUTH)
    elapsed = time.perf_counter() - started
    release.set()
    assert r.status_code == 200 and elapsed < 2.0
    client.service.flush_shadows()
    served = r.json()
    assert served["model"]["version"] == platform["v1"]
    shadow = client.service.decisions.get(f"{served['decision_id']}:shadow:{platform['v2']}")
    assert shadow is not None and shadow["kind"] == "shadow" and shadow["served_decision"] == served["decision"]


def slow_model(model, release: threading.Event):
    """The shadow version with a scorer that hangs until released (a stuck shadow)."""
    class Hanging:
        def score(self, row):
            release.wait(10)
            return model.scorer.score(row)

    return dataclasses.replace(model, scorer=Hanging())


def test_overloaded_shadow_work_is_dropped_and_counted(platform, tmp_path):
    service = make_service(platform, tmp_path, shadow_queue_max=2)
    RoutingFile(service.config.routing_path).write(RoutingState(champion=platform["v1"], shadows=(platform["v2"],)))
    assert service.pool.refresh()
    with TestClient(create_app(service)) as c:
        release = threading.Event()
        _, models = service.pool.snapshot
        service._shadow_queue.put((slow_model(models[platform["v2"]], release), np.zeros(32), "blocker", "approve"))
        time.sleep(0.2)  # the worker picks the hanging job up; the queue is empty again
        for i in range(5):
            assert c.post("/v1/score", json=txn(900 + i), headers=AUTH).status_code == 200
        release.set()
        service.flush_shadows()
        metrics = c.get("/metrics").text
    assert f'mlp_shadow_dropped_total{{model_version="{platform["v2"]}"}} 3.0' in metrics
    assert f'mlp_shadow_scores_total{{model_version="{platform["v2"]}"}} 3.0' in metrics  # 2 queued + blocker


def test_shadow_batches_score_exactly_as_one_row_at_a_time(platform, tmp_path):
    """Shadow jobs drained together are scored as one matrix (a C call without the GIL): every logged
    shadow score equals the shadow model's own score of the features served, bit for bit; a batch
    that cannot be scored falls back to row by row, a failing row alone is dropped and counted."""
    service = make_service(platform, tmp_path)
    RoutingFile(service.config.routing_path).write(RoutingState(champion=platform["v1"], shadows=(platform["v2"],)))
    assert service.pool.refresh()
    _, models = service.pool.snapshot
    shadow = models[platform["v2"]]

    class NoBatch:  # a scorer without score_matrix, one whose batch fails, one whose rows fail
        def __init__(self, fail_batch=False, fail_row=None):
            self.fail_batch, self.fail_row = fail_batch, fail_row

        def score(self, row):
            if self.fail_row is not None and row[0] == self.fail_row:
                raise RuntimeError("bad row")
            return float(row[0]) / 10

        def score_matrix(self, x):
            if self.fail_batch:
                raise RuntimeError("batch failed")
            return x[:, 0] / 10

    with TestClient(create_app(service)) as c:
        release = threading.Event()
        service._shadow_queue.put((slow_model(shadow, release), np.zeros(32), "blocker", "approve"))
        time.sleep(0.2)  # the worker holds the blocker: the next jobs queue up and are drained as one batch
        ids = [c.post("/v1/score", json=txn(1200 + i, customer=f"B{i % 4}", amount=10.0 + 37 * i),
                      headers=AUTH).json()["decision_id"] for i in range(12)]
        assert service._shadow_queue.qsize() == 12
        release.set()
        service.flush_shadows()
        # a batch whose matrix call fails is scored row by row; the failing row alone is dropped and counted
        bad = dataclasses.replace(shadow, version="z", scorer=NoBatch(fail_batch=True, fail_row=3.0))
        before = service.metrics.errors.labels("shadow")._value.get()
        release = threading.Event()
        service._shadow_queue.put((slow_model(shadow, release), np.zeros(32), "blocker2", "approve"))
        time.sleep(0.2)
        service._shadow_queue.put((bad, np.full(32, 3.0), "f", "approve"))
        service._shadow_queue.put((bad, np.full(32, 2.0), "g", "approve"))
        release.set()
        service.flush_shadows()
        assert service.metrics.errors.labels("shadow")._value.get() == before + 1
        assert service.decisions.get("g:shadow:z")["score"] == 0.2 and service.decisions.get("f:shadow:z") is None
    names = shadow.feature_names
    for decision_id in ids:
        decision = service.decisions.get(decision_id)
        row = np.asarray([np.nan if decision["features"][n] is None else decision["features"][n] for n in names])
        logged = service.decisions.get(f"{decision_id}:shadow:{platform['v2']}")
        assert logged["score"] == float(shadow.scorer.score(row))  # exact, not approximately
    assert len({service.decisions.get(f"{d}:shadow:{platform['v2']}")["score"] for d in ids}) > 1

    rows = [np.full(32, float(i)) for i in range(4)]
    plain = dataclasses.replace(shadow, scorer=NoBatch())
    del_matrix = dataclasses.replace(shadow, version="x", scorer=type("Rows", (), {"score": NoBatch().score})())
    failing = dataclasses.replace(shadow, version="y", scorer=NoBatch(fail_batch=True))
    jobs = [(plain, rows[0], "a", "approve"), (del_matrix, rows[1], "b", "approve"), (plain, rows[2], "c", "approve"),
            (failing, rows[3], "d", "approve"), (failing, rows[1], "e", "approve")]
    assert ScoringService._shadow_scores(jobs) == [0.0, None, 0.2, None, None]


def test_record_times_are_written_as_datetime_isoformat_writes_them():
    from mlp_platform.serving.service import _Clock, utc_now_iso

    ns = [0, 999, 1_000, 1_780_000_000_000_000_000, 1_780_000_000_000_001_000, 1_780_000_000_999_999_999,
          1_780_000_001_000_000_000, 1_780_000_001_000_000_500, 1_799_999_999_123_456_789]
    ns += [1_780_000_000_000_000_000 + k * 7_654_321_987 for k in range(2000)]
    feed = iter(ns)
    clock = _Clock(lambda: next(feed))
    for value in ns:
        expected = dt.datetime.fromtimestamp(value // 10**9, dt.UTC).replace(microsecond=value // 1000 % 10**6)
        assert clock() == expected.isoformat()
    before = dt.datetime.now(dt.UTC)
    assert before <= dt.datetime.fromisoformat(utc_now_iso()) <= dt.datetime.now(dt.UTC)


def test_hot_swap_under_load_fails_no_request(client, platform):
    routing = RoutingFile(client.service.config.routing_path)
    errors, versions = [], []

    def hammer(worker: int) -> None:
        for i in range(60):
            r = client.post("/v1/score", json=txn(10_000 + worker * 100 + i, customer=f"H{worker}"), headers=AUTH)
            if r.status_code != 200:
                errors.append(r.status_code)
            else:
                versions.append(r.json()["model"]["version"])

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    routing.write(RoutingState(champion=platform["v2"]))
    assert client.post("/v1/admin/reload", headers={"X-API-Key": ADMIN}).json()["champion"] == platform["v2"]
    for t in threads:
        t.join()
    assert errors == [] and len(versions) == 240
    assert versions[-1] == platform["v2"]


def test_registry_down_or_corrupt_version_keeps_the_last_good_model(client, platform, tmp_path):
    service = client.service
    routing = RoutingFile(service.config.routing_path)
    routing.write(RoutingState(champion="999"))  # a version the registry does not have
    assert not service.pool.refresh()
    assert "999" in service.pool.last_error
    r = client.post("/v1/score", json=txn(700), headers=AUTH)
    assert r.status_code == 200 and r.json()["model"]["version"] == platform["v1"]
    assert 'mlp_model_load_events_total{outcome="refused"}' in client.get("/metrics").text
    # the registry itself unreachable: a loader pointed at a closed port refuses, serving continues
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    down = dataclasses.replace(platform["settings"], mlflow_uri=f"http://127.0.0.1:{dead}")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    pool = ModelPool(registry_loader(down), routing, ServiceMetrics())
    pool._snapshot = service.pool.snapshot
    routing.write(RoutingState(champion=platform["v2"]))
    assert not pool.refresh() and pool.snapshot[0].champion == platform["v1"]


def test_incompatible_model_is_refused(client, platform, tmp_path):
    """A version whose model file is corrupt is refused; the previous one keeps serving."""
    registry = lifecycle.registry_for(platform["settings"])
    v3 = register(platform["settings"], 3)
    model_file = next(p for p in registry.model_dir(v3).rglob("*.lgb"))
    source = next(p for p in Path(platform["settings"].data_dir, "mlflow").rglob(model_file.name)
                  if p.read_bytes() == model_file.read_bytes())
    source.write_text("this is not a model")
    RoutingFile(client.service.config.routing_path).write(RoutingState(champion=v3))
    assert not client.service.pool.refresh()
    assert client.post("/v1/score", json=txn(800), headers=AUTH).json()["model"]["version"] == platform["v1"]


def test_feature_store_down_degrades_then_recovers(platform, tmp_path):
    with redis_server_process(tmp_path / "redis") as (proc, port):
        service = make_service(platform, tmp_path, store_url=f"redis://127.0.0.1:{port}/0?timeout=0.2")
        with TestClient(create_app(service)) as c:
            ok = c.post("/v1/score", json=txn(1), headers=AUTH).json()
            assert ok["degraded"] is False
            os.kill(proc.pid, signal.SIGSTOP)  # hung store
            try:
                r = c.post("/v1/score", json=txn(2), headers=AUTH)
                assert r.status_code == 200
                body = r.json()
                assert body["degraded"] is True and body["decision"] in ("review", "decline")
                assert "customer_txn_count_1h" in body["fallbacks"]
                assert c.get("/readyz").status_code == 503
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            recovered = c.post("/v1/score", json=txn(3), headers=AUTH).json()
            assert recovered["degraded"] is False
            assert 'mlp_errors_total{type="feature_store_unavailable"}' in c.get("/metrics").text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_acknowledged_decision_survives_kill_9(platform, tmp_path):
    settings = platform["settings"]
    port = _free_port()
    decisions = tmp_path / "kill9"
    env = {**os.environ, "MLP_DATA_DIR": str(settings.data_dir), "MLP_API_KEYS": KEY,
           "MLP_FEATURE_STORE_URL": "memory://", "MLP_DECISION_LOG_DIR": str(decisions), **HISTORY_REPLAY_ENV}
    with (tmp_path / "server.log").open("wb") as server_log:  # the child has its own copy of the descriptor
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "mlp_platform.serving.app:app_from_env",
                                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=server_log)
    acknowledged: list[str] = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("server did not become ready")
        # the start-up heap (imports, models, app) is frozen out of the collector's full collections
        frozen = re.search(r"start-up heap frozen: (\d+) objects", (tmp_path / "server.log").read_text())
        assert frozen is not None and int(frozen.group(1)) > 50_000

        def load(worker: int) -> None:
            with httpx.Client(timeout=5) as http:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        r = http.post(f"http://127.0.0.1:{port}/v1/score", headers=AUTH,
                                      json=txn(worker * 1_000_000 + i, customer=f"K{worker}"))
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        acknowledged.append(r.json()["decision_id"])

        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        os.kill(server.pid, signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join()
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    assert len(acknowledged) > 20
    report = verify_log(decisions)
    assert report.ok, report.describe()
    with DecisionLog(decisions) as log:
        missing = [d for d in acknowledged if log.get(d) is None]
    assert missing == []


def test_decisions_of_other_workers_are_found_and_audit_verify_checks_every_chain(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mlp_platform.cli import app as cli
    from mlp_platform.serving.decision_log import find_decision

    root = tmp_path / "decisions"
    for worker in ("worker-1", "worker-2"):
        with DecisionLog(root / worker) as log:
            for i in range(5):
                log.append({"decision_id": f"{worker}-d{i}", "kind": "decision", "score": i / 10})
    assert find_decision(root, "worker-2-d3", skip=root / "worker-1")["score"] == 0.3
    assert find_decision(root, "worker-1-d3", skip=root / "worker-1") is None
    runner = CliRunner()
    monkeypatch.setenv("MLP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr("mlp_platform.cli.console.width", 400)  # no wrapping inside long paths
    ok = runner.invoke(cli, ["audit", "verify", "--directory", str(root)])
    assert ok.exit_code == 0, ok.output
    segment = next((root / "worker-2").glob("decisions-*.jsonl"))
    lines = segment.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"score":0.2', '"score":0.9')
    segment.write_text("".join(lines))
    broken = runner.invoke(cli, ["audit", "verify", "--directory", str(root)])
    assert broken.exit_code == 1 and "worker-2" in broken.output


def _drift_report(features: dict, prediction_psi: float, computed_at: str = "2026-02-11T03:00:00+00:00") -> dict:
    return {"day": "2026-02-10", "computed_at": computed_at, "model_version": "3",
            "features": features,
            "prediction": {"psi": prediction_psi, "ks": 0.01, "wasserstein": 0.001, "drifted": False},
            "skew": {"amount": {"mismatch_rate": 0.25}, "not_a_feature": {"mismatch_rate": 0.5}}}


def test_drift_report_is_exported_as_gauges_and_a_bad_file_keeps_the_last_values(platform, tmp_path):
    report_path = tmp_path / "monitoring" / "drift_latest.json"
    service = make_service(platform, tmp_path, drift_report_path=report_path)  # no report yet
    with TestClient(create_app(service)) as c:
        metrics = c.get("/metrics").text
        assert 'mlp_errors_total{type="drift_report"} 1.0' in metrics  # missing: counted once
        assert "mlp_feature_drift{" not in metrics
        service.refresh_periodic()
        assert 'mlp_errors_total{type="drift_report"} 1.0' in c.get("/metrics").text  # not on every poll
        report_path.parent.mkdir(parents=True)
        report_path.write_text(json.dumps(_drift_report(
            {"amount": {"psi": 0.31, "ks": 0.2, "wasserstein": 4.5, "drifted": True},
             "customer_txn_count_1h": {"psi": 0.01, "ks": 0.02, "wasserstein": 0.003, "drifted": False},
             "raw_card_number": {"psi": 9.0, "ks": 1.0, "wasserstein": 1.0}}, prediction_psi=0.02)))
        assert service.refresh_drift_report()
        assert not service.refresh_drift_report()  # unchanged file (same mtime): not re-read
        metrics = c.get("/metrics").text
        assert 'mlp_feature_drift{feature="amount",statistic="psi"} 0.31' in metrics
        assert 'mlp_feature_drift{feature="amount",statistic="wasserstein"} 4.5' in metrics
        assert 'mlp_feature_drift{feature="customer_txn_count_1h",statistic="ks"} 0.02' in metrics
        assert "raw_card_number" not in metrics and "not_a_feature" not in metrics  # bounded labels
        assert 'mlp_prediction_drift{statistic="psi"} 0.02' in metrics
        assert 'mlp_feature_skew_mismatch_rate{feature="amount"} 0.25' in metrics
        stamp = dt.datetime(2026, 2, 11, 3, tzinfo=dt.UTC).timestamp()
        assert "mlp_drift_report_timestamp_seconds " in metrics
        assert service.metrics.registry.get_sample_value("mlp_drift_report_timestamp_seconds") == stamp
        # a torn/corrupt rewrite: the last values stay, the problem is counted once
        report_path.write_text('{"features": {"amount": ')
        os.utime(report_path, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert not service.refresh_drift_report() and not service.refresh_drift_report()
        metrics = c.get("/metrics").text
        assert 'mlp_errors_total{type="drift_report"} 2.0' in metrics
        assert 'mlp_feature_drift{feature="amount",statistic="psi"} 0.31' in metrics
        # the next good report replaces the values
        report_path.write_text(json.dumps(_drift_report(
            {"amount": {"psi": 0.05, "ks": 0.03, "wasserstein": 0.5, "drifted": False}}, prediction_psi=0.4)))
        os.utime(report_path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
        assert service.refresh_drift_report()
        metrics = c.get("/metrics").text
        assert 'mlp_feature_drift{feature="amount",statistic="psi"} 0.05' in metrics
        assert 'mlp_prediction_drift{statistic="psi"} 0.4' in metrics


def test_drift_report_path_defaults_to_the_monitoring_dir(platform, monkeypatch):
    config = config_from_env(platform["settings"])
    assert config.drift_report_path == platform["settings"].monitoring_dir / "drift_latest.json"
    monkeypatch.setenv("MLP_DRIFT_REPORT_PATH", "none")
    assert config_from_env(platform["settings"]).drift_report_path is None


def test_inline_commit_is_on_by_default_and_switched_off_by_the_environment(platform, monkeypatch):
    monkeypatch.delenv("MLP_DECISION_LOG_INLINE_COMMIT", raising=False)
    assert config_from_env(platform["settings"]).log_inline_commit is True
    monkeypatch.setenv("MLP_DECISION_LOG_INLINE_COMMIT", "0")
    assert config_from_env(platform["settings"]).log_inline_commit is False


def test_decision_log_zero_fills_one_mib_ahead_unless_the_environment_says_otherwise(platform, monkeypatch):
    monkeypatch.delenv("MLP_DECISION_LOG_ZERO_AHEAD_BYTES", raising=False)
    assert config_from_env(platform["settings"]).log_zero_ahead_bytes == 1024 * 1024
    monkeypatch.setenv("MLP_DECISION_LOG_ZERO_AHEAD_BYTES", "0")
    assert config_from_env(platform["settings"]).log_zero_ahead_bytes == 0


def _without_volatile(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("decision_id", "latency_ms")}


def test_fast_path_answers_exactly_as_the_fastapi_route(platform, tmp_path):
    """POST /v1/score through the raw-ASGI fast path and through the FastAPI route alone: the same
    bodies for decisions (approve and with reasons, defaults applied) and the same refusals."""
    bodies = {}
    for fast in (True, False):
        service = make_service(platform, tmp_path / ("fast" if fast else "route"))
        with TestClient(create_app(service, fast_path=fast)) as c:
            out = bodies[fast] = []
            out.append(c.post("/v1/score", json=txn(1), headers=AUTH))
            out.append(c.post("/v1/score", json=txn(2, channel="carrier-pigeon", currency=None), headers=AUTH))
            service.config = dataclasses.replace(service.config, threshold_overrides=(("review", 0.0),))
            out.append(c.post("/v1/score", json=txn(3, amount=900.0), headers=AUTH))  # review/decline + reasons
            out.append(c.post("/v1/score", json={**txn(4), "amount": "lots"}, headers=AUTH))
            out.append(c.post("/v1/score", json={k: v for k, v in txn(5).items() if k != "merchant_id"},
                              headers=AUTH))
            out.append(c.post("/v1/score", content=b"{not json", headers={**AUTH, "content-type": "application/json"}))
            out.append(c.post("/v1/score", content=json.dumps(txn(6)).encode(),
                              headers={**AUTH, "content-type": "text/plain"}))
            out.append(c.post("/v1/score", content=b"", headers={**AUTH, "content-type": "application/json"}))
            out.append(c.post("/v1/score", json=txn(7), headers={"X-API-Key": "wrong"}))
            out.append(c.post("/v1/score", content=b"[" + b"1," * 40_000 + b"1]", headers=AUTH))
            out.append(c.post("/v1/score", json=txn(8), headers={"X-API-Key": ADMIN}))  # admin keys may score
            out.append(c.get("/metrics"))
    for fast_r, route_r in zip(bodies[True][:-1], bodies[False][:-1], strict=True):
        assert fast_r.status_code == route_r.status_code, (fast_r.text, route_r.text)
        assert fast_r.headers["content-type"] == route_r.headers["content-type"]
        if fast_r.status_code == 200:
            assert _without_volatile(fast_r.json()) == _without_volatile(route_r.json())
            assert len(fast_r.json()["decision_id"]) == 32 and fast_r.json()["latency_ms"] > 0
        else:
            assert fast_r.json() == route_r.json()
    statuses = [r.status_code for r in bodies[True][:-1]]
    assert statuses == [200, 200, 200, 422, 422, 422, 422, 422, 401, 413, 200]
    assert bodies[True][1].json()["defaults_applied"] == ["channel", "currency"]
    assert bodies[True][2].json()["reasons"] and bodies[True][2].json()["decision"] != "approve"
    assert bodies[True][3].json()["fields"] == ["amount"] and bodies[True][4].json()["fields"] == ["merchant_id"]
    assert "amount" in bodies[True][3].json()["message"]
    # the same counters on both paths
    for line in ('mlp_requests_total{endpoint="/v1/score",status="200"} 4.0',
                 'mlp_requests_total{endpoint="/v1/score",status="422"} 5.0',
                 'mlp_errors_total{type="validation"} 5.0', 'mlp_errors_total{type="unauthorized"} 1.0',
                 'mlp_request_defaults_total{field="channel"} 1.0'):
        assert line in bodies[True][-1].text and line in bodies[False][-1].text, line


def test_fast_path_reads_a_body_sent_in_chunks_and_refuses_a_streamed_oversize_one(client):
    payload = json.dumps(txn(11)).encode()

    def chunks(data: bytes, size: int):
        for i in range(0, len(data), size):
            yield data[i:i + size]

    r = client.post("/v1/score", content=chunks(payload, 7), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 200 and r.json()["model"]["arm"] == "champion"
    big = client.post("/v1/score", content=chunks(b"{" + b" " * 70_000 + b"}", 4096),
                      headers={**AUTH, "content-type": "application/json"})
    assert big.status_code == 413 and "larger than" in big.json()["detail"]


def test_fast_path_answers_503_when_no_model_is_loaded(platform, tmp_path):
    service = make_service(platform, tmp_path)
    service.pool._snapshot = (RoutingState(), {})
    with TestClient(create_app(service)) as c:
        r = c.post("/v1/score", json=txn(1), headers=AUTH)
        assert r.status_code == 503 and r.json()["detail"].startswith("not ready")
        assert 'mlp_requests_total{endpoint="/v1/score",status="503"} 1.0' in c.get("/metrics").text


@pytest.mark.parametrize("inline", [True, False])
def test_a_lone_request_commits_its_own_decision_record(platform, tmp_path, inline):
    """One request in flight: its decision record is committed on the event loop (no writer thread
    hand-off) unless switched off; concurrent requests go through the writer (group commit). Either
    way every decision is logged with its shadow record and the chain verifies."""
    # review threshold 0: every request awaits its reason codes in a thread, so the 16 gathered below are
    # really in flight together
    service = make_service(platform, tmp_path, log_inline_commit=inline, threshold_overrides=(("review", 0.0),))
    RoutingFile(service.config.routing_path).write(RoutingState(champion=platform["v1"], shadows=(platform["v2"],)))
    assert service.pool.refresh()

    async def run() -> tuple[list, list]:
        alone = [await service.score(TransactionIn(**txn(700 + i))) for i in range(8)]
        together = await asyncio.gather(*(service.score(TransactionIn(**txn(800 + i, customer=f"G{i}")))
                                          for i in range(16)))
        return alone, together

    alone, together = asyncio.run(run())
    log_ = service.decisions
    inline_alone = log_.inline_commit_count
    assert inline_alone == (8 if inline else 0) or (inline and inline_alone >= 7)  # the writer may be busy once
    service.flush_shadows()
    for out in [*alone, *together]:
        assert log_.get(out.decision_id)["score"] == out.score
        assert log_.get(f"{out.decision_id}:shadow:{platform['v2']}") is not None
    # 16 together: only the last of them can be alone when it reaches the log
    assert log_.inline_commit_count - inline_alone <= (1 if inline else 0)
    assert service._in_flight == 0
    asyncio.run(service.close())
    assert verify_log(tmp_path / "decisions").ok


def test_requests_ready_together_share_commits_even_without_awaiting_before_the_log(platform, tmp_path):
    """With an in-process store an approve decision runs to the decision log without awaiting, so each
    request looks alone by the in-flight count when it gets there. Requests that were ready together
    must still share the writer's group commit instead of each committing inline behind the other's
    fdatasync: of 16 gathered, only the first commits inline. Once the load has gone, lone requests
    commit inline again."""
    service = make_service(platform, tmp_path, threshold_overrides=(("review", 1.0),))  # every decision an approve
    log_ = service.decisions

    async def score(i: int, customer: str):
        return await service.score(TransactionIn(**txn(i, customer=customer)))

    async def run() -> dict:
        counts = {}
        first = await score(900, "H")
        counts["first"] = (log_.inline_commit_count, log_.commit_count)
        together = await asyncio.gather(*(score(901 + i, f"H{i}") for i in range(16)))
        counts["together"] = (log_.inline_commit_count, log_.commit_count)
        after = []
        for i in range(3):  # one at a time, with the network's gap between them
            await asyncio.sleep(0.001)
            after.append(await score(950 + i, "H"))
        counts["after"] = (log_.inline_commit_count, log_.commit_count)
        return {"outs": [first, *together, *after], "counts": counts}

    result = asyncio.run(run())
    outs, counts = result["outs"], result["counts"]
    assert all(out.decision == "approve" for out in outs)  # no await for reason codes on the way
    assert counts["first"][0] == 1
    inline_together = counts["together"][0] - counts["first"][0]
    commits_together = counts["together"][1] - counts["first"][1]
    assert inline_together <= 1 and commits_together < 16, counts
    assert counts["after"][0] - counts["together"][0] >= 2, counts  # lone again: inline resumes
    for out in outs:
        assert log_.get(out.decision_id)["score"] == out.score
    assert service._in_flight == 0
    asyncio.run(service.close())
    assert verify_log(tmp_path / "decisions").ok


def test_the_scorer_backend_setting_reaches_the_loaded_model(platform, monkeypatch):
    """MLP_SCORER_BACKEND=lightgbm (the measured peer of the compiled trees) loads the version on
    LightGBM's own single-row path, with the same scores; reverted (registry_loader not handing the
    backend to FastScorer) the backend stays "compiled"."""
    import numpy as np

    from mlp_platform.settings import load_settings
    monkeypatch.setenv("MLP_SCORER_BACKEND", "lightgbm")
    settings = load_settings()
    assert settings.serving.scorer_backend == "lightgbm"
    peer = registry_loader(settings, settings.serving.scorer_backend)(platform["v1"])
    compiled = registry_loader(settings)(platform["v1"])
    assert peer.scorer.backend == "lightgbm" and compiled.scorer.backend == "compiled"
    rows = np.random.default_rng(3).uniform(0, 50, size=(64, len(peer.feature_names)))
    assert [peer.scorer.score(r) for r in rows] == [compiled.scorer.score(r) for r in rows]
