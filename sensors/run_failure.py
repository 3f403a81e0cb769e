"""Run-failure sensor: every failed run of this code location is logged, counted in a Prometheus
textfile (``mlp_dagster_run_failures_total{job}``) and, when ``MLP_ALERT_WEBHOOK_URL`` is set, posted
to a webhook. The work is done by ``mlp_platform.observability.report_run_failure``."""

import os

import dagster as dg

from mlp_platform.observability import report_run_failure
from mlp_platform.settings import Settings, load_settings

RUN_FAILURE_SENSOR = "run_failure_alert_sensor"


def _root_cause(error) -> str:
    """The innermost error of a serialised error chain (the user's exception, not Dagster's wrapper)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip()


def build_run_failure_sensor(settings: Settings) -> dg.SensorDefinition:
    del settings  # read at evaluation time: the sensor follows the environment of the daemon

    @dg.run_failure_sensor(
        name=RUN_FAILURE_SENSOR, default_status=dg.DefaultSensorStatus.RUNNING, monitor_all_code_locations=False,
        description="Reports failed runs: a log line, the Prometheus textfile counter "
                    "mlp_dagster_run_failures_total{job} under data/monitoring/metrics, and the optional "
                    "webhook MLP_ALERT_WEBHOOK_URL.",
    )
    def run_failure_alert_sensor(context: dg.RunFailureSensorContext):
        current = load_settings()
        run = context.dagster_run
        steps = [f"{e.step_key}: {_root_cause(e.event_specific_data.error)}"
                 for e in context.get_step_failure_events() if getattr(e.event_specific_data, "error", None)]
        error = "; ".join([context.failure_event.message or "run failed", *steps])
        outcome = report_run_failure(
            current.monitoring_dir / "metrics", job=run.job_name, run_id=run.run_id, error=error,
            webhook_url=os.environ.get("MLP_ALERT_WEBHOOK_URL") or None,
            dagster_url=os.environ.get("MLP_DAGSTER_URL") or None)
        context.log.info(f"reported failed run {run.run_id} of {run.job_name}: {outcome}")

    return run_failure_alert_sensor
