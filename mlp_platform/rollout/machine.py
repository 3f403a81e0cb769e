"""The staged-rollout state machine with its effects: registry aliases, the serving layer's routing
state, the rollout state file and the audit trail.

    start_rollout ──> shadow ──> canary 1% ──> 5% ──> 25% ──> 100% ──> completed (champion)
                        │            │          │       │        │
                        └────────────┴──────────┴───────┴────────┴──> rolled_back

A Dagster sensor calls :func:`evaluate_rollout` (read-only) on every tick and, when the decision is
``advance``, ``complete`` or ``rollback``, a job applies it with :func:`apply_rollout_decision`.
Each stage lasts at least its soak and until every guardrail has enough observations; a failed
guardrail rolls back at once (even mid-soak), and so does a stage still short of data after
``max_stage_s``. Applying re-checks, under a lock, that the rollout
is still where the decision was taken (candidate, stage, share, stage start): a stale decision is
not applied. The effects of a step are idempotent (aliases, routing, then state, then audit), so a
step interrupted half-way is completed by applying the same decision again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlp_platform.deciders.declaration import DEFAULT_DECIDER
from mlp_platform.registry import roles
from mlp_platform.registry.promotion import GateResult, promote
from mlp_platform.rollout.guardrails import FAIL, NOT_EVALUATED, WAIT, GuardrailResult, RolloutConfig, judge
from mlp_platform.rollout.observe import decision_log_root, observe, parse_metrics
from mlp_platform.rollout.scores import ScoreSample
from mlp_platform.rollout.state import (
    CANARY,
    COMPLETED,
    ROLLED_BACK,
    SHADOW,
    RolloutState,
    RolloutStateFile,
    begin,
    parse_time,
    served_directly,
    step,
    utc_iso,
)
from mlp_platform.serving.routing import RoutingState, next_canary_share

ACTIONS = ("none", "wait", "advance", "rollback", "complete")


class RolloutError(RuntimeError):
    """A rollout cannot start or step; the message says why."""


@dataclass(frozen=True)
class RolloutDecision:
    """What the rollout should do now, and the evidence: every guardrail's value, limit, verdict."""

    action: str
    reason: str
    candidate: str | None = None
    baseline_champion: str | None = None
    from_stage: str | None = None
    from_share: float | None = None
    stage_started_at: str | None = None
    to_stage: str | None = None
    to_share: float | None = None
    evaluated_at: str = ""
    soak_remaining_s: float = 0.0
    guardrails: tuple[GuardrailResult, ...] = ()
    observation: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[GuardrailResult]:
        return [g for g in self.guardrails if g.verdict == FAIL]

    @property
    def position(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "stage": self.from_stage, "share": self.from_share,
                "stage_started_at": self.stage_started_at}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (Dagster metadata, run config from a sensor to a job); :meth:`from_dict` inverts it."""
        return {
            "action": self.action, "reason": self.reason, "candidate": self.candidate,
            "baseline_champion": self.baseline_champion, "from_stage": self.from_stage,
            "from_share": self.from_share, "stage_started_at": self.stage_started_at, "to_stage": self.to_stage,
            "to_share": self.to_share, "evaluated_at": self.evaluated_at,
            "soak_remaining_s": self.soak_remaining_s, "guardrails": [g.to_dict() for g in self.guardrails],
            "observation": dict(self.observation),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RolloutDecision:
        if not isinstance(doc, dict) or "action" not in doc:
            raise ValueError("a rollout decision needs at least an 'action'")
        if doc["action"] not in ACTIONS:
            raise ValueError(f"unknown rollout action {doc['action']!r}; one of {ACTIONS}")
        known = set(cls.__dataclass_fields__) - {"guardrails"}
        unknown = set(doc) - known - {"guardrails"}
        if unknown:
            raise ValueError(f"unknown rollout decision keys {sorted(unknown)}")
        guardrails = tuple(GuardrailResult(**g) for g in doc.get("guardrails") or ())
        return cls(**{k: v for k, v in doc.items() if k in known}, guardrails=guardrails)


@dataclass(frozen=True)
class RolloutOutcome:
    """What starting or applying did (``applied`` False: nothing changed, ``message`` says why)."""

    applied: bool
    action: str
    message: str
    state: RolloutState | None = None
    routing: RoutingState | None = None
    audit_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "action": self.action, "message": self.message,
                "stage": self.state.stage if self.state else None, "share": self.state.share if self.state else None,
                "candidate": self.state.candidate if self.state else None,
                "routing_revision": self.routing.revision if self.routing else None, "audit_seq": self.audit_seq}


def _now(now: dt.datetime | None) -> dt.datetime:
    moment = now or dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return moment


def _metrics_snapshot(metrics_text: str | None) -> dict[str, float] | None:
    return parse_metrics(metrics_text) if metrics_text is not None else None


def _log_root(settings, decider) -> Path:
    """The decision logs a decider's rollout reads: the service's (default decider), else the
    decider's own chains (one directory per process under ``decisions-<decider>``)."""
    if decider is None or decider.name == DEFAULT_DECIDER:
        return decision_log_root(settings)
    return settings.decision_log_root.parent / f"decisions-{decider.name}"


