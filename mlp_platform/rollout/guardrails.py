"""Rollout configuration and the guardrails that judge a stage: error rate, p99 latency of the
challenger arm, score-distribution shift (PSI, see :mod:`mlp_platform.rollout.scores`) and
decline-rate increase of the candidate vs the champion, and shadow disagreement.

Each guardrail gives a verdict: ``pass``, ``fail`` (value beyond its limit: the rollout is rolled
back), ``wait`` (fewer observations than the stage's minimum: not a pass) or ``not_evaluated``
(no data source for it in this stage, e.g. no metrics text; the reason says so explicitly; with
``require_metrics`` a missing metrics source is a ``wait`` instead).

Per stage:

* shadow: shadow disagreement (shadow decision != served decision), PSI and decline-rate increase of
  the candidate's shadow scores vs the served champion scores of the same decisions, error rate =
  failed shadow scorings / shadow scorings (``mlp_errors_total{type="shadow"}``); latency is not
  applicable (shadow scoring is off the critical path).
* canary: PSI and decline-rate increase of the challenger arm vs the champion arm (this stage's
  champion decisions, topped up with the champion decisions of the earlier stages when this stage
  has too few, as in the 100% stage), error rate = 5xx share of ``/v1/score`` requests (the service
  does not label errors by arm, so this is the whole service's, conservatively), p99 latency of the
  challenger arm (``mlp_request_latency_seconds{endpoint="score",arm="challenger"}``; the upper
  bound of the histogram bucket holding the 99th percentile).

An application decider's error and latency guardrails read its own series instead, by arm:
``mlp_decider_shadow_scores_total{decider,result}`` in shadow, the challenger arm's
``mlp_decider_requests_total{decider,arm,outcome}`` and
``mlp_decider_request_latency_seconds{decider,route="decide",arm}`` in canary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from mlp_platform.rollout.observe import SCORE_ENDPOINT, Observation
from mlp_platform.rollout.scores import ScoreSample, psi
from mlp_platform.rollout.state import CANARY, SHADOW
from mlp_platform.serving.routing import CANARY_STAGES

PASS, FAIL, WAIT, NOT_EVALUATED = "pass", "fail", "wait", "not_evaluated"


@dataclass(frozen=True)
class RolloutConfig:
    """Soaks (seconds), minimum observations and guardrail limits of a staged rollout."""

    shadow_soak_s: float = 3600.0
    canary_soak_s: float = 1800.0  # each canary stage
    shadow_min_observations: int = 1000  # paired shadow scores of the candidate
    canary_min_observations: int = 500  # decisions on the challenger arm (and champion reference)
    canary_stages: tuple[float, ...] = CANARY_STAGES
    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 50.0
    max_score_psi: float = 0.2
    max_shadow_disagreement: float = 0.05
    max_decline_rate_increase: float = 0.01  # absolute: 0.01 = one percentage point
    require_metrics: bool = False
    #: A stage still short of data after this long is rolled back (0: wait for ever).
    max_stage_s: float = 86_400.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "canary_stages", tuple(float(s) for s in self.canary_stages))
        stages = self.canary_stages
        if not stages or any(not 0.0 < s <= 1.0 for s in stages) or list(stages) != sorted(set(stages)):
            raise ValueError(f"canary_stages {stages} must be increasing shares in (0, 1]")
        if stages[-1] != 1.0:
            raise ValueError(f"canary_stages {stages} must end at 1.0 (all traffic) before completion")
        for f in fields(self):
            value = getattr(self, f.name)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if f.name != "canary_stages" and numeric and (not value >= 0 or math.isinf(value)):
                raise ValueError(f"rollout config {f.name}={value!r} must be a finite number >= 0")
        for name in ("shadow_min_observations", "canary_min_observations"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollout config {name} must be at least 1")

    def soak_s(self, stage: str) -> float:
        return self.shadow_soak_s if stage == SHADOW else self.canary_soak_s

    def min_observations(self, stage: str) -> int:
        return self.shadow_min_observations if stage == SHADOW else self.canary_min_observations

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "canary_stages": list(self.canary_stages)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any] | None) -> RolloutConfig:
        doc = dict(doc or {})
        unknown = set(doc) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown rollout config keys {sorted(unknown)}")
        if "canary_stages" in doc:
            doc["canary_stages"] = tuple(doc["canary_stages"])
        return cls(**doc)


@dataclass(frozen=True)
class GuardrailResult:
    name: str
    verdict: str
    value: float | None
    limit: float
    observations: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        value = self.value if self.value is None or math.isfinite(self.value) else None
        return {"name": self.name, "verdict": self.verdict, "value": value, "limit": self.limit,
                "observations": self.observations, "detail": self.detail}

    def line(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.name}={value} (limit {self.limit:g}, {self.verdict}: {self.detail})"


def _judge(name: str, value: float, limit: float, n: int, detail: str) -> GuardrailResult:
    verdict = FAIL if (math.isnan(value) or value > limit) else PASS
    return GuardrailResult(name, verdict, value, limit, n, detail)


def _too_few(name: str, limit: float, n: int, needed: int, what: str) -> GuardrailResult:
    return GuardrailResult(name, WAIT, None, limit, n, f"not enough data: {n} {what}, need {needed}")


def _no_metrics(name: str, limit: float, obs: Observation, config: RolloutConfig) -> GuardrailResult:
    verdict = WAIT if config.require_metrics else NOT_EVALUATED
    return GuardrailResult(name, verdict, None, limit, 0, obs.metrics_note or "no metrics")


def reference_sample(obs: Observation, accumulated: ScoreSample | None, config: RolloutConfig
                     ) -> tuple[ScoreSample, str]:
    """The champion sample the candidate is compared with, and what it is."""
    if obs.stage == SHADOW:
        return obs.champion, "served champion scores of the same decisions"
    if obs.champion.n >= config.canary_min_observations or accumulated is None:
        return obs.champion, "champion arm, this stage"
    return obs.champion.merged(accumulated), "champion arm, this stage and the rollout's earlier stages"


def judge(obs: Observation, config: RolloutConfig, accumulated: ScoreSample | None = None,
          candidate_version: str | None = None, decider: str | None = None) -> list[GuardrailResult]:
    """Every guardrail of the observed stage, in a fixed order. ``decider``: an application
    decider's name; its error and latency guardrails then read its own series (labelled
    ``decider``, by arm) instead of the fraud service's ``/v1/score`` ones."""
    stage, needed = obs.stage, config.min_observations(obs.stage)
    results: list[GuardrailResult] = []
    # --- shadow disagreement
    if stage == SHADOW:
        n = obs.shadow_pairs
        results.append(_too_few("shadow_disagreement", config.max_shadow_disagreement, n, needed, "paired shadow scores")
                       if n < needed else
                       _judge("shadow_disagreement", obs.shadow_disagreements / n, config.max_shadow_disagreement, n,
                              f"{obs.shadow_disagreements} of {n} shadow decisions differ from the served one"))
    else:
        results.append(GuardrailResult("shadow_disagreement", NOT_EVALUATED, None, config.max_shadow_disagreement,
                                       0, f"not applicable in the {stage} stage (no shadow scoring)"))
    # --- score distribution and decline rate, candidate vs champion
    reference, what = reference_sample(obs, accumulated, config)
    cand = obs.candidate
    if cand.n < needed or reference.n < needed:
        short = (f"{cand.n} candidate scores" if cand.n < needed else f"{reference.n} champion scores ({what})")
        results.append(_too_few("score_psi", config.max_score_psi, min(cand.n, reference.n), needed, short))
        results.append(_too_few("decline_rate_increase", config.max_decline_rate_increase,
                                min(cand.n, reference.n), needed, short))
    else:
        results.append(_judge("score_psi", psi(reference.counts, cand.counts), config.max_score_psi, cand.n,
                              f"PSI of {cand.n} candidate vs {reference.n} champion scores ({what})"))
        c_rate, r_rate = cand.rate("decline") or 0.0, reference.rate("decline") or 0.0
        results.append(_judge("decline_rate_increase", c_rate - r_rate, config.max_decline_rate_increase, cand.n,
                              f"decline rate {c_rate:.4f} candidate vs {r_rate:.4f} champion ({what})"))
    # --- error rate
    metrics = obs.metrics
    if metrics is None:
        results.append(_no_metrics("error_rate", config.max_error_rate, obs, config))
    elif stage == SHADOW and decider is not None:
        errors = metrics.total("mlp_decider_shadow_scores_total", decider=decider, result="failed")
        scored = metrics.total("mlp_decider_shadow_scores_total", decider=decider, result="scored")
        n = int(errors + scored)
        results.append(_too_few("error_rate", config.max_error_rate, n, needed, "shadow decisions in the metrics")
                       if n < needed else
                       _judge("error_rate", errors / n, config.max_error_rate, n,
                              f"{errors:.0f} failed of {n} shadow decisions of {decider}"))
    elif stage == SHADOW:
        errors = metrics.total("mlp_errors_total", type="shadow")
        scored = metrics.total("mlp_shadow_scores_total", model_version=candidate_version or "")
        n = int(errors + scored)
        results.append(_too_few("error_rate", config.max_error_rate, n, needed, "shadow scorings in the metrics")
                       if n < needed else
                       _judge("error_rate", errors / n, config.max_error_rate, n,
                              f"{errors:.0f} failed of {n} shadow scorings"))
    elif decider is not None:
        labels = {"decider": decider, "arm": "challenger"}
        n = int(metrics.total("mlp_decider_requests_total", **labels))
        failed = metrics.total("mlp_decider_requests_total", **labels, outcome="error")
        results.append(_too_few("error_rate", config.max_error_rate, n, needed,
                                "challenger-arm requests in the metrics")
                       if n < needed else
                       _judge("error_rate", failed / n, config.max_error_rate, n,
                              f"{failed:.0f} of {n} challenger-arm requests of {decider} failed"))
    else:
        total = metrics.total("mlp_requests_total", endpoint=SCORE_ENDPOINT)
        failed = sum(v for labels, v in metrics.series("mlp_requests_total", endpoint=SCORE_ENDPOINT)
                     if labels.get("status", "").startswith("5"))
        n = int(total)
        results.append(_too_few("error_rate", config.max_error_rate, n, needed, "score requests in the metrics")
                       if n < needed else
                       _judge("error_rate", failed / n, config.max_error_rate, n,
                              f"{failed:.0f} of {n} score requests answered 5xx (whole service)"))
    # --- latency
    if stage != CANARY:
        results.append(GuardrailResult("latency_p99_ms", NOT_EVALUATED, None, config.max_p99_latency_ms, 0,
                                       "not applicable in the shadow stage (shadow scoring is off the critical path)"))
    elif metrics is None:
        results.append(_no_metrics("latency_p99_ms", config.max_p99_latency_ms, obs, config))
    else:
        p99, count = (metrics.quantile_ms(0.99, "mlp_decider_request_latency_seconds_bucket", decider=decider,
                                          route="decide", arm="challenger") if decider is not None else
                      metrics.quantile_ms(0.99, "mlp_request_latency_seconds_bucket", endpoint="score",
                                          arm="challenger"))
        n = int(count)
        if n < needed:
            results.append(_too_few("latency_p99_ms", config.max_p99_latency_ms, n, needed,
                                    "challenger-arm requests in the latency histogram"))
        else:
            shown = "above the largest bucket" if math.isinf(p99) else f"at most {p99:g} ms"
            results.append(_judge("latency_p99_ms", p99, config.max_p99_latency_ms, n,
                                  f"challenger-arm p99 {shown} over {n} requests (histogram bucket bound)"))
    return results
