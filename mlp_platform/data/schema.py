"""Canonical data model: the transaction and label schemas every source is mapped onto.

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