def rollout_state(settings, *, decider=None) -> RolloutState | None:
    """The current (or last) rollout of ``decider`` (default: the default decider), or None if none
    was ever started."""
    return RolloutStateFile(roles.rollout_path_for(settings, decider)).read()


# --- start -------------------------------------------------------------------------------------


def start_rollout(settings, version: str, run_id: str, config: RolloutConfig, actor: str = "dagster",
                  metrics_text: str | None = None, *, now: dt.datetime | None = None,
                  require_gates: bool = True, decider=None) -> RolloutOutcome:
    """Start rolling ``version`` out: it becomes the ``shadow`` (scored off the critical path next to
    the champion) and the rollout state starts at the shadow stage. With no champion at all it
    becomes champion at once (nothing to compare with). ``require_gates``: refuse a version whose
    promotion gates did not pass (version tag ``gates=passed``, set by ``evaluate_candidate``).
    Starting the rollout already active for the same version changes nothing; another active
    rollout, or a challenger role held by another version, is refused."""
    from mlflow.exceptions import MlflowException

    now = _now(now)
    version = str(version)
    registry = roles.registry_for(settings, decider)
    audit = roles.audit_for(settings, decider)
    files = RolloutStateFile(roles.rollout_path_for(settings, decider))
    try:
        ref = registry.ref(version)
        tags = registry.version_tags(version)
    except MlflowException as err:
        raise RolloutError(f"model version {version!r} of {registry.model_name} is not registered") from err
    if require_gates and tags.get("gates") != "passed":
        raise RolloutError(f"v{version} has gates={tags.get('gates', 'not evaluated')!r}: only a version whose "
                           "promotion gates passed can be rolled out")
    snapshot = _metrics_snapshot(metrics_text)
    with files.locked():
        current = files.read()
        if current is not None and current.active:
            if current.candidate == version:
                return RolloutOutcome(False, "start", f"the rollout of v{version} is already at {current.stage}",
                                      current)
            raise RolloutError(f"a rollout of v{current.candidate} is active ({current.stage} {current.share:g}): "
                               "let it finish or abort it first")
        champion = registry.alias("champion")
        if champion == version:
            raise RolloutError(f"v{version} is already the champion")
        challenger = registry.alias("challenger")
        if challenger not in (None, version):
            raise RolloutError(f"the challenger role is held by v{challenger}: clear it before a rollout needs it")
        updated_by = f"rollout run {run_id} ({actor})"
        if champion is None:
            why = "no champion to compare with: the candidate serves directly"
            promote(registry, audit, ref, [GateResult("staged_rollout", True, why)], run_id=run_id,
                    policy="champion", actor=actor)
            if registry.alias("shadow") == version:
                registry.clear_alias("shadow")
            routing = roles.sync_routing(settings, decider=decider, updated_by=f"{updated_by}: v{version} champion",
                                             challenger_share=0.0)
            state = files.write(served_directly(version, run_id, now, config.to_dict(), why))
            record = audit.append("rollout_completed", model=ref.name, version=version, baseline_champion=None,
                                  by_run=run_id, actor=actor, reason=why, stage_from=None, stage_to=COMPLETED,
                                  routing_revision=routing.revision, config=config.to_dict())
            return RolloutOutcome(True, "complete", why, state, routing, record["seq"])
        replaced_shadow = registry.alias("shadow")
        if challenger == version:
            registry.clear_alias("challenger")
        registry.set_alias("shadow", version)
        registry.set_version_tag(version, "promotion", "rollout:shadow")
        routing = roles.sync_routing(settings, decider=decider, updated_by=f"{updated_by}: v{version} shadow")
        state = files.write(begin(version, champion, run_id, now, config.to_dict(), snapshot))
        reason = f"staged rollout of v{version} against champion v{champion} starts in shadow"
        record = audit.append("rollout_started", model=ref.name, version=version, baseline_champion=champion,
                              by_run=run_id, actor=actor, reason=reason, stage_to=SHADOW,
                              replaced_shadow=replaced_shadow if replaced_shadow != version else None,
                              metrics_snapshot=snapshot is not None, routing_revision=routing.revision,
                              config=config.to_dict())
        return RolloutOutcome(True, "start", reason, state, routing, record["seq"])


