"""Daily partitions of the configured source (one partition per event day)."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from mlp_platform.settings import Settings


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    first, end = settings.source_days()
    return dg.DailyPartitionsDefinition(start_date=first.isoformat(), end_date=end.isoformat())


def partition_days(context: dg.AssetExecutionContext) -> tuple[dt.date, dt.date]:
    """[first_day, end_day) of the partition (range) a run materialises."""
    window = context.partition_time_window
    return window.start.date(), window.end.date()
