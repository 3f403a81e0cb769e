"""Versioned request/response models of the scoring API (v1).

Critical fields (id, time, card, merchant, amount) must be present and valid, else 422 naming the
field. Non-critical ones fall back to the documented defaults of the canonical schema and the
decision records which defaults were applied.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlp_platform.data.schema import (
    CHANNELS,
    DEFAULT_CHANNEL,
    DEFAULT_COUNTRY,
    DEFAULT_CURRENCY,
    DEFAULT_MERCHANT_CATEGORY,
)

Decision = Literal["approve", "review", "decline"]
#: Identifiers are printable: control characters (the online store's field separator among them)
#: are refused with a 422 naming the field rather than failing later in the store.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"

EXAMPLE_TRANSACTION = {
    "transaction_id": "T20260301-0000042", "event_time": "2026-03-01T14:03:27", "customer_id": "C000123",
    "merchant_id": "M00042", "amount": 129.90, "currency": "EUR", "channel": "ecom", "country": "DE",
    "merchant_category": "5411", "device_id": "D000777",
}


class TransactionIn(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [EXAMPLE_TRANSACTION]})

    transaction_id: str = Field(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS)
    event_time: dt.datetime
    customer_id: str = Field(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS)
    merchant_id: str = Field(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS)
    amount: float = Field(ge=0, le=1e9, allow_inf_nan=False)
    currency: str | None = Field(default=None, max_length=8)
    channel: str | None = Field(default=None, max_length=32)
    country: str | None = Field(default=None, max_length=8)
    merchant_category: str | None = Field(default=None, max_length=8)
    device_id: str | None = Field(default=None, max_length=128, pattern=NO_CONTROL_CHARACTERS)

    @field_validator("event_time")
    @classmethod
    def naive_utc(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value

    def canonical(self) -> tuple[dict, list[str]]:
        """The canonical transaction and the names of the non-critical defaults applied."""
        defaults: list[str] = []
        channel = (self.channel or "").strip().lower()
        if channel not in CHANNELS:
            channel = DEFAULT_CHANNEL
            defaults.append("channel")
        country = (self.country or "").strip().upper()
        if len(country) != 2:
            country = DEFAULT_COUNTRY
            defaults.append("country")
        currency = self.currency or DEFAULT_CURRENCY
        if not self.currency:
            defaults.append("currency")
        category = self.merchant_category or DEFAULT_MERCHANT_CATEGORY
        if not self.merchant_category:
            defaults.append("merchant_category")
        return {
            "transaction_id": self.transaction_id, "event_time": self.event_time, "customer_id": self.customer_id,
            "merchant_id": self.merchant_id, "amount": float(self.amount), "currency": currency,
            "channel": channel, "country": country, "merchant_category": category, "device_id": self.device_id,
        }, defaults


class ReasonOut(BaseModel):
    """A feature that pushed the score up (see :mod:`mlp_platform.serving.reasons`)."""

    code: str = Field(description="Stable code of the feature (R + its position in the feature spec)")
    feature: str
    text: str = Field(description="The served value and the typical value, in words")
    value: float | None = Field(description="The value served (null: missing)")
    contribution: float = Field(description="TreeSHAP contribution to the log-odds of the score (> 0)")
    direction: Literal["high", "low", "typical"] | None = Field(
        description="The value against the training median (null: no training population, or missing value)")
    typical: float | None = Field(description="The median of the feature in the model's training population")
    percentile: float | None = Field(description="Share of the training population below the value (mid-rank)")
    customer_typical: float | None = Field(
        default=None, description="The customer's own 30-day mean of the same quantity, where the spec has one")


class ModelUsed(BaseModel):
    arm: str
    version: str
    score: float


class ScoreOut(BaseModel):
    api_version: Literal["v1"] = "v1"
    decision_id: str
    decision: Decision
    score: float
    policy_version: str
    thresholds: dict[str, float]
    model: ModelUsed
    reasons: list[ReasonOut] = []
    fallbacks: list[str] = []
    defaults_applied: list[str] = []
    degraded: bool = False
    latency_ms: float
    #: True when this answer is the original decision returned to a retry (same transaction_id or
    #: Idempotency-Key, same request) within the idempotency window: no new decision was taken.
    replayed: bool = False


class DecisionTrace(BaseModel):
    api_version: Literal["v1"] = "v1"
    decision_id: str
    record: dict
    explanation: str


class FieldError(BaseModel):
    field: str = Field(description="The field (dotted path) that is missing or invalid, e.g. event_time")
    message: str


class ValidationErrorOut(BaseModel):
    """422: the request is not acceptable; every offending field is named."""

    detail: list[FieldError]
    fields: list[str]
    message: str


class ErrorOut(BaseModel):
    """401, 404, 409, 413, 503: what went wrong, in words."""

    detail: str


class HealthOut(BaseModel):
    status: Literal["alive"]


class ReadyOut(BaseModel):
    ready: bool
    reason: str
    champion: str | None
    loaded: list[str]
    routing_revision: int


class ReloadOut(BaseModel):
    changed: bool
    champion: str | None
    loaded: list[str]
    error: str | None


# --- application deciders (credit origination) ---------------------------------------------------

def _level_validator(column: str, levels: tuple[str, ...]):
    def check(value: str | None) -> str | None:
        if value is None:
            return None
        canonical = value.strip().lower()
        if canonical not in levels:
            raise ValueError(f"{column} must be one of {', '.join(levels)}")
        return canonical
    return check


def _application_model():
    """The request body of an application decision: the canonical application schema, every bound of
    the application contract enforced (a 422 names the field), categorical levels canonicalised."""
    from pydantic import create_model
    from pydantic import field_validator as validator

    from mlp_platform.data.contracts import APPLICATION_RANGES
    from mlp_platform.data.schema import APPLICATION_LEVELS, APPLICATION_SCHEMA

    required = {"application_id", "applicant_id", "requested_amount", "term_months"}
    fields: dict = {}
    for column, dtype in APPLICATION_SCHEMA.items():
        if column in ("application_id", "applicant_id"):
            fields[column] = (str, Field(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS))
        elif column == "event_time":
            fields[column] = (dt.datetime | None, None)
        elif column in APPLICATION_RANGES:
            lo, hi = APPLICATION_RANGES[column]
            kind = int if dtype.is_integer() else float
            spec = Field(ge=lo, le=hi, allow_inf_nan=False) if kind is float else Field(ge=lo, le=hi)
            optional = Field(None, ge=lo, le=hi, allow_inf_nan=False) if kind is float else Field(None, ge=lo, le=hi)
            fields[column] = (kind, spec) if column in required else (kind | None, optional)
        elif column in APPLICATION_LEVELS:  # the document lists the canonical levels (case and spaces forgiven)
            fields[column] = (str | None, Field(None, max_length=64, json_schema_extra={
                "enum": [*APPLICATION_LEVELS[column], None]}))
        else:
            fields[column] = (str | None, Field(None, max_length=64, pattern=NO_CONTROL_CHARACTERS))
    validators = {f"_level_{c}": validator(c)(_level_validator(c, levels)) for c, levels in APPLICATION_LEVELS.items()
                  if c in APPLICATION_SCHEMA}
    return create_model("ApplicationIn", __config__=ConfigDict(extra="forbid"), __validators__=validators, **fields)


ApplicationIn = _application_model()


class AdverseReasonOut(BaseModel):
    code: str = Field(description="Stable reason code of the decider's catalogue")
    text: str = Field(description="The principal reason in plain language (for an adverse-action notice)")
    feature: str
    value: float | None = Field(description="The value of the feature; null when the application did not give it")


class ApplicationDecisionOut(BaseModel):
    """An application decider's decision."""

    api_version: Literal["v1"]
    decider: str
    decision_id: str
    application_id: str
    decision: str = Field(description="One of the decider's policy actions (e.g. approve, counter_offer, refer, "
                                      "decline)")
    score: float = Field(description="The model's probability of a bad outcome")
    model_version: str
    reasons: list[AdverseReasonOut] = Field(description="Up to the policy's max_reasons, for the actions its "
                                                        "reasons_for lists; none for an approval")
    missing: list[str] = Field(description="Features the application did not give")


class ConditionOut(BaseModel):
    requested_amount: float
    term_months: int
    score: float
    decision: str


class CounterOfferOut(ApplicationDecisionOut):
    """The decision on the application as asked, and the nearest conditions the policy approves."""

    offer: ConditionOut | None = Field(description="The nearest approvable conditions; null when none of the "
                                                   "candidates is approved or the application is approved as asked")
    candidates: list[ConditionOut] = Field(description="Every condition scored (in one call), nearest first")