# --- evaluate ----------------------------------------------------------------------------------


def evaluate_rollout(settings, now: dt.datetime, config: RolloutConfig, metrics_text: str | None = None,
                     *, decision_log_dir: Path | None = None, decider=None) -> RolloutDecision:
    """Judge the current stage (read-only): none / wait / advance / rollback / complete, with every
    guardrail. ``decision_log_dir``: the service's decision-log root (default: as the service)."""
    now = _now(now)
    at = utc_iso(now)
    state = rollout_state(settings, decider=decider)
    if state is None or not state.active:
        why = "no rollout was ever started" if state is None else f"the rollout of v{state.candidate} is {state.stage}"
        return RolloutDecision("none", f"no active rollout: {why}", evaluated_at=at,
                               candidate=state.candidate if state else None)
    base = {"candidate": state.candidate, "baseline_champion": state.baseline_champion,
            "from_stage": state.stage, "from_share": state.share, "stage_started_at": state.stage_started_at,
            "evaluated_at": at}
    champion = roles.registry_for(settings, decider).alias("champion")
    if champion == state.candidate and state.stage == CANARY:
        return RolloutDecision("complete", f"v{state.candidate} is already champion: a completion was interrupted "
                               "before the rollout state was written; finishing it", to_stage=COMPLETED,
                               to_share=1.0, **base)
    if champion != state.baseline_champion:
        return RolloutDecision("rollback", f"the champion changed during the rollout (v{state.baseline_champion} "
                               f"at start, now v{champion}): the evidence compares with another model",
                               to_stage=ROLLED_BACK, to_share=0.0, **base)
    obs = observe(state, decision_log_dir or _log_root(settings, decider), now, metrics_text)
    accumulated = ScoreSample.from_dict(state.champion_reference)
    guardrails = tuple(judge(obs, config, accumulated, state.candidate,
                             decider.name if decider is not None else None))
    observation = {**obs.summary(), "champion_sample": obs.champion.to_dict()}
    base.update(guardrails=guardrails, observation=observation)
    unevaluated = "; ".join(f"{g.name} not evaluated ({g.detail})" for g in guardrails
                            if g.verdict == NOT_EVALUATED and not g.detail.startswith("not applicable"))
    suffix = f". {unevaluated}" if unevaluated else ""
    failed = [g for g in guardrails if g.verdict == FAIL]
    if failed:
        return RolloutDecision("rollback", "guardrail failed: " + "; ".join(g.line() for g in failed) + suffix,
                               to_stage=ROLLED_BACK, to_share=0.0, **base)
    elapsed = (now - parse_time(state.stage_started_at)).total_seconds()
    remaining = max(config.soak_s(state.stage) - elapsed, 0.0)
    if remaining > 0:
        return RolloutDecision("wait", f"soaking: {remaining:.0f} s of the {state.stage} soak left" + suffix,
                               soak_remaining_s=remaining, **base)
    waiting = [g for g in guardrails if g.verdict == WAIT]
    if waiting:
        why = "; ".join(f"{g.name}: {g.detail}" for g in waiting)
        if config.max_stage_s and elapsed > config.max_stage_s:  # e.g. the service never loaded the candidate
            return RolloutDecision("rollback", f"stage timed out: still not enough data after {elapsed:.0f} s "
                                   f"(max_stage_s {config.max_stage_s:g}): {why}" + suffix,
                                   to_stage=ROLLED_BACK, to_share=0.0, **base)
        return RolloutDecision("wait", why + suffix, **base)
    stages = config.canary_stages
    if state.stage == SHADOW:
        to_stage, to_share = CANARY, stages[0]
    elif state.share >= stages[-1] - 1e-12:
        return RolloutDecision("complete", f"every guardrail passed at {state.share:.0%}: v{state.candidate} "
                               "becomes champion" + suffix, to_stage=COMPLETED, to_share=1.0, **base)
    else:
        to_stage, to_share = CANARY, next_canary_share(state.share, stages)
    return RolloutDecision("advance", f"every guardrail passed in {state.stage} {state.share:g}: "
                           f"canary {to_share:.0%} next" + suffix, to_stage=to_stage, to_share=to_share, **base)


