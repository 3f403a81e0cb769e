"""The real dataset: Fraud Detection Handbook transactions mapped onto the canonical schema.

Mapping: customer = CUSTOMER_ID, merchant = TERMINAL_ID, amount = TX_AMOUNT, event time =
TX_DATETIME. Fields the dataset lacks get the documented defaults of
:mod:`mlp_platform.data.schema` (channel "unknown", country "ZZ", currency "EUR", merchant category
"0000", no device). The dataset has no label times: a fraud is assumed to become known
``label_delay_days`` after the transaction (configurable, ``MLP_HANDBOOK_LABEL_DELAY_DAYS``).
``TX_FRAUD_SCENARIO`` goes to the label table as ``fraud_scenario`` (label metadata), never to the
transactions, so no feature can see it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from mlp_platform.data.schema import (
    DEFAULT_CHANNEL,
    DEFAULT_COUNTRY,
    DEFAULT_CURRENCY,
    DEFAULT_MERCHANT_CATEGORY,
    LABEL_SCHEMA,
    TRANSACTION_SCHEMA,
)

#: Canonical fields this source does not have, with the value they receive.
ABSENT_FIELDS: dict[str, str | None] = {
    "currency": DEFAULT_CURRENCY,
    "channel": DEFAULT_CHANNEL,
    "country": DEFAULT_COUNTRY,
    "merchant_category": DEFAULT_MERCHANT_CATEGORY,
    "device_id": None,
}

REQUIRED_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD",
                    "TX_FRAUD_SCENARIO")


def load_handbook(
    path: Path, first_day: dt.date, end_day: dt.date, label_delay_days: float
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Transactions with event time in [first_day, end_day) and the labels of their frauds."""
    if not path.exists():
        raise FileNotFoundError(
            f"handbook dataset not found at {path}; set MLP_HANDBOOK_PATH to transactions.parquet")
    scan = pl.scan_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in scan.collect_schema().names()]
    if missing:
        raise ValueError(f"{path}: not the handbook dataset, columns missing: {', '.join(missing)}")
    start = dt.datetime.combine(first_day, dt.time())
    end = dt.datetime.combine(end_day, dt.time())
    raw = (
        scan.filter((pl.col("TX_DATETIME") >= start) & (pl.col("TX_DATETIME") < end))
        .select(*REQUIRED_COLUMNS)
        .collect()
    )
    event_time = pl.col("TX_DATETIME").cast(pl.Datetime("us"))
    transactions = raw.select(
        pl.col("TRANSACTION_ID").cast(pl.String).alias("transaction_id"),
        event_time.alias("event_time"),
        pl.col("CUSTOMER_ID").cast(pl.String).alias("customer_id"),
        pl.col("TERMINAL_ID").cast(pl.String).alias("merchant_id"),
        pl.col("TX_AMOUNT").cast(pl.Float64).alias("amount"),
        *[pl.lit(value, dtype=pl.String).alias(name) for name, value in ABSENT_FIELDS.items()],
    ).select(list(TRANSACTION_SCHEMA))
    delay = dt.timedelta(days=label_delay_days)
    labels = raw.filter(pl.col("TX_FRAUD") == 1).select(
        pl.col("TRANSACTION_ID").cast(pl.String).alias("transaction_id"),
        pl.lit(1, dtype=pl.Int8).alias("label"),
        (event_time + delay).alias("label_time"),
        pl.col("TX_FRAUD_SCENARIO").cast(pl.String).alias("fraud_scenario"),
    ).select(list(LABEL_SCHEMA))
    return transactions, labels
