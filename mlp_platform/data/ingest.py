"""Ingest: load days from the configured source, enforce the data contracts, land them in the warehouse.

A plain function used by the Dagster ingest asset and by tests; it writes nothing unless the whole
batch (transactions and labels) passes the critical contract rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from mlp_platform.data.contracts import ContractReport, validate_labels, validate_transactions
from mlp_platform.data.sources import load_batch
from mlp_platform.data.warehouse import Warehouse, ensure_analyst_labels, with_event_date
from mlp_platform.settings import Settings


@dataclass(frozen=True)
class IngestResult:
    source: str
    first_day: dt.date
    end_day: dt.date
    transactions: int
    labels: int
    frauds: int
    transactions_report: ContractReport
    labels_report: ContractReport
    absent_fields: tuple[str, ...]


def ingest_days(
    settings: Settings,
    warehouse: Warehouse,
    first_day: dt.date,
    end_day: dt.date,
    on_day: Callable[[dt.date], None] | None = None,
) -> IngestResult:
    """Replace days [first_day, end_day) of raw.transactions and raw.labels with validated source data.

    Raises ContractViolation (nothing written) on a critical violation.
    """
    batch = load_batch(settings, first_day, end_day, on_day=on_day)
    transactions, tx_report = validate_transactions(batch.transactions, dataset="raw_transactions")
    labels, label_report = validate_labels(batch.labels, transactions, dataset="raw_labels")
    transactions = with_event_date(transactions)
    labels = labels.join(transactions.select("transaction_id", "event_date"), on="transaction_id", how="inner")
    warehouse.replace_days("transactions", transactions, first_day, end_day)
    warehouse.replace_days("labels", labels, first_day, end_day)
    ensure_analyst_labels(warehouse)  # the other label source (review outcomes), read beside raw.labels
    return IngestResult(
        source=batch.source, first_day=first_day, end_day=end_day,
        transactions=transactions.height, labels=labels.height,
        frauds=int(labels.select((pl.col("label") == 1).sum()).item()),
        transactions_report=tx_report, labels_report=label_report, absent_fields=batch.absent_fields,
    )