# --- apply -------------------------------------------------------------------------------------


def apply_rollout_decision(settings, decision: RolloutDecision, run_id: str, actor: str = "dagster",
                           metrics_text: str | None = None, *, now: dt.datetime | None = None,
                           decider=None) -> RolloutOutcome:
    """Carry out an ``advance`` / ``complete`` / ``rollback`` decision (registry aliases, routing,
    rollout state, audit). ``metrics_text``: the service's metrics now, the new stage's snapshot.
    A ``none``/``wait`` decision, or one taken on another position of the rollout, changes nothing."""
    if decision.action not in ACTIONS:
        raise ValueError(f"unknown rollout action {decision.action!r}; one of {ACTIONS}")
    if decision.action in ("none", "wait"):
        return RolloutOutcome(False, decision.action, f"nothing to apply: {decision.reason}")
    now = _now(now)
    snapshot = _metrics_snapshot(metrics_text)
    files = RolloutStateFile(roles.rollout_path_for(settings, decider))
    with files.locked():
        state = files.read()
        if state is None or not state.active or state.position != decision.position:
            where = "no rollout" if state is None else f"{state.position}"
            return RolloutOutcome(False, decision.action, f"stale decision not applied: taken on {decision.position}, "
                                  f"the rollout is now at {where}", state)
        registry = roles.registry_for(settings, decider)
        audit = roles.audit_for(settings, decider)
        version = state.candidate
        guardrails = [g.to_dict() for g in decision.guardrails]
        updated_by = f"rollout run {run_id} ({actor})"
        common = {"model": registry.model_name, "version": version, "baseline_champion": state.baseline_champion,
                  "by_run": run_id, "actor": actor, "reason": decision.reason, "stage_from": state.stage,
                  "share_from": state.share, "guardrails": guardrails,
                  "observation": {k: v for k, v in decision.observation.items() if k != "champion_sample"}}
        if decision.action == "rollback":
            if registry.alias("champion") == version:
                raise RolloutError(f"v{version} is already champion: roll it back with rollback_champion, "
                                   "not by aborting its rollout")
            for role in ("shadow", "challenger"):
                if registry.alias(role) == version:
                    registry.clear_alias(role)
            registry.set_version_tag(version, "promotion", "rolled_back")
            routing = roles.sync_routing(settings, decider=decider, updated_by=f"{updated_by}: v{version} rolled back",
                                             challenger_share=0.0)
            new = files.write(step(state, ROLLED_BACK, 0.0, now, decision.reason, run_id, guardrails, snapshot))
            record = audit.append("rollout_rolled_back", **common, stage_to=ROLLED_BACK, share_to=0.0,
                                  routing_revision=routing.revision)
            return RolloutOutcome(True, "rollback", f"v{version} rolled back: {decision.reason}", new, routing,
                                  record["seq"])
        # advance / complete: the finished stage's champion scores join the reference
        finished = ScoreSample.from_dict(decision.observation.get("champion_sample"))
        reference = finished.merged(ScoreSample.from_dict(state.champion_reference)) if finished else None
        reference_doc = reference.to_dict() if reference else None
        if decision.action == "advance":
            share = float(decision.to_share)
            if state.stage == SHADOW:
                registry.set_alias("challenger", version)
                if registry.alias("shadow") == version:
                    registry.clear_alias("shadow")
            elif registry.alias("challenger") != version:
                raise RolloutError(f"v{version} no longer holds the challenger role (now "
                                   f"{registry.alias('challenger')}): abort the rollout")
            registry.set_version_tag(version, "promotion", f"rollout:canary {share:g}")
            routing = roles.sync_routing(settings, decider=decider, updated_by=f"{updated_by}: v{version} canary {share:g}",
                                             challenger_share=share)
            new = files.write(step(state, CANARY, share, now, decision.reason, run_id, guardrails, snapshot,
                                   reference_doc))
            record = audit.append("rollout_advanced", **common, stage_to=CANARY, share_to=share,
                                  routing_revision=routing.revision)
            return RolloutOutcome(True, "advance", f"v{version} at canary {share:.0%}", new, routing, record["seq"])
        # complete
        if registry.alias("champion") != version:  # else an interrupted completion already moved it
            promote(registry, audit, registry.ref(version),
                    [GateResult("staged_rollout", True, decision.reason, {"guardrails": guardrails})],
                    run_id=run_id, policy="champion", actor=actor)
        registry.set_version_tag(version, "promotion", "champion")
        for role in ("shadow", "challenger"):
            if registry.alias(role) == version:
                registry.clear_alias(role)
        routing = roles.sync_routing(settings, decider=decider, updated_by=f"{updated_by}: v{version} champion",
                                         challenger_share=0.0)
        new = files.write(step(state, COMPLETED, 1.0, now, decision.reason, run_id, guardrails, snapshot,
                               reference_doc))
        record = audit.append("rollout_completed", **common, stage_to=COMPLETED, share_to=1.0,
                              previous_champion=state.baseline_champion, routing_revision=routing.revision)
        return RolloutOutcome(True, "complete", f"v{version} is champion (was v{state.baseline_champion})", new,
                              routing, record["seq"])


