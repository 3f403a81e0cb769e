"""Routing and rollout state: which model version serves which share of traffic.

The state is a small JSON document written by the promotion side (Dagster) and read by the service
(polled, hot-swapped): champion, an optional challenger with a traffic share (canary stages), and
shadow versions scored off the critical path. Assignment is sticky: a customer always lands in the
same bucket (hash of the customer id), so a card sees one model during an experiment.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

BUCKETS = 10_000
CANARY_STAGES = (0.01, 0.05, 0.25, 1.0)


@dataclass(frozen=True)
class RoutingState:
    champion: str | None = None
    challenger: str | None = None
    challenger_share: float = 0.0  # 0..1 of customers routed to the challenger
    shadows: tuple[str, ...] = ()
    policy_version: str = "policy-1"
    updated_by: str = ""
    revision: int = 0

    def validate(self) -> RoutingState:
        if not 0.0 <= self.challenger_share <= 1.0:
            raise ValueError(f"challenger_share {self.challenger_share} not in [0, 1]")
        if self.challenger_share > 0 and not self.challenger:
            raise ValueError("a challenger share without a challenger version")
        return self

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "shadows": list(self.shadows)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RoutingState:
        doc = json.loads(text)
        doc["shadows"] = tuple(doc.get("shadows") or ())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in doc.items() if k in known}).validate()


def bucket(customer_id: str) -> int:
    """Sticky bucket 0..9999 of a customer (stable across processes and restarts)."""
    digest = hashlib.blake2b(customer_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def choose_arm(state: RoutingState, customer_id: str) -> tuple[str, str]:
    """(arm, version): 'challenger' for the configured share of customers, else 'champion'."""
    if state.challenger and state.challenger_share > 0 and bucket(customer_id) < state.challenger_share * BUCKETS:
        return "challenger", state.challenger
    if state.champion is None:
        raise LookupError("no champion in the routing state")
    return "champion", state.champion


def next_canary_share(share: float, stages: tuple[float, ...] = CANARY_STAGES) -> float:
    """The next canary stage above ``share`` (1% -> 5% -> 25% -> 100%); 100% stays 100%."""
    return next((stage for stage in stages if stage > share + 1e-12), stages[-1])


@dataclass
class RoutingFile:
    """The routing state on disk, replaced atomically (write + rename) so readers never see half."""

    path: Path
    _cache: tuple[float, RoutingState] | None = field(default=None, repr=False)

    def read(self) -> RoutingState:
        stat = self.path.stat()
        if self._cache and self._cache[0] == stat.st_mtime_ns:
            return self._cache[1]
        state = RoutingState.from_json(self.path.read_text())
        self._cache = (stat.st_mtime_ns, state)
        return state

    def write(self, state: RoutingState) -> RoutingState:
        state.validate()
        previous = self.read().revision if self.path.exists() else 0
        state = RoutingState(**{**asdict(state), "shadows": tuple(state.shadows), "revision": previous + 1})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".routing-")
        with os.fdopen(fd, "w") as fh:
            fh.write(state.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        return state
