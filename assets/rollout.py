"""Rollout stage: the job that carries out one step of a staged rollout (advance a canary stage,
complete to champion, or roll back on a failed guardrail), as decided by the rollout sensor. The run
re-evaluates the guardrails itself and applies the decision only if the rollout is still where the
sensor saw it; every guardrail value goes to the run's metadata and the audit trail."""

import datetime as dt

import dagster as dg

from assets.resources import PlatformSettingsResource
from mlp_platform.deciders.declaration import load_decider
from mlp_platform.deciders.validate import rollout_config as deciders_rollout_config
from mlp_platform.rollout import RolloutConfig, abort_rollout, apply_rollout_decision, evaluate_rollout
from mlp_platform.rollout.observe import fetch_metrics_text
from mlp_platform.settings import Settings


def rollout_config(settings: Settings) -> RolloutConfig:
    """The decider's declared rollout config, MLP_ROLLOUT_CONFIG (an operator's overrides) on top."""
    return deciders_rollout_config(load_decider(settings.deciders_dir), settings.rollout_config)


def service_metrics(settings: Settings, log=None, decider: str | None = None) -> str | None:
    """The scoring service's metrics text (``decider``'s service for an application decider), or
    None when not configured or unreachable (the latency and error guardrails then say "not
    evaluated", or wait with ``require_metrics``)."""
    url = settings.metrics_url(decider)
    if not url:
        return None
    try:
        return fetch_metrics_text(url)
    except Exception as err:  # the guardrails report the gap; a step is not blocked by a scrape
        if log:
            log(f"service metrics unreachable at {url}: {err}")
        return None


def guardrail_table(decision: dict) -> str:
    lines = ["| guardrail | value | limit | verdict | detail |", "|---|---|---|---|---|"]
    for g in decision.get("guardrails", []):
        lines.append(f"| {g.get('name')} | {g.get('value')} | {g.get('limit')} | {g.get('verdict')} | "
                     f"{str(g.get('detail', '')).replace('|', '/')} |")
    return "\n".join(lines)


class RolloutStepConfig(dg.Config):
    #: The position the sensor judged (a step taken elsewhere meanwhile makes this run a no-op).
    candidate: str
    stage: str
    share: float
    stage_started_at: str
    expected_action: str


@dg.op(description="Re-evaluate the rollout's guardrails and apply the step (advance / complete / rollback).")
def apply_rollout_step(context: dg.OpExecutionContext, config: RolloutStepConfig,
                       platform: PlatformSettingsResource) -> dict:
    settings = platform.get()
    metrics = service_metrics(settings, context.log.warning)
    decision = evaluate_rollout(settings, dt.datetime.now(dt.UTC), rollout_config(settings), metrics)
    expected = {"candidate": config.candidate, "stage": config.stage, "share": config.share,
                "stage_started_at": config.stage_started_at}
    if decision.position != expected:
        outcome = {"applied": False, "message": f"the rollout moved since the sensor saw it ({expected} -> "
                                                f"{decision.position}): nothing to do"}
    else:
        outcome = apply_rollout_decision(settings, decision, run_id=context.run_id, actor="dagster",
                                         metrics_text=metrics).to_dict()
    context.log.info(f"rollout step: {decision.action}: {decision.reason} -> {outcome['message']}")
    context.add_output_metadata({
        "action": decision.action, "sensor_expected": config.expected_action, "applied": outcome["applied"],
        "candidate": str(decision.candidate), "from": f"{decision.from_stage} {decision.from_share}",
        "to": f"{decision.to_stage} {decision.to_share}", "reason": decision.reason,
        "guardrails": dg.MetadataValue.md(guardrail_table(decision.to_dict())),
        "outcome": dg.MetadataValue.json(outcome),
    })
    return outcome


@dg.job(description="One staged-rollout step (requested by the rollout sensor): shadow -> canary stages -> "
                    "champion, or an automatic rollback when a guardrail fails.")
def rollout_step_job():
    apply_rollout_step()


class AbortRolloutConfig(dg.Config):
    reason: str


@dg.op(description="Abort the active rollout by hand: the candidate leaves shadow/challenger (audited).")
def abort_active_rollout(context: dg.OpExecutionContext, config: AbortRolloutConfig,
                         platform: PlatformSettingsResource) -> dict:
    outcome = abort_rollout(platform.get(), run_id=context.run_id, reason=config.reason, actor="dagster-ui")
    context.log.info(outcome.message)
    return outcome.to_dict()


@dg.job(description="Abort the active staged rollout (operator action, audited).")
def abort_rollout_job():
    abort_active_rollout()


ROLLOUT_JOBS = [rollout_step_job, abort_rollout_job]
