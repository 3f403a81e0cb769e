"""Drift sensor: reads the daily drift reports of the current champion (materialisations of the
``monitoring/drift_report`` asset, their ``summary`` metadata) and requests a retraining run when the
drift or the performance decay is sustained. The rule (sustained, one incident -> one retrain,
cool-down) is ``mlp_platform.retraining.decide_retrain``; its state is the sensor cursor, and the run
key names the incident so Dagster de-duplicates too."""

import datetime as dt
import json

import dagster as dg

from mlp_platform.retraining import RetrainPolicy, decide_retrain
from mlp_platform.serving.routing import RoutingFile
from mlp_platform.settings import Settings, load_settings

DRIFT_SENSOR = "drift_retrain_sensor"
DRIFT_REPORT = dg.AssetKey(["monitoring", "drift_report"])


def retrain_policy(settings: Settings) -> RetrainPolicy:
    return RetrainPolicy(min_days=settings.retrain_min_days, cooldown_hours=settings.retrain_cooldown_hours,
                         severity=settings.retrain_severity)


def drift_summaries(instance: dg.DagsterInstance, limit: int = 400) -> list[dict]:
    """The latest summary per monitored day (newest materialisation of each partition wins)."""
    records = instance.fetch_materializations(DRIFT_REPORT, limit=limit).records
    latest: dict[str, dict] = {}
    for record in records:  # newest first
        materialization = record.asset_materialization
        summary = materialization.metadata.get("summary") if materialization else None
        if summary is None or materialization.partition in latest:
            continue
        latest[materialization.partition] = dict(summary.data)
    return list(latest.values())


def current_champion(settings: Settings) -> str | None:
    if not settings.routing_path.exists():
        return None
    return RoutingFile(settings.routing_path).read().champion


def build_drift_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name=DRIFT_SENSOR, job=job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED,
        description="Requests a retrain (training set + candidate + gates + promotion) when the champion's "
                    "daily drift reports show drift or performance decay on MLP_RETRAIN_MIN_DAYS consecutive "
                    "days (default 2); one retrain per incident (run key), then a cool-down "
                    "(MLP_RETRAIN_COOLDOWN_HOURS, default 24).",
    )
    def drift_retrain_sensor(context: dg.SensorEvaluationContext):
        settings = load_settings()
        cursor = json.loads(context.cursor) if context.cursor else {}
        decision = decide_retrain(drift_summaries(context.instance), current_champion(settings), cursor,
                                  dt.datetime.now(dt.UTC), retrain_policy(settings))
        context.update_cursor(json.dumps(decision.cursor, sort_keys=True))
        if not decision.request:
            return dg.SkipReason(decision.reason)
        context.log.info(f"requesting a retrain: {decision.reason}")
        return dg.RunRequest(run_key=decision.run_key, run_config=settings.retrain_run_config or None, tags={
            "mlp/trigger": "drift_sensor", "mlp/incident": decision.run_key,
            "mlp/drift_days": ",".join(decision.days), "mlp/reason": decision.reason[:1000]})

    return drift_retrain_sensor
