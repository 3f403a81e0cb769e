"""Canonical data model: the schemas every source is mapped onto -- card transactions and their fraud
labels, loan applications and their credit outcomes.

Everything downstream (data contracts, the warehouse, dbt models, features, serving) speaks this
schema only, so the rest of the platform does not care which source produced the data.
"""

from __future__ import annotations

import polars as pl

#: Channels the platform knows. Anything else is a non-critical contract violation and becomes
#: ``DEFAULT_CHANNEL``.
CHANNELS: tuple[str, ...] = ("pos", "ecom", "atm", "moto", "unknown")
DEFAULT_CHANNEL = "unknown"
#: ISO 3166-1 alpha-2 country codes are expected; a missing one becomes this (user-assigned code).
DEFAULT_COUNTRY = "ZZ"
DEFAULT_CURRENCY = "EUR"
DEFAULT_MERCHANT_CATEGORY = "0000"

#: Canonical transaction schema (one row per card transaction, event time naive UTC).
TRANSACTION_SCHEMA: dict[str, pl.DataType] = {
    "transaction_id": pl.String(),
    "event_time": pl.Datetime("us"),
    "customer_id": pl.String(),
    "merchant_id": pl.String(),  # merchant or point-of-sale terminal
    "amount": pl.Float64(),
    "currency": pl.String(),
    "channel": pl.String(),
    "country": pl.String(),
    "merchant_category": pl.String(),
    "device_id": pl.String(),  # nullable: card-present traffic often has none
}

#: Canonical label schema. ``label_time`` is when the outcome became known (e.g. chargeback date);
#: no feature or training row may use a label before its ``label_time``.
#: ``fraud_scenario`` is label metadata (how the fraud happened) and never reaches a feature.
LABEL_SCHEMA: dict[str, pl.DataType] = {
    "transaction_id": pl.String(),
    "label": pl.Int8(),  # 1 = fraud, 0 = disputed but confirmed genuine
    "label_time": pl.Datetime("us"),
    "fraud_scenario": pl.String(),
}

#: Columns that are label metadata: forbidden as feature inputs.
LABEL_METADATA_COLUMNS: frozenset[str] = frozenset({"label", "label_time", "fraud_scenario"})


def empty_transactions() -> pl.DataFrame:
    return pl.DataFrame(schema=TRANSACTION_SCHEMA)


def empty_labels() -> pl.DataFrame:
    return pl.DataFrame(schema=LABEL_SCHEMA)


# --- credit origination ------------------------------------------------------------------------

#: Channels a loan application arrives through; anything else becomes ``DEFAULT_APPLICATION_CHANNEL``.
APPLICATION_CHANNELS: tuple[str, ...] = ("branch", "online", "broker", "unknown")
DEFAULT_APPLICATION_CHANNEL = "unknown"

#: The categorical attributes of an application and their canonical levels (the German credit
#: data's attributes, named in short codes; :mod:`mlp_platform.data.german_credit` maps its labels
#: onto them). Ordered from the applicant's weakest to strongest position where the attribute is
#: ordinal, so that an ordinal code can carry a monotone constraint.
APPLICATION_LEVELS: dict[str, tuple[str, ...]] = {
    "checking_account": ("negative", "below_200", "above_200", "none"),
    "savings": ("below_100", "100_to_500", "500_to_1000", "above_1000", "none"),
    "credit_history": ("no_credits", "all_paid_here", "paid_duly", "past_delay", "critical"),
    "employment_since": ("unemployed", "below_1y", "1_to_4y", "4_to_7y", "above_7y"),
    "purpose": ("car_new", "car_used", "furniture", "radio_tv", "appliances", "repairs", "education",
                "retraining", "business", "other"),
    "sex": ("female", "male"),
    "marital_status": ("single", "married", "divorced", "unknown"),
    "other_debtors": ("none", "co_applicant", "guarantor"),
    "property": ("none", "car_other", "savings_insurance", "real_estate"),
    "other_installment_plans": ("none", "bank", "stores"),
    "housing": ("free", "rent", "own"),
    "job": ("unskilled_nonresident", "unskilled_resident", "skilled", "management"),
    "telephone": ("no", "yes"),
    "foreign_worker": ("no", "yes"),
}

#: Canonical loan-application schema (one row per application; event time naive UTC).
APPLICATION_SCHEMA: dict[str, pl.DataType] = {
    "application_id": pl.String(),
    "event_time": pl.Datetime("us"),  # null where the source has no dates (the German credit data)
    "applicant_id": pl.String(),
    "channel": pl.String(),
    "intermediary_id": pl.String(),  # nullable: only broker applications have one
    "requested_amount": pl.Float64(),
    "term_months": pl.Int32(),
    "installment_rate_pct": pl.Int32(),  # instalment as a share of disposable income, banded 1..4
    "monthly_income": pl.Float64(),  # nullable: absent in the German credit data
    "bureau_score": pl.Int32(),  # nullable: credit-bureau score 300..900, absent in the German data
    "age_years": pl.Int32(),
    "residence_since_years": pl.Int32(),
    "existing_credits": pl.Int32(),
    "dependents": pl.Int32(),
    **{name: pl.String() for name in APPLICATION_LEVELS},
}

#: Canonical credit-outcome schema: ``label`` 1 = bad (defaulted within the performance window),
#: 0 = good; ``label_time`` is when the outcome became known (null where the source has no dates).
OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    "application_id": pl.String(),
    "label": pl.Int8(),
    "label_time": pl.Datetime("us"),
}

#: Attributes that are protected or sensitive: measured for fairness; whether a model may use them
#: is the decider's declared policy.
PROTECTED_APPLICATION_ATTRIBUTES: tuple[str, ...] = ("sex", "age_years", "foreign_worker")


#: The request schemas a decider's requests (and its feature spec's on-demand features) can speak.
REQUEST_SCHEMAS: dict[str, dict[str, pl.DataType]] = {"transaction": TRANSACTION_SCHEMA,
                                                      "application": APPLICATION_SCHEMA}
#: Each request schema's id column (the key of one decision).
REQUEST_KEYS: dict[str, str] = {"transaction": "transaction_id", "application": "application_id"}


def empty_applications() -> pl.DataFrame:
    return pl.DataFrame(schema=APPLICATION_SCHEMA)


def empty_outcomes() -> pl.DataFrame:
    return pl.DataFrame(schema=OUTCOME_SCHEMA)
