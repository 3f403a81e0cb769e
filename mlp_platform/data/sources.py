"""Data sources behind one interface: the configured source yields canonical transactions and labels
for a range of days; the rest of the graph does not care which source it was."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from mlp_platform.data.handbook import ABSENT_FIELDS, load_handbook
from mlp_platform.data.schema import LABEL_SCHEMA, TRANSACTION_SCHEMA
from mlp_platform.data.synthetic import SyntheticConfig, generate_day
from mlp_platform.settings import Settings


@dataclass(frozen=True)
class SourceBatch:
    """What a source produced for [first_day, end_day): canonical (not yet validated) frames."""

    source: str
    first_day: dt.date
    end_day: dt.date
    transactions: pl.DataFrame
    labels: pl.DataFrame
    absent_fields: tuple[str, ...] = ()


def synthetic_config(settings: Settings) -> SyntheticConfig:
    s = settings.synthetic
    return SyntheticConfig(seed=s.seed, start_date=s.start_date, days=s.days, n_customers=s.n_customers,
                           n_merchants=s.n_merchants, drift_start=s.drift_start)


def days_in(first_day: dt.date, end_day: dt.date) -> list[dt.date]:
    return [first_day + dt.timedelta(days=i) for i in range((end_day - first_day).days)]


def load_batch(
    settings: Settings,
    first_day: dt.date,
    end_day: dt.date,
    on_day: Callable[[dt.date], None] | None = None,
) -> SourceBatch:
    """Load [first_day, end_day) from the configured source; refuses days the source does not cover."""
    lo, hi = settings.source_days()
    if first_day < lo or end_day > hi or first_day >= end_day:
        raise ValueError(
            f"days {first_day}..{end_day - dt.timedelta(days=1)} are outside the {settings.source} source "
            f"range {lo}..{hi - dt.timedelta(days=1)}")
    if settings.source == "handbook":
        txs, labels = load_handbook(settings.handbook_path, first_day, end_day, settings.handbook_label_delay_days)
        if on_day:
            for day in days_in(first_day, end_day):
                on_day(day)
        return SourceBatch("handbook", first_day, end_day, txs, labels, tuple(ABSENT_FIELDS))
    config = synthetic_config(settings)
    tx_parts, label_parts = [], []
    for day in days_in(first_day, end_day):
        txs, labels = generate_day(config, day)
        tx_parts.append(txs)
        label_parts.append(labels)
        if on_day:
            on_day(day)
    return SourceBatch(
        "synthetic", first_day, end_day,
        pl.concat(tx_parts) if tx_parts else pl.DataFrame(schema=TRANSACTION_SCHEMA),
        pl.concat(label_parts) if label_parts else pl.DataFrame(schema=LABEL_SCHEMA),
    )
