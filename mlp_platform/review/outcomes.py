"""Analysts' outcomes as labels: the resolved cases that carry a label, copied from the review
database into the warehouse's ``raw.analyst_labels``, where dbt's ``stg_labels`` reads them beside
the chargebacks (``raw.labels``).

A label's time is when the analyst recorded it (``resolved_at``), never the decision's time: the
training set and the label-delayed features use a label only once it was known (``label_time`` at or
before the cut-off), so an outcome recorded after a training cut-off is not used by that training.
Its source is ``analyst`` (``stg_labels.label_source``); its usual delay is the decider's
``review.label_delay_days``.

The copy is incremental and idempotent: it reads the resolutions from the newest label time already
in the warehouse minus :data:`OVERLAP` (a resolution committed late by another replica is still
seen) and inserts only the case ids the table does not hold, in one transaction per page. Running it
twice copies nothing twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from mlp_platform.data.warehouse import (
    ANALYST_LABELS,
    ANALYST_LABELS_SCHEMA,
    Warehouse,
    ensure_analyst_labels,
)
from mlp_platform.review.cases import Case, CaseStore, now_utc

#: How far before the newest exported label time the next copy looks again.
OVERLAP = dt.timedelta(hours=1)


@dataclass(frozen=True)
class ExportResult:
    read: int  # resolved cases read from the review database
    exported: int  # new labels in the warehouse
    by_decider: dict[str, int]

    def as_metadata(self) -> dict[str, object]:
        return {"read": self.read, "exported": self.exported,
                "by_decider": ", ".join(f"{k}: {v}" for k, v in sorted(self.by_decider.items())) or "none"}


def _naive_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def label_rows(cases: list[Case], *, exported_at: dt.datetime | None = None) -> pl.DataFrame:
    """The warehouse rows of resolved cases that carry a label (an outcome without one is no label)."""
    at = _naive_utc(exported_at or now_utc())
    rows = [{"case_id": c.case_id, "decider": c.decider, "entity_id": c.entity_id, "outcome": c.outcome,
             "label": int(c.label), "served_decision": c.decision, "override_decision": c.override_decision,
             "reviewer": c.resolved_by, "decided_at": _naive_utc(c.decided_at),
             "label_time": _naive_utc(c.resolved_at), "exported_at": at}
            for c in cases if c.status == "resolved" and c.label is not None and c.resolved_at is not None]
    return pl.DataFrame(rows, schema=ANALYST_LABELS_SCHEMA)


def export_analyst_labels(store: CaseStore, warehouse: Warehouse, *, page: int = 5000) -> ExportResult:
    """Copy the labelled resolutions not yet in ``raw.analyst_labels`` (see the module docstring)."""
    ensure_analyst_labels(warehouse)
    with warehouse.session() as s:
        newest = s.fetchall(f"select max(label_time) from {ANALYST_LABELS}")[0][0]
    since = None if newest is None else newest.replace(tzinfo=dt.UTC) - OVERLAP
    read = exported = 0
    by_decider: dict[str, int] = {}
    after = None
    while True:
        cases = store.resolved_since(since, after=after, limit=page)
        read += len(cases)
        frame = label_rows(cases)
        if frame.height:
            with warehouse.session() as s, s.transaction():
                known = s.existing_keys(ANALYST_LABELS, "case_id", frame["case_id"].to_list())
                new = frame.filter(~pl.col("case_id").is_in(list(known)))
                exported += s.insert(ANALYST_LABELS, new)
            for decider, n in new.group_by("decider").len().iter_rows():
                by_decider[decider] = by_decider.get(decider, 0) + n
        if len(cases) < page:
            return ExportResult(read, exported, by_decider)
        after = (cases[-1].resolved_at, cases[-1].case_id)
