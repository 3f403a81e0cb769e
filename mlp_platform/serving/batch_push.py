"""Pushing batch features (label-delayed merchant fraud rates, ...) from the warehouse to the
online store, with the as-of timestamp of every value.

Redis (production) is written directly. The embedded store belongs to the serving process (one
writer), so for it the values are dropped as snapshot files (``<dir>/<view>/<as_of>.json``, written
atomically) that the service loads on its next refresh; the snapshot is the record of what was
pushed either way.

Entity values outside the feature spec (the nightly batch risk of each customer, see
:data:`CUSTOMER_BATCH_RISK`) use the same backends through their batch-view interface, bound to that
one view only: on Redis they live next to the batch features (``{prefix}:b:customer_batch_risk:...``,
the newest versions per entity kept, each with its as-of time); with the embedded store, whose
directory belongs to the serving process, in an embedded journal of their own in the
subdirectory ``<store dir>/<view name>``. They are not model inputs: the service's feature reads never
see them, and :class:`SnapshotLoader` skips snapshots of views the store's spec does not have.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlp_platform.serving.online_store import DAY_US, BatchPlan, from_us, to_us

SNAPSHOT_GLOB = "*.json"

#: Nightly batch risk per customer (written by mlp_platform.batch.scoring): the score of the
#: customer's last transaction of the day, the day's highest score and how many of the day's
#: transactions scored review or decline. Not a model input (not in the feature spec).
CUSTOMER_BATCH_RISK = BatchPlan(
    name="customer_batch_risk", key="customer_id",
    features=("batch_risk_score_last", "batch_risk_score_max", "batch_high_risk_count"), out_index=())


def batch_views(spec) -> list[Any]:
    return [v for v in spec.views if v.mode == "batch"]


def write_snapshot(directory: Path, view: str, as_of: dt.date, rows: list[dict[str, Any]]) -> Path:
    target = directory / view / f"{as_of.isoformat()}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".snap-")
    with os.fdopen(fd, "w") as fh:
        json.dump({"view": view, "as_of": as_of.isoformat(), "rows": rows}, fh, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def push_batch(store_url: str, snapshot_dir: Path, view: str, as_of: dt.date, rows: list[dict[str, Any]]) -> dict:
    """Record a snapshot; write Redis directly when the store is Redis. Returns what was done."""
    path = write_snapshot(snapshot_dir, view, as_of, rows)
    pushed = 0
    if store_url.startswith(("redis://", "rediss://", "unix://")):
        from mlp_platform.serving.store_url import store_from_url

        with store_from_url(store_url) as store:
            pushed = store.materialize_batch(view, rows, as_of)
    return {"snapshot": str(path), "rows": len(rows), "pushed_to_redis": pushed}


class SnapshotLoader:
    """Loads snapshot files not loaded yet into a (embedded) store; called by the service's refresh."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._seen: dict[Path, int] = {}

    def load_new(self, store) -> int:
        loaded = 0
        if not self.directory.exists():
            return 0
        for path in sorted(self.directory.glob(f"*/{SNAPSHOT_GLOB}")):
            stamp = path.stat().st_mtime_ns
            if self._seen.get(path) == stamp:
                continue
            doc = json.loads(path.read_text())
            if doc["view"] not in {v.name for v in batch_views(store.spec)}:  # e.g. customer_batch_risk
                self._seen[path] = stamp
                continue
            store.materialize_batch(doc["view"], doc["rows"], dt.date.fromisoformat(doc["as_of"]))
            self._seen[path] = stamp
            loaded += 1
        return loaded


# --------------------------------------------------------------------------- entity values outside the spec


def _entity_backend(store_url: str, plan: BatchPlan, versions: int):
    """A backend of the online store at ``store_url`` bound to ``plan`` only (see the module docstring)."""
    scheme = urlsplit(store_url).scheme.lower()
    if scheme == "embedded":
        from mlp_platform.serving.online_store import EmbeddedBackend

        parts = urlsplit(store_url)
        base = parts.netloc + parts.path
        if not base:
            raise ValueError(f"{store_url}: an embedded store URL needs a directory")
        backend = EmbeddedBackend(Path(base) / plan.name)
    elif scheme in ("redis", "rediss", "unix"):
        from mlp_platform.serving.online_store_redis import RedisBackend

        backend = RedisBackend(store_url)
    else:
        raise ValueError(f"{store_url}: entity values need a persistent store (embedded:///dir or redis://...)")
    backend.bind([], [plan], versions)
    return backend


def push_entity_values(store_url: str, snapshot_dir: Path | None, plan: BatchPlan, rows: list[dict[str, Any]],
                       as_of: dt.datetime, versions: int = 3) -> dict:
    """Store ``rows`` (dicts with ``plan.key`` and ``plan.features``) as of ``as_of`` in the online store
    at ``store_url`` (and, when ``snapshot_dir`` is given, a snapshot file as the record). Re-pushing
    the same as-of replaces it. Returns what was done."""
    as_of_us = to_us(as_of)
    entries: dict[str, tuple] = {}
    for row in rows:
        key = row.get(plan.key)
        if key is None:
            raise ValueError(f"{plan.name}: a row has no {plan.key}")
        missing = [f for f in plan.features if f not in row]
        if missing:
            raise ValueError(f"{plan.name}: rows lack the column(s) {missing}")
        entries[str(key)] = tuple(None if row[f] is None else float(row[f]) for f in plan.features)
    path = None
    if snapshot_dir is not None:
        path = write_snapshot(Path(snapshot_dir), plan.name, from_us(as_of_us - as_of_us % DAY_US).date(), rows)
    backend = _entity_backend(store_url, plan, versions)
    try:
        backend.write_batch(plan, as_of_us, entries)
    finally:
        backend.close()
    return {"snapshot": str(path) if path else None, "rows": len(entries), "as_of": from_us(as_of_us).isoformat()}


def read_entity_values(store_url: str, plan: BatchPlan, key: str, versions: int = 3) -> dict[dt.datetime, dict]:
    """The versions held for one entity: as-of time -> {feature: value} (empty when none)."""
    backend = _entity_backend(store_url, plan, versions)
    try:  # the batch-view read of the backend interface; with no streaming view nothing is recorded
        _, found, _ = backend.record_and_read(0, "read", [], [str(key)])
    finally:
        backend.close()
    held = found[0] or {}
    return {from_us(as_of): dict(zip(plan.features, values, strict=True)) for as_of, values in sorted(held.items())}
