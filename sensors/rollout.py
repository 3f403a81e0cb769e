"""Rollout sensor: on every tick judges the active staged rollout (soak elapsed, enough observations,
guardrails: error rate, latency, score distribution vs champion, shadow disagreement, decline rate)
and requests a ``rollout_step_job`` run to advance, complete or roll back. The run key names the
position (candidate, stage, share, stage start, action), so one position gives one step."""

import datetime as dt

import dagster as dg

from assets.rollout import rollout_config, service_metrics
from mlp_platform.rollout import evaluate_rollout
from mlp_platform.settings import load_settings

ROLLOUT_SENSOR = "rollout_sensor"


def build_rollout_sensor(job: dg.JobDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name=ROLLOUT_SENSOR, job=job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
        description="Drives the staged rollout of a promoted candidate: shadow, canary stages, champion; each "
                    "step after its soak with the guardrails checked; a failed guardrail rolls back at once.",
    )
    def rollout_sensor(context: dg.SensorEvaluationContext):
        settings = load_settings()
        metrics = service_metrics(settings, context.log.warning)
        decision = evaluate_rollout(settings, dt.datetime.now(dt.UTC), rollout_config(settings), metrics)
        if decision.action not in ("advance", "complete", "rollback"):
            return dg.SkipReason(f"{decision.action}: {decision.reason}")
        position = decision.position
        run_key = (f"rollout:{position['candidate']}:{position['stage']}:{position['share']}:"
                   f"{position['stage_started_at']}:{decision.action}")
        return dg.RunRequest(
            run_key=run_key,
            run_config=dg.RunConfig(ops={"apply_rollout_step": {"config": {
                "candidate": str(position["candidate"]), "stage": position["stage"],
                "share": float(position["share"]), "stage_started_at": position["stage_started_at"],
                "expected_action": decision.action}}}),
            tags={"mlp/trigger": "rollout_sensor", "mlp/rollout_action": decision.action,
                  "mlp/candidate": str(position["candidate"]), "mlp/reason": decision.reason[:1000]})

    return rollout_sensor
