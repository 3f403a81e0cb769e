"""Prometheus metrics of the scoring service. Label values are bounded (endpoints, arms, decisions,
model versions, spec feature names, error types): no ids as labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SCORE_BUCKETS = tuple(i / 20 for i in range(1, 21))


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("mlp_requests_total", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("mlp_request_latency_seconds", "Server-side request latency",
                                 ["endpoint", "arm"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("mlp_errors_total", "Errors by type", ["type"], registry=r)
        self.decisions = Counter("mlp_decisions_total", "Decisions by outcome and routing arm",
                                 ["decision", "arm"], registry=r)
        self.scores = Histogram("mlp_score", "Score distribution per model version", ["model_version"],
                                buckets=SCORE_BUCKETS, registry=r)
        self.fallbacks = Counter("mlp_feature_fallbacks_total", "Features served from a fallback value",
                                 ["feature"], registry=r)
        self.defaults = Counter("mlp_request_defaults_total", "Non-critical request fields defaulted",
                                ["field"], registry=r)
        self.degraded = Counter("mlp_degraded_decisions_total", "Decisions taken with degraded features",
                                registry=r)
        self.store_latency = Histogram("mlp_feature_store_latency_seconds", "Online feature store call latency",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.model_events = Counter("mlp_model_load_events_total", "Model loads by outcome",
                                    ["outcome"], registry=r)
        self.models_loaded = Gauge("mlp_models_loaded", "Model versions currently loaded", registry=r)
        self.shadow_scores = Counter("mlp_shadow_scores_total", "Shadow scorings", ["model_version"], registry=r)
        self.shadow_dropped = Counter("mlp_shadow_dropped_total", "Shadow scorings dropped under overload",
                                      ["model_version"], registry=r)
        self.shadow_disagreements = Counter("mlp_shadow_disagreements_total",
                                            "Shadow decisions different from the served decision",
                                            ["model_version"], registry=r)
        self.routing_revision = Gauge("mlp_routing_revision", "Revision of the routing state in use", registry=r)
        self.feature_drift = Gauge("mlp_feature_drift", "Drift statistic of a feature on the latest monitored day vs the champion's reference", ["feature", "statistic"], registry=r)
        self.prediction_drift = Gauge("mlp_prediction_drift", "Drift statistic of the score distribution on the latest monitored day", ["statistic"], registry=r)
        self.feature_skew = Gauge("mlp_feature_skew_mismatch_rate", "Share of served feature values that differ from the offline recomputation", ["feature"], registry=r)
        self.drift_report_time = Gauge("mlp_drift_report_timestamp_seconds", "When the latest drift report was computed (unix time)", registry=r)
