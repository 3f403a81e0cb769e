"""Decisions on applications (a decider over application requests, such as credit origination): the
request's features (:mod:`mlp_platform.features.request`), the model's score, the declared policy's
action, adverse-action reasons, and counter-offers.

Adverse-action reasons (:class:`AdverseActionReasons`): for every decision whose action the policy
lists under ``reasons_for`` (a decline above all), up to ``policy.max_reasons`` principal reasons,
from the decider's catalogue (stable code, plain-language text), in the order of the model's
TreeSHAP contributions towards a bad outcome. The monotone direction is respected: a feature the
declaration constrains (+1: more is riskier, -1: less is riskier) is a reason only when its value
lies on its risky side of the training population's median, so a bureau score above the median is
never "too low", whatever an interaction's contribution says. A feature missing from the request
that weighed against the applicant gives "No information provided: <attribute>". If the filter
leaves no reason for a decision that needs them, the largest positive contributions are given
unfiltered (recorded: ``filtered=False``), never a decline without reasons while any feature
pushed the score up.

Counter-offers (:meth:`ApplicationDecider.counter_offers`): for a declined, referred or
counter-offered application, modified conditions (amount scaled by the declared factors, the
declared terms) are scored in one batch call; the offer is the nearest condition the policy
approves (largest amount first, then the term closest to the one asked). Each candidate's trace
(conditions, score, action) is returned for the decision log.

The path has no external feature source, so an application decision is never degraded: what the
applicant does not state is a missing feature, handled by the model and named by the reasons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlp_platform.deciders.declaration import DeciderDeclaration
from mlp_platform.features.request import RequestFeaturizer
from mlp_platform.runtime.loading import Population


@dataclass(frozen=True)
class AdverseReason:
    code: str
    feature: str
    text: str
    value: float | None
    contribution: float
    typical: float | None


class AdverseActionReasons:
    """The principal reasons of one decider's decisions (see the module docstring)."""

    def __init__(self, decider: DeciderDeclaration, populations: Mapping[str, Population]):
        if not decider.reasons.adverse_action:
            raise ValueError(f"decider {decider.name!r} declares no adverse-action reasons")
        spec = decider.spec
        self.names = spec.feature_names
        self.catalogue = decider.reasons.catalogue
        self.sign = dict(decider.model.monotone_constraints)
        self.typical = {n: p.median for n, p in populations.items()}
        self.labels = {f.name: (f.column or f.name).replace("_", " ") for f in spec.features}

    def reasons(self, values: Sequence[float], contributions: Sequence[float], top: int) -> tuple[list[AdverseReason], bool]:
        """(reasons, filtered): the reasons, largest contribution first, and whether the monotone
        filter could be applied (False: the unfiltered fallback of the module docstring)."""
        ranked = sorted(((float(c), i) for i, c in enumerate(contributions[: len(self.names)]) if c > 0),
                        key=lambda t: (-t[0], t[1]))
        kept = [(c, i) for c, i in ranked if self._on_risky_side(i, values[i])]
        filtered = bool(kept) or not ranked
        return [self._reason(c, i, values[i]) for c, i in (kept if filtered else ranked)[:top]], filtered

    def _on_risky_side(self, i: int, value: float) -> bool:
        name = self.names[i]
        sign, typical = self.sign.get(name), self.typical.get(name)
        if value != value or not sign or typical is None:
            return True
        return value > typical if sign > 0 else value < typical

    def _reason(self, contribution: float, i: int, value: float) -> AdverseReason:
        name = self.names[i]
        entry = self.catalogue[name]
        missing = value != value
        text = f"No information provided: {self.labels[name]}" if missing else entry.text
        return AdverseReason(entry.code, name, text, None if missing else float(value), contribution,
                             self.typical.get(name))


@dataclass(frozen=True)
class ApplicationDecision:
    application_id: str | None
    action: str
    score: float
    thresholds: dict[str, float]
    reasons: list[AdverseReason] = field(default_factory=list)
    reasons_filtered: bool = True
    missing: list[str] = field(default_factory=list)
    model_version: str = ""
    #: The feature row the score was computed from (spec order, NaN for missing): what the log keeps.
    values: list[float] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class CandidateCondition:
    amount: float
    term_months: int
    score: float
    action: str


@dataclass(frozen=True)
class CounterOffers:
    decision: ApplicationDecision
    candidates: list[CandidateCondition]
    offer: CandidateCondition | None


