"""Drift sensors: one per application decider. Each reads only its decider's monitoring reports
(materialisations of ``<decider>/monitoring_report``, their ``summary`` metadata) and, when drift or
label decay of that decider's champion is sustained, requests that decider's training job; the rule
(sustained, one incident -> one retrain, cool-down) is :func:`mlp_platform.retraining.decide_retrain`
with the decider's declared policy, its state the sensor's cursor. One decider's drift never
retrains another."""

import datetime as dt
import json

import dagster as dg

from mlp_platform.deciders.declaration import DeciderDeclaration
from mlp_platform.registry.roles import registry_for
from mlp_platform.retraining import RetrainPolicy, decide_retrain
from mlp_platform.settings import load_settings


def drift_sensor_name(decider_name: str) -> str:
    return f"{decider_name}_drift_sensor"


def decider_summaries(instance: dg.DagsterInstance, decider_name: str, limit: int = 400) -> list[dict]:
    """The latest report summary per monitored day of one decider (newest materialisation wins)."""
    records = instance.fetch_materializations(dg.AssetKey([decider_name, "monitoring_report"]), limit=limit).records
    latest: dict[str, dict] = {}
    for record in records:  # newest first
        materialization = record.asset_materialization
        summary = materialization.metadata.get("summary") if materialization else None
        if summary is None:
            continue
        data = dict(summary.data)
        latest.setdefault(data["day"], data)
    return list(latest.values())


def retrain_policy(decider: DeciderDeclaration) -> RetrainPolicy:
    m = decider.monitoring
    return RetrainPolicy(min_days=m.retrain_min_days, cooldown_hours=m.retrain_cooldown_hours,
                         severity=m.retrain_severity)


def build_decider_drift_sensor(decider: DeciderDeclaration) -> dg.SensorDefinition:
    name = decider.name

    @dg.sensor(name=drift_sensor_name(name), job_name=f"{name}_train_job", minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description=f"Retrains the {name} decider (its train job on {decider.monitoring.retrain_source} data) "
                           f"when its daily reports show drift or decay of its champion on "
                           f"{decider.monitoring.retrain_min_days} consecutive days; one retrain per incident, then "
                           f"a {decider.monitoring.retrain_cooldown_hours:g} h cool-down.")
    def decider_drift_sensor(context: dg.SensorEvaluationContext):
        champion = registry_for(load_settings(), decider).alias("champion")
        cursor = json.loads(context.cursor) if context.cursor else {}
        decision = decide_retrain(decider_summaries(context.instance, name), champion, cursor,
                                  dt.datetime.now(dt.UTC), retrain_policy(decider))
        context.update_cursor(json.dumps(decision.cursor, sort_keys=True))
        if not decision.request:
            return dg.SkipReason(decision.reason)
        context.log.info(f"requesting a {name} retrain: {decision.reason}")
        return dg.RunRequest(run_key=f"{name}:{decision.run_key}", tags={
            "decider": name, "retrain_reason": decision.reason[:200], "incident_start": decision.incident_start or ""},
            run_config={"ops": {f"{name}__applications": {"config": {"source": decider.monitoring.retrain_source}}}})

    return decider_drift_sensor


def build_decider_drift_sensors(deciders: list[DeciderDeclaration]) -> list[dg.SensorDefinition]:
    return [build_decider_drift_sensor(d) for d in deciders]
