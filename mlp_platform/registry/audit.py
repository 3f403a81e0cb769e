"""An append-only, hash-chained JSON-lines audit trail (promotions, refusals, rollbacks).

Each record carries the SHA-256 of the previous record, so editing or removing a past record breaks
the chain; :func:`verify_chain` reports the first broken link.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    records: int
    first_broken: int | None = None
    reason: str = ""


class AuditLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path) as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record (fsynced before returning)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        previous = self.records()
        body = {
            "seq": len(previous),
            "time": dt.datetime.now(dt.UTC).isoformat(),
            "event": event,
            **fields,
            "prev_hash": previous[-1]["hash"] if previous else GENESIS,
        }
        record = {**body, "hash": _digest(body)}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return record


def verify_chain(records: list[dict[str, Any]]) -> ChainCheck:
    prev = GENESIS
    for i, record in enumerate(records):
        body = {k: v for k, v in record.items() if k != "hash"}
        if record.get("prev_hash") != prev:
            return ChainCheck(False, len(records), i, "prev_hash does not match the previous record")
        if _digest(body) != record.get("hash"):
            return ChainCheck(False, len(records), i, "record content does not match its hash")
        prev = record["hash"]
    return ChainCheck(True, len(records))
