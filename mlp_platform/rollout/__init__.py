"""Staged rollout of a promoted model version: shadow, canary steps, champion, with guardrails
checked after each soak and automatic rollback. Pure state and transitions in ``state``, score
binning and PSI in ``scores``, what a stage observed in ``observe``, limits and verdicts in
``guardrails``, the effects (registry, routing, audit) in ``machine``. No Dagster here."""

from mlp_platform.rollout.guardrails import GuardrailResult, RolloutConfig
from mlp_platform.rollout.machine import (
    RolloutDecision,
    RolloutError,
    RolloutOutcome,
    abort_rollout,
    apply_rollout_decision,
    evaluate_rollout,
    rollout_state,
    start_rollout,
    step_rollout,
)
from mlp_platform.rollout.observe import fetch_metrics_text
from mlp_platform.rollout.state import RolloutState

__all__ = [
    "GuardrailResult", "RolloutConfig", "RolloutDecision", "RolloutError", "RolloutOutcome", "RolloutState",
    "abort_rollout", "apply_rollout_decision", "evaluate_rollout", "fetch_metrics_text", "rollout_state",
    "start_rollout", "step_rollout",
]
