"""The demo's review queue: a day of transactions replayed through the real scoring service (its
clock set to the end of that day, its review desk on the local review database), so the decisions
in the review band open real cases, with their evidence, in the queue the reviewer's page shows."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from typing import Any

COLUMNS = ("transaction_id", "event_time", "customer_id", "merchant_id", "amount", "currency", "channel", "country",
           "merchant_category", "device_id")


def open_demo_cases(settings, day: dt.date, *, limit: int = 2000) -> dict[str, Any]:
    """Score up to ``limit`` transactions of ``day`` through the service; returns the decisions and
    the queue's health afterwards."""
    from mlp_platform.data.warehouse import warehouse_for
    from mlp_platform.review.api import build_desk
    from mlp_platform.serving.api_models import TransactionIn
    from mlp_platform.serving.app import build_service

    frame = warehouse_for(settings).query(
        f"select {', '.join(COLUMNS)} from staging.stg_transactions where event_date = ? "
        f"order by event_time, transaction_id limit {int(limit)}", [day])
    end_of_day = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()
    service = build_service(settings, clock=lambda: end_of_day)
    desk = build_desk(settings, service=service)

    async def replay() -> Counter:
        decisions: Counter = Counter()
        try:
            for row in frame.iter_rows(named=True):
                row["event_time"] = row["event_time"].replace(tzinfo=dt.UTC)
                decisions[(await service.score(TransactionIn.model_validate(row))).decision] += 1
        finally:
            await service.close()  # the opener writes the queued cases before the log closes
        return decisions

    decisions = asyncio.run(replay())
    if desk is None:
        return {"decisions": dict(decisions), "queue": None}
    return {"decisions": dict(decisions), "queue": {n: desk.store.health(n) for n in desk.deciders}}