def step_rollout(settings, run_id: str, config: RolloutConfig, actor: str = "dagster",
                 metrics_text: str | None = None, *, now: dt.datetime | None = None,
                 decision_log_dir: Path | None = None, decider=None) -> tuple[RolloutDecision, RolloutOutcome]:
    """Evaluate and apply in one go (a job that re-judges when it runs rather than trusting the
    decision its sensor saw). ``metrics_text`` serves as evidence and as the next stage's snapshot."""
    now = _now(now)
    decision = evaluate_rollout(settings, now, config, metrics_text, decision_log_dir=decision_log_dir, decider=decider)
    return decision, apply_rollout_decision(settings, decision, run_id, actor, metrics_text, now=now, decider=decider)


def abort_rollout(settings, run_id: str, reason: str, actor: str = "operator",
                  *, now: dt.datetime | None = None, decider=None) -> RolloutOutcome:
    """Roll the active rollout back by hand (same effects as a failed guardrail)."""
    if not reason or not reason.strip():
        raise ValueError("aborting a rollout needs a reason (it goes to the audit trail)")
    state = rollout_state(settings, decider=decider)
    if state is None or not state.active:
        return RolloutOutcome(False, "rollback", "no active rollout to abort", state)
    decision = RolloutDecision("rollback", f"aborted by {actor}: {reason}", state.candidate, state.baseline_champion,
                               state.stage, state.share, state.stage_started_at, ROLLED_BACK, 0.0,
                               utc_iso(_now(now)))
    return apply_rollout_decision(settings, decision, run_id, actor, now=now, decider=decider)
