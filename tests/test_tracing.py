"""Request tracing of the scoring service: the span tree of one request (in-memory exporter), nothing
at all when tracing is off (not even an OpenTelemetry import), and a real OTLP/HTTP export to a
receiver on 127.0.0.1 whose protobuf body is decoded."""

import json
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from fastapi.testclient import TestClient
from test_serving_api import AUTH, make_service, platform, txn  # noqa: F401 - platform is a fixture

from mlp_platform.serving.app import create_app
from mlp_platform.serving.tracing import request_tracer, tracer_from_env
from mlp_platform.settings import PROJECT_ROOT

STAGES = ("validation", "feature_fetch", "model_score", "decision_log_append")


def in_memory_tracer():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    return request_tracer(exporter, batch=False, service_name="mlp-test"), exporter


def test_one_scoring_request_is_one_span_tree(platform, tmp_path):  # noqa: F811
    tracer, exporter = in_memory_tracer()
    service = make_service(platform, tmp_path)
    service.tracer = tracer
    with TestClient(create_app(service)) as c:
        r = c.post("/v1/score", json=txn(1, customer="C-secret-42"), headers=AUTH)
        assert r.status_code == 200
        body = r.json()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"score", *STAGES}
    root = spans["score"]
    assert root.parent is None and root.kind.name == "SERVER"
    for stage in STAGES:
        span = spans[stage]
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
    # the stages in request order
    assert [s.name for s in sorted(spans.values(), key=lambda s: s.start_time)] == ["score", *STAGES]
    assert root.attributes["mlp.model_version"] == platform["v1"] == body["model"]["version"]
    assert root.attributes["mlp.arm"] == "champion" and root.attributes["mlp.decision"] == body["decision"]
    assert spans["model_score"].attributes["mlp.decision"] == body["decision"]
    assert spans["feature_fetch"].attributes["mlp.degraded"] is False
    assert root.resource.attributes["service.name"] == "mlp-test"
    # bounded attribute values only: no identifier, amount or decision id anywhere
    values = [str(v) for s in spans.values() for v in s.attributes.values()]
    for secret in ("C-secret-42", "T00000001", "M1", "D1", body["decision_id"], "21.0"):
        assert not any(secret in v for v in values), secret


def test_an_invalid_request_is_a_failed_validation_span(platform, tmp_path):  # noqa: F811
    tracer, exporter = in_memory_tracer()
    service = make_service(platform, tmp_path)
    service.tracer = tracer
    with TestClient(create_app(service)) as c:
        bad = {k: v for k, v in txn(2).items() if k != "amount"}
        assert c.post("/v1/score", json=bad, headers=AUTH).status_code == 422
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"score", "validation"}
    assert spans["validation"].status.status_code.name == "ERROR"
    assert "amount" in spans["validation"].status.description
    assert spans["score"].status.status_code.name == "ERROR"


def test_tracing_is_off_unless_asked_and_unknown_modes_are_refused():
    assert tracer_from_env({}) is None and tracer_from_env({"MLP_TRACING": "off"}) is None
    with pytest.raises(ValueError, match="MLP_TRACING='jaeger'"):
        tracer_from_env({"MLP_TRACING": "jaeger"})
    assert tracer_from_env({"MLP_TRACING": "console"}) is not None