class ApplicationDecider:
    """One model version of an application decider. ``scorer`` has ``score(row)``,
    ``contributions(row)`` (TreeSHAP, log-odds, bias last) and ``score_matrix(x)``: the
    :class:`~mlp_platform.runtime.fast_scorer.FastScorer` (or the plain :class:`Scorer`)."""

    def __init__(self, decider: DeciderDeclaration, scorer: Any, populations: Mapping[str, Population], *,
                 version: str = "", operating_threshold: float = 0.5,
                 threshold_overrides: Mapping[str, float] | None = None):
        if decider.request.schema_name != "application":
            raise ValueError(f"decider {decider.name!r} decides {decider.request.schema_name} requests")
        self.decider = decider
        self.policy = decider.policy
        self.featurizer = RequestFeaturizer(decider.spec)
        names = list(getattr(scorer, "feature_names", self.featurizer.feature_names))
        if names != self.featurizer.feature_names:
            raise ValueError("the model's features differ from the decider's feature spec")
        self.scorer = scorer
        self.version = version
        self.thresholds = self.policy.thresholds(operating_threshold, dict(threshold_overrides or {}))
        self.populations = dict(populations)  # the training population: typical values (reviewer page)
        self.explainer = AdverseActionReasons(decider, populations) if decider.reasons.adverse_action else None
        self.offer = decider.counter_offer

    def decide(self, request: Mapping[str, Any]) -> ApplicationDecision:
        values, missing = self.featurizer.row(request)
        row = np.asarray(values, dtype=np.float64)
        score = float(self.scorer.score(row))
        action = self.policy.decide(score, self.thresholds)
        reasons, filtered = [], True
        if self.explainer is not None and action in self.policy.reasons_for:
            contributions = self.scorer.contributions(row)
            reasons, filtered = self.explainer.reasons(values, contributions, self.policy.max_reasons)
        return ApplicationDecision(request.get(self.decider.entity.key), action, score, dict(self.thresholds),
                                   reasons, filtered, missing, self.version, values)

    def candidate_conditions(self, request: Mapping[str, Any]) -> list[tuple[float, int]]:
        """The conditions to score for ``request``: amounts (the one asked and each declared factor of
        it), each with the term asked and the declared terms nearest to it, an equal share of
        ``max_candidates`` per amount; nearest first; never the request's own conditions."""
        offer = self.offer
        if offer is None:
            raise ValueError(f"decider {self.decider.name!r} declares no counter_offer section")
        amount, term = request.get(offer.amount_column), request.get(offer.term_column)
        if not _positive(amount) or not isinstance(term, int) or isinstance(term, bool) or term < 1:
            return []
        amounts = [float(amount)] + sorted({max(10.0, round(float(amount) * f, -1)) for f in offer.amount_factors}
                                          - {float(amount)}, reverse=True)
        terms = sorted({term, *offer.terms_months}, key=lambda t: (abs(t - term), t))
        per_amount = max(1, math.ceil((offer.max_candidates + 1) / len(amounts)))
        out = [(a, t) for a in amounts for t in terms[:per_amount] if (a, t) != (float(amount), term)]
        return out[: offer.max_candidates]

    def counter_offers(self, request: Mapping[str, Any]) -> CounterOffers:
        decision = self.decide(request)
        if decision.action == self.policy.default_action:
            return CounterOffers(decision, [], None)
        offer = self.offer
        conditions = self.candidate_conditions(request)
        if not conditions:
            return CounterOffers(decision, [], None)
        base_instalment = float(request[offer.amount_column]) / int(request[offer.term_column])
        rows = []
        for amount, term in conditions:
            modified = dict(request)
            modified[offer.amount_column] = amount
            modified[offer.term_column] = term
            for column in offer.instalment_bands:
                band = request.get(column)
                if _positive(band):
                    modified[column] = int(min(4, max(1, round(float(band) * (amount / term) / base_instalment))))
            rows.append(self.featurizer.row(modified)[0])
        scores = np.asarray(self.scorer.score_matrix(np.asarray(rows, dtype=np.float64)), dtype=np.float64)
        candidates = [CandidateCondition(a, t, float(s), self.policy.decide(float(s), self.thresholds))
                      for (a, t), s in zip(conditions, scores, strict=True)]
        approved = [c for c in candidates if c.action == self.policy.default_action]
        return CounterOffers(decision, candidates, approved[0] if approved else None)


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
