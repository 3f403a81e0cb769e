"""Reason codes that say what is true.

This module owns the reasons a review or decline carries. Each feature of the spec has a stable code
(``R`` + its position in the spec). A reason is given only for a feature whose contribution pushed
the score up (TreeSHAP, log-odds, > 0), at most ``top`` of them, largest first, and says

* ``value``: the value served;
* ``typical``: the median of the feature in the model's training population (its reference profile,
  :class:`Population`), and ``direction``: ``high`` / ``low`` / ``typical`` (the value above, below
  or equal to that median), with ``percentile``: the share of the training population below the value;
* where the spec has the customer's own 30-day mean of the same quantity (the amount), that mean as
  ``customer_typical``;
* a sentence generated from them, e.g. "5 transactions on the card in the last hour; typical is 1".

Without a training population (a version registered before reference profiles) ``typical``,
``direction`` and ``percentile`` are None and the sentence gives the value alone: a documented
fallback, never a made-up typical value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mlp_platform.features.spec import Feature, FeatureSpec
from mlp_platform.runtime.loading import Population

_WINDOW = {"1h": "the last hour", "1d": "the last 24 hours", "7d": "the last 7 days", "30d": "the last 30 days"}
_WHO = {"customer": "the card", "merchant": "the merchant", "transaction": "the transaction"}
_OWNER = {"customer": "the card's", "merchant": "the merchant's", "transaction": "the transaction's"}


@dataclass(frozen=True)
class Reason:
    code: str
    feature: str
    text: str
    value: float | None
    contribution: float
    direction: str | None  # high / low / typical relative to the training median; None: unknown
    typical: float | None  # the training median
    percentile: float | None  # share of the training population below the value
    customer_typical: float | None = None  # the customer's own 30-day mean where the spec has one


def _number(value: float, dtype: str) -> str:
    if dtype == "int" or float(value).is_integer() and abs(value) < 1e15:
        return f"{int(round(value)):,}"
    return f"{value:,.2f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} seconds"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86_400:.1f} days"


def _plural(n: float, one: str, many: str) -> str:
    return one if round(n) == 1 else many


def _phrase(feature: Feature, value: float | None, typical: float | None) -> tuple[str, str | None]:
    """(the served value in words, the typical value in the same words or None)."""
    who = _WHO[feature.entity]
    window = _WINDOW.get(feature.window or "", feature.window or "")
    kind = feature.kind
    if value is None:
        if kind == "seconds_since_previous":
            return f"No earlier transaction of {who}", None
        if kind == "ratio_to_feature":
            return f"No 30-day average of {_OWNER[feature.entity]} amounts to compare the amount with", None
        return f"{feature.name} not available", None

    def both(fmt) -> tuple[str, str | None]:
        return fmt(value), None if typical is None else fmt(typical)

    if kind == "window_agg" and feature.agg == "count":
        text, typ = both(lambda v: f"{_number(v, 'int')} {_plural(v, 'transaction', 'transactions')}")
        return f"{text} on {who} in {window}", typ
    if kind == "window_agg":
        label = {"sum": "Total amount", "mean": "Average amount", "max": "Largest amount"}[feature.agg]
        text, typ = both(lambda v: _number(v, "float"))
        return f"{label} on {who} in {window} is {text}", typ
    if kind == "window_distinct":
        text, typ = both(lambda v: f"{_number(v, 'int')} different {_plural(v, 'merchant', 'merchants')}")
        return f"{text} used by {who} in {window}", typ
    if kind == "seconds_since_previous":
        text, typ = both(_duration)
        return f"{text} since the previous transaction of {who}", typ
    if kind == "first_time":
        thing = (feature.column or "").removesuffix("_id")
        text = (f"First transaction of {who} with this {thing} in 30 days" if value >= 0.5
                else f"{who.capitalize()} used this {thing} before (in 30 days)")
        typ = None if typical is None else ("a first time" if typical >= 0.5 else f"a known {thing}")
        return text, typ
    if kind == "ratio_to_feature":
        text, typ = both(lambda v: f"{v:,.1f}x")
        return f"Amount is {text} {_OWNER[feature.entity]} 30-day average", typ
    if kind == "label_rate":
        text, typ = both(lambda v: f"{100 * v:.1f}%")
        return f"{text} of {_OWNER[feature.entity]} labelled transactions in {window} were confirmed fraud", typ
    if kind == "request_value":
        text, typ = both(lambda v: _number(v, "float"))
        return f"{feature.name.replace('_', ' ').capitalize()} {text}", typ
    if kind == "hour_of_day":
        text, typ = both(lambda v: f"{int(v):02d}:00")
        return f"Transaction at {text}", typ
    if kind in ("is_night", "is_weekend"):
        when = "night" if kind == "is_night" else "the weekend"
        other = "by day" if kind == "is_night" else "on a weekday"
        text = f"Transaction at {when}" if value >= 0.5 else f"Transaction {other}"
        typ = None if typical is None else (f"at {when}" if typical >= 0.5 else other)
        return text, typ
    text, typ = both(lambda v: _number(v, feature.dtype))
    return f"{feature.name} is {text}", typ


def reason_text(feature: Feature, value: float | None, typical: float | None,
                customer_typical: float | None = None, owner: str = "customer") -> str:
    """The sentence of one reason: the value, then the typical value ("; typical is ..."), then the
    customer's own 30-day mean where given."""
    text, typ = _phrase(feature, value, typical)
    if typ is not None:
        text += f"; typical is {typ}"
    if customer_typical is not None:
        text += f"; {_OWNER[owner]} own 30-day average is {_number(customer_typical, 'float')}"
    return text


def direction(value: float | None, typical: float | None) -> str | None:
    if value is None or typical is None:
        return None
    return "high" if value > typical else "low" if value < typical else "typical"


class ReasonBook:
    """The reasons of one spec: codes, features, and which feature is the customer's own mean of each
    request value (the spec's ``ratio_to_feature`` features name it)."""

    def __init__(self, spec: FeatureSpec):
        self.features = list(spec.features)
        self.names = [f.name for f in self.features]
        self.codes = {f.name: f"R{i + 1:02d}" for i, f in enumerate(self.features)}
        by_name = {f.name: f for f in self.features}
        self.own_mean = {f.column: f.denominator for f in self.features
                         if f.kind == "ratio_to_feature" and f.column in by_name and f.denominator in by_name}
        self.entity = {f.name: f.entity for f in self.features}

    def reasons(self, values: Sequence[float], contributions: Sequence[float],
                populations: Mapping[str, Population], top: int = 3) -> list[Reason]:
        """The features pushing most towards fraud (largest positive contributions), at most ``top``."""
        ranked = sorted(((c, i) for i, c in enumerate(contributions[: len(self.names)]) if c > 0), reverse=True)[:top]
        index = {n: i for i, n in enumerate(self.names)}
        by_entity = self.entity
        out = []
        for contribution, i in ranked:
            feature = self.features[i]
            value = None if values[i] != values[i] else float(values[i])
            pop = populations.get(feature.name)
            typical = None if pop is None else pop.median
            own = self.own_mean.get(feature.name)
            customer_typical = None
            if own is not None and values[index[own]] == values[index[own]]:
                customer_typical = float(values[index[own]])
            out.append(Reason(
                self.codes[feature.name], feature.name,
                reason_text(feature, value, typical, customer_typical, by_entity.get(own, "customer")),
                value, float(contribution),
                direction(value, typical), typical,
                None if pop is None or value is None else pop.percentile(value), customer_typical,
            ))
        return out
