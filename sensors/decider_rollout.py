"""Rollout sensors: one per application decider. Each judges its decider's active staged rollout
(soak elapsed, enough observations in the decider's own decision logs, guardrails: score
distribution against the champion, shadow disagreement, decline rate, and its own error rate and
challenger latency from its service's metrics, MLP_SERVICE_METRICS_URL with ``{decider}``) and requests the decider's
rollout step job to advance, complete or roll back. The run key names the position (candidate,
stage, share, stage start, action), so one position gives one step; another decider's rollout is
never touched."""

import datetime as dt

import dagster as dg

from assets.rollout import service_metrics
from mlp_platform.deciders.declaration import DeciderDeclaration
from mlp_platform.deciders.validate import rollout_config
from mlp_platform.rollout.machine import evaluate_rollout
from mlp_platform.settings import load_settings


def build_decider_rollout_sensor(decider: DeciderDeclaration) -> dg.SensorDefinition:
    name = decider.name

    @dg.sensor(name=f"{name}_rollout_sensor", job_name=f"{name}_rollout_step_job", minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description=f"Drives the {name} decider's staged rollouts (promotion: staged): shadow, canary "
                           "stages, champion; a failed guardrail rolls back at once.")
    def decider_rollout_sensor(context: dg.SensorEvaluationContext):
        settings = load_settings()
        metrics = service_metrics(settings, context.log.warning, decider=name)
        decision = evaluate_rollout(settings, dt.datetime.now(dt.UTC), rollout_config(decider),
                                    metrics, decider=decider)
        if decision.action not in ("advance", "complete", "rollback"):
            return dg.SkipReason(f"{decision.action}: {decision.reason}")
        p = decision.position
        return dg.RunRequest(run_key=f"{name}:rollout:{p['candidate']}:{p['stage']}:{p['share']}:"
                                     f"{p['stage_started_at']}:{decision.action}",
                             tags={"decider": name, "mlp/rollout_action": decision.action,
                                   "mlp/reason": decision.reason[:1000]})

    return decider_rollout_sensor


def build_decider_rollout_sensors(deciders: list[DeciderDeclaration]) -> list[dg.SensorDefinition]:
    return [build_decider_rollout_sensor(d) for d in deciders]
