"""Pushing batch features (label-delayed merchant fraud rates, ...) from the warehouse to the
online store, with the as-of timestamp of every value.

Redis (production) is written directly. The embedded store belongs to the serving process (one
writer), so for it the values are dropped as snapshot files (``<dir>/<view>/<as_of>.json``, written
atomically) that the service loads on its next refresh; the snapshot is the record of what was
pushed either way.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

SNAPSHOT_GLOB = "*.json"


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
        from mlp_platform.serving.online_store import store_from_url

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
            store.materialize_batch(doc["view"], doc["rows"], dt.date.fromisoformat(doc["as_of"]))
            self._seen[path] = stamp
            loaded += 1
        return loaded
