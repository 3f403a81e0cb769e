"""The review queue's Prometheus series (in the scoring service's registry): cases opened, deferred
to the log reconcile, failed inserts; per decider the queue's size and oldest age against its SLA,
the override rate and the analysts' agreement with the model (refreshed from the database in the
background: a scrape never waits for it), and resolutions by outcome."""

from __future__ import annotations

from prometheus_client import Counter, Gauge


class ReviewMetrics:
    def __init__(self, registry) -> None:
        self.opened = Counter("mlp_review_cases_opened_total", "Review cases opened (new cases written)",
                              registry=registry)
        self.deferred = Counter("mlp_review_cases_deferred_total", "Cases left to the decision-log reconcile "
                                "(the opening queue was full)", ["decider"], registry=registry)
        self.open_failures = Counter("mlp_review_case_open_failures_total", "Cases whose insert failed (opened "
                                     "later by the reconcile)", registry=registry)
        self.queue = Gauge("mlp_review_queue_cases", "Cases waiting (open) or being worked on (claimed)",
                           ["decider", "status"], registry=registry)
        self.oldest = Gauge("mlp_review_queue_oldest_age_seconds", "Age of the oldest unresolved case "
                            "(since its decision)", ["decider"], registry=registry)
        self.sla = Gauge("mlp_review_queue_sla_seconds", "The decider's declared review SLA", ["decider"],
                         registry=registry)
        self.override_rate = Gauge("mlp_review_override_rate", "Share of the last 7 days' resolutions that "
                                   "overrode the decision", ["decider"], registry=registry)
        self.agreement = Gauge("mlp_review_agreement", "Share of the last 7 days' resolutions confirming the "
                               "model's suspicion (label 1)", ["decider"], registry=registry)
        self.resolved_window = Gauge("mlp_review_resolved_7d", "Resolutions in the last 7 days", ["decider"],
                                     registry=registry)
        self.resolutions = Counter("mlp_review_resolutions_total", "Case resolutions by outcome and override",
                                   ["decider", "outcome", "override"], registry=registry)
        self.refresh_failures = Counter("mlp_review_health_refresh_failures_total", "Failed reads of the queue's "
                                        "health from the database", registry=registry)

    def publish(self, health: dict, sla_hours: float) -> None:
        d = health["decider"]
        self.queue.labels(d, "open").set(health["open"])
        self.queue.labels(d, "claimed").set(health["claimed"])
        self.oldest.labels(d).set(health["oldest_age_s"])
        self.sla.labels(d).set(sla_hours * 3600.0)
        self.override_rate.labels(d).set(health["override_rate"])
        self.agreement.labels(d).set(health["agreement"])
        self.resolved_window.labels(d).set(health["resolved_in_window"])
