"""Human-readable reason codes: each feature of the spec gets a stable code and a sentence an
operator (or an adverse-action notice) can show, generated from the spec so they never drift."""

from __future__ import annotations

from dataclasses import dataclass

from mlp_platform.features.spec import Feature, FeatureSpec

_WINDOW = {"1h": "the last hour", "1d": "the last 24 hours", "7d": "the last 7 days", "30d": "the last 30 days"}
_AGG = {"count": "number of transactions", "sum": "total amount spent", "mean": "average amount",
        "max": "largest amount"}


@dataclass(frozen=True)
class Reason:
    code: str
    feature: str
    text: str
    value: float | None
    contribution: float


def describe(feature: Feature) -> str:
    """One sentence for a feature pushing a score towards fraud."""
    who = {"customer": "the card", "merchant": "the merchant", "transaction": "the transaction"}[feature.entity]
    window = _WINDOW.get(feature.window or "", feature.window or "")
    if feature.kind == "window_agg":
        return f"Unusual {_AGG[feature.agg]} on {who} over {window}"
    if feature.kind == "window_distinct":
        return f"Unusual number of different merchants used by {who} over {window}"
    if feature.kind == "seconds_since_previous":
        return f"Time since the previous transaction of {who} is unusual"
    if feature.kind == "first_time":
        thing = (feature.column or "").removesuffix("_id")
        return f"First transaction of {who} with this {thing} in 30 days"
    if feature.kind == "ratio_to_feature":
        return "Amount far from the card's usual spending (30-day average)"
    if feature.kind == "label_rate":
        return f"The merchant had confirmed fraud over {window} (before the label delay)"
    if feature.kind == "request_value":
        return "Transaction amount"
    if feature.kind == "hour_of_day":
        return "Time of day of the transaction"
    if feature.kind == "is_night":
        return "Transaction at night"
    if feature.kind == "is_weekend":
        return "Transaction at the weekend"
    return feature.name


def reason_catalogue(spec: FeatureSpec) -> dict[str, tuple[str, str]]:
    """feature name -> (reason code, text). Codes are stable: R + position in the spec."""
    return {f.name: (f"R{i + 1:02d}", describe(f)) for i, f in enumerate(spec.features)}


def top_reasons(catalogue: dict[str, tuple[str, str]], names: list[str], values: list[float],
                contributions: list[float], top: int = 3) -> list[Reason]:
    """The features pushing most towards fraud (largest positive contributions), at most ``top``."""
    ranked = sorted(((c, i) for i, c in enumerate(contributions[: len(names)]) if c > 0), reverse=True)[:top]
    out = []
    for contribution, i in ranked:
        code, text = catalogue[names[i]]
        value = values[i]
        out.append(Reason(code, names[i], text, None if value != value else float(value), float(contribution)))
    return out
