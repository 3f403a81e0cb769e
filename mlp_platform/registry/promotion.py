"""Promotion and rollback: move roles (MLflow aliases) only when every gate passed, and record each
decision in the audit trail (what, when, by which run, why, gate results)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mlp_platform.registry.audit import AuditLog
from mlp_platform.registry.mlflow_registry import ModelRegistry, ModelVersionRef


@dataclass(frozen=True)
class GateResult:
    """The outcome of one promotion gate; ``summary`` explains it in a sentence."""

    name: str
    passed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PromotionOutcome:
    promoted: bool
    version: str
    role: str | None
    previous_champion: str | None
    reason: str
    audit_seq: int


#: Promotion policies: "champion" makes a passing candidate champion at once (the previous one is
#: kept as previous_champion for rollback); "challenger" only gives it the challenger role, for a
#: staged rollout to take it further.
POLICIES = ("champion", "challenger")


def promote(registry: ModelRegistry, audit: AuditLog, candidate: ModelVersionRef, gates: list[GateResult],
            *, run_id: str, policy: str = "champion", actor: str = "dagster") -> PromotionOutcome:
    if policy not in POLICIES:
        raise ValueError(f"unknown promotion policy {policy!r}; one of {POLICIES}")
    if not gates:
        raise ValueError("refusing to promote without any gate result")
    champion = registry.alias("champion")
    failed = [g for g in gates if not g.passed]
    gate_log = [g.as_dict() for g in gates]
    if failed:
        reason = "refused: gate(s) failed: " + "; ".join(f"{g.name}: {g.summary}" for g in failed)
        record = audit.append("promotion_refused", model=candidate.name, version=candidate.version,
                              training_run=candidate.run_id, by_run=run_id, actor=actor, reason=reason,
                              champion=champion, gates=gate_log)
        registry.set_version_tag(candidate.version, "promotion", "refused")
        return PromotionOutcome(False, candidate.version, None, champion, reason, record["seq"])
    if policy == "champion" or champion is None:
        role = "champion"
        if champion is not None and champion != candidate.version:
            registry.set_alias("previous_champion", champion)
        registry.set_alias("champion", candidate.version)
        if registry.alias("challenger") == candidate.version:
            registry.clear_alias("challenger")
        reason = ("first model: all gates passed" if champion is None
                  else f"all gates passed; replaces champion v{champion}")
    else:
        role = "challenger"
        registry.set_alias("challenger", candidate.version)
        reason = f"all gates passed; challenger to champion v{champion}"
    record = audit.append("promotion", model=candidate.name, version=candidate.version,
                          training_run=candidate.run_id, by_run=run_id, actor=actor, role=role,
                          previous_champion=champion, reason=reason, gates=gate_log)
    registry.set_version_tag(candidate.version, "promotion", role)
    return PromotionOutcome(True, candidate.version, role, champion, reason, record["seq"])


def rollback(registry: ModelRegistry, audit: AuditLog, *, run_id: str, reason: str,
             actor: str = "operator") -> PromotionOutcome:
    """Restore the previous champion (from the audit trail of champion changes)."""
    current = registry.alias("champion")
    if current is None:
        raise RuntimeError("no champion to roll back from")
    history = [r["version"] for r in audit.records()
               if (r["event"] == "promotion" and r.get("role") == "champion") or r["event"] == "rollback"]
    # The champion before the current one: walk the history of champions backwards.
    previous = registry.alias("previous_champion")
    earlier = [v for v in history if v != current]
    target = previous if previous and previous != current else (earlier[-1] if earlier else None)
    if target is None:
        raise RuntimeError(f"champion v{current} has no predecessor to roll back to")
    registry.set_alias("champion", target)
    before = [v for v in earlier if v != target]
    if before:
        registry.set_alias("previous_champion", before[-1])
    else:
        registry.clear_alias("previous_champion")
    registry.set_version_tag(current, "promotion", "rolled_back")
    record = audit.append("rollback", model=registry.model_name, version=target, replaced=current,
                          by_run=run_id, actor=actor, reason=reason)
    return PromotionOutcome(True, target, "champion", current, reason, record["seq"])
