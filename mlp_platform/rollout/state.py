"""The staged-rollout state: which candidate is being rolled out, at which stage (shadow, canary
share, completed, rolled back), since when, and the history of every step.

Persisted as one JSON document at ``settings.rollout_path``, replaced atomically (write + fsync +
rename) so a reader never sees half a state; a sibling ``.lock`` file serialises the
check-then-apply of the state machine across processes. The transitions are pure functions on
:class:`RolloutState` (no registry, no files): :mod:`mlp_platform.rollout.machine` adds the
registry, routing and audit effects.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: no inter-process lock
    fcntl = None  # type: ignore[assignment]

SHADOW, CANARY, COMPLETED, ROLLED_BACK = "shadow", "canary", "completed", "rolled_back"
STAGES = (SHADOW, CANARY, COMPLETED, ROLLED_BACK)
ACTIVE_STAGES = (SHADOW, CANARY)
SCHEMA = 1


class RolloutStateError(ValueError):
    """The rollout state file is unreadable, or a transition is not allowed; the message says which."""


def utc_iso(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise RolloutStateError(f"timestamp {moment!r} has no timezone: pass an aware UTC datetime")
    return moment.astimezone(dt.UTC).isoformat()


def parse_time(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class RolloutState:
    """One rollout of ``candidate`` against ``baseline_champion`` (the champion when it started).

    ``share`` is the challenger traffic share of the current canary stage (0 in shadow, 1.0 once
    completed, 0 after a rollback). ``metrics_snapshot`` holds the service's counters when the stage
    started (guardrails use the increase since then). ``champion_reference`` accumulates, over the
    finished stages, the champion arm's binned scores and decision counts: the reference the
    candidate is compared with when the current stage has too few champion-arm decisions (the 100%
    canary stage has none). ``history`` lists every step (from, to, at, why, by_run, guardrails).
    """

    candidate: str
    baseline_champion: str | None
    stage: str
    share: float
    stage_started_at: str
    rollout_started_at: str
    started_by: str
    metrics_snapshot: dict[str, float] | None = None
    champion_reference: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()
    schema: int = SCHEMA

    @property
    def active(self) -> bool:
        return self.stage in ACTIVE_STAGES

    @property
    def position(self) -> dict[str, Any]:
        """Where the rollout is: what a decision must have been taken on to be applied."""
        return {"candidate": self.candidate, "stage": self.stage, "share": self.share,
                "stage_started_at": self.stage_started_at}

    def validate(self) -> RolloutState:
        if self.stage not in STAGES:
            raise RolloutStateError(f"rollout stage {self.stage!r} is not one of {STAGES}")
        if not 0.0 <= self.share <= 1.0:
            raise RolloutStateError(f"rollout share {self.share} not in [0, 1]")
        if self.stage == CANARY and self.share <= 0.0:
            raise RolloutStateError("a canary stage needs a share above 0")
        if not self.candidate:
            raise RolloutStateError("a rollout without a candidate version")
        parse_time(self.stage_started_at)
        parse_time(self.rollout_started_at)
        return self

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "history": list(self.history)}, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RolloutState:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise RolloutStateError(f"rollout state is not JSON: {err}") from err
        if not isinstance(doc, dict):
            raise RolloutStateError("rollout state is not a JSON object")
        if doc.get("schema", SCHEMA) != SCHEMA:
            raise RolloutStateError(f"rollout state schema {doc.get('schema')} is not {SCHEMA}")
        known = set(cls.__dataclass_fields__)
        missing = {"candidate", "stage", "share", "stage_started_at", "rollout_started_at", "started_by"} - set(doc)
        if missing:
            raise RolloutStateError(f"rollout state lacks {sorted(missing)}")
        doc["history"] = tuple(doc.get("history") or ())
        doc["share"] = float(doc["share"])
        return cls(**{k: v for k, v in doc.items() if k in known}).validate()


# --- pure transitions --------------------------------------------------------------------------


def begin(candidate: str, baseline_champion: str | None, run_id: str, now: dt.datetime,
          config: dict[str, Any], metrics_snapshot: dict[str, float] | None = None) -> RolloutState:
    """A new rollout in the shadow stage."""
    at = utc_iso(now)
    step = {"from": None, "to": {"stage": SHADOW, "share": 0.0}, "at": at, "why": "rollout started",
            "by_run": run_id, "guardrails": []}
    return RolloutState(candidate, baseline_champion, SHADOW, 0.0, at, at, run_id, metrics_snapshot, None,
                        dict(config), (step,)).validate()


def served_directly(candidate: str, run_id: str, now: dt.datetime, config: dict[str, Any],
                    why: str) -> RolloutState:
    """No champion to compare with: the candidate serves at once (the rollout is completed)."""
    at = utc_iso(now)
    step = {"from": None, "to": {"stage": COMPLETED, "share": 1.0}, "at": at, "why": why, "by_run": run_id,
            "guardrails": []}
    return RolloutState(candidate, None, COMPLETED, 1.0, at, at, run_id, None, None, dict(config),
                        (step,)).validate()


def step(state: RolloutState, to_stage: str, to_share: float, now: dt.datetime, why: str, run_id: str,
         guardrails: list[dict[str, Any]] | None = None, metrics_snapshot: dict[str, float] | None = None,
         champion_reference: dict[str, Any] | None = None) -> RolloutState:
    """The state after one step. Allowed: shadow -> canary; canary -> a higher canary share;
    canary -> completed; shadow/canary -> rolled_back. Anything else raises RolloutStateError."""
    if not state.active:
        raise RolloutStateError(f"the rollout of v{state.candidate} is already {state.stage}")
    allowed = (
        (to_stage == CANARY and state.stage == SHADOW and 0.0 < to_share <= 1.0)
        or (to_stage == CANARY and state.stage == CANARY and state.share < to_share <= 1.0)
        or (to_stage == COMPLETED and state.stage == CANARY)
        or to_stage == ROLLED_BACK
    )
    if not allowed:
        raise RolloutStateError(f"no step from {state.stage} {state.share:g} to {to_stage} {to_share:g}")
    at = utc_iso(now)
    record = {"from": {"stage": state.stage, "share": state.share}, "to": {"stage": to_stage, "share": to_share},
              "at": at, "why": why, "by_run": run_id, "guardrails": list(guardrails or [])}
    return replace(state, stage=to_stage, share=float(to_share), stage_started_at=at,
                   metrics_snapshot=metrics_snapshot,
                   champion_reference=champion_reference if champion_reference is not None
                   else state.champion_reference,
                   history=(*state.history, record)).validate()


# --- the file ----------------------------------------------------------------------------------


@dataclass
class RolloutStateFile:
    """The rollout state on disk (absent file: no rollout ever started)."""

    path: Path

    def read(self) -> RolloutState | None:
        if not self.path.exists():
            return None
        try:
            return RolloutState.from_json(self.path.read_text())
        except (RolloutStateError, TypeError, ValueError) as err:
            raise RolloutStateError(f"rollout state {self.path} is unreadable: {err}") from err

    def write(self, state: RolloutState) -> RolloutState:
        state.validate()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".rollout-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(state.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return state

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes for the block (a sensor tick and a job never interleave)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