OFF_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import numpy as np, lightgbm as lgb
    from fastapi.testclient import TestClient
    from mlp_platform.features.spec import default_spec
    from mlp_platform.serving.app import create_app
    from mlp_platform.serving.decision_log import DecisionLog
    from mlp_platform.serving.metrics import ServiceMetrics
    from mlp_platform.serving.store_url import store_from_url
    from mlp_platform.serving.routing import RoutingFile, RoutingState
    from mlp_platform.runtime.loading import LoadedModel
    from mlp_platform.serving.service import ModelPool, ScoringService, ServingConfig
    from mlp_platform.serving.tracing import tracer_from_env

    tmp = sys.argv[1]
    names = default_spec().feature_names
    rng = np.random.default_rng(0)
    x = rng.random((400, len(names)))
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(x, (x[:, 0] > 0.7).astype(int)), num_boost_round=5)

    class BoosterScorer:
        def score(self, row):
            return float(booster.predict(row.reshape(1, -1), num_threads=1)[0])

        def contributions(self, row):
            return booster.predict(row.reshape(1, -1), pred_contrib=True, num_threads=1)[0]

    config = ServingConfig(feature_store_url="memory://", decision_log_dir=__import__("pathlib").Path(tmp) / "d",
                           routing_path=__import__("pathlib").Path(tmp) / "routing.json", api_keys=("k",),
                           admin_keys=(), id_hash_key=b"k" * 32, reload_interval_s=3600)
    RoutingFile(config.routing_path).write(RoutingState(champion="1"))
    metrics = ServiceMetrics()
    pool = ModelPool(lambda v: LoadedModel(v, BoosterScorer(), 0.5, "0" * 64, names),
                     RoutingFile(config.routing_path), metrics)
    pool.refresh()
    service = ScoringService(config, store_from_url("memory://"), DecisionLog(config.decision_log_dir), pool,
                             metrics, tracer=tracer_from_env(__import__('os').environ))
    with TestClient(create_app(service)) as c:
        statuses = [c.post("/v1/score", headers={"X-API-Key": "k"}, json={
            "transaction_id": f"T{i}", "event_time": "2026-03-01T12:00:00", "customer_id": "C1",
            "merchant_id": "M1", "amount": 10.0 + i}).status_code for i in range(5)]
        statuses.append(c.post("/v1/score", headers={"X-API-Key": "k"}, json={"amount": 1}).status_code)
    print(json.dumps({"statuses": statuses, "tracer": service.tracer is not None,
                      "otel_sdk": sorted(m for m in sys.modules
                                         if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))),
                      "tracing_module_imports_otel": "opentelemetry.sdk" in sys.modules}))
""")


def test_with_tracing_off_the_request_path_never_imports_opentelemetry(tmp_path):
    """No tracer, no OpenTelemetry SDK or exporter loaded by serving requests. (FastAPI >= 0.16x imports
    the OpenTelemetry *API* itself for its own telemetry, which stays a no-op unless a global provider
    is configured: the API package is in sys.modules regardless of this service.)"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MLP_TRACING", "OTEL_"))}
    out = subprocess.run([sys.executable, "-c", OFF_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         cwd=PROJECT_ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"statuses": [200] * 5 + [422], "tracer": False, "otel_sdk": [],
                      "tracing_module_imports_otel": False}


class _Receiver(BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP trace receiver: keeps each POST body sent to /v1/traces."""

    bodies: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(length)
        if self.path == "/v1/traces":
            self.bodies.append((self.headers.get("Content-Type"), data))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args):
        pass


def test_otlp_http_export_reaches_a_loopback_receiver(platform, tmp_path, monkeypatch):  # noqa: F811
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    _Receiver.bodies = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "mlp-scoring-test")
        tracer = tracer_from_env({"MLP_TRACING": "otlp", "OTEL_SERVICE_NAME": "mlp-scoring-test"})
        service = make_service(platform, tmp_path)
        service.tracer = tracer
        with TestClient(create_app(service)) as c:  # leaving it closes the service: spans are flushed
            for i in range(3):
                assert c.post("/v1/score", json=txn(30 + i), headers=AUTH).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
    assert _Receiver.bodies, "the exporter sent nothing"
    names, services, parents = [], set(), {}
    for content_type, data in _Receiver.bodies:
        assert content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest()
        request.ParseFromString(data)
        for resource_spans in request.resource_spans:
            services |= {a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    names.append(span.name)
                    parents[span.span_id] = (span.name, span.parent_span_id)
    assert sorted(names) == sorted(["score", *STAGES] * 3)
    assert services == {"mlp-scoring-test"}
    for name, parent in parents.values():
        assert (parent == b"") == (name == "score")
        if parent:
            assert parents[parent][0] == "score"
