"""The run-failure sensor reports a real failed run: Prometheus textfile counter per job (counted once
per run), and the webhook receives the alert; a dead webhook is counted, not fatal."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
from prometheus_client.parser import text_string_to_metric_families

from mlp_platform.observability import RunFailureMetrics
from sensors.run_failure import build_run_failure_sensor


@dg.op
def explode():
    raise RuntimeError("warehouse unreachable")


@dg.job
def nightly_scoring_job_for_test():
    explode()


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def _failed_run(instance):
    result = nightly_scoring_job_for_test.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return result.dagster_run, result.get_run_failure_event()


def _samples(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, sample.labels.get("job", ""))] = sample.value
    return out


def test_failed_run_is_counted_and_posted_to_the_webhook(platform_env, monkeypatch):
    settings = platform_env()
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLP_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/alerts")
    sensor = build_run_failure_sensor(settings)
    try:
        with dg.instance_for_test() as instance:
            run, event = _failed_run(instance)
            context = dg.build_run_status_sensor_context(
                sensor_name=sensor.name, dagster_instance=instance, dagster_run=run, dagster_event=event,
            ).for_run_failure()
            sensor(context)
            sensor(context)  # the same run reported twice is counted once
            run2, event2 = _failed_run(instance)
            sensor(dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_instance=instance,
                                                      dagster_run=run2, dagster_event=event2).for_run_failure())
    finally:
        server.shutdown()
    metrics = RunFailureMetrics(settings.monitoring_dir / "metrics")
    samples = _samples(metrics.textfile_path.read_text())
    assert samples[("mlp_dagster_run_failures_total", "nightly_scoring_job_for_test")] == 2
    assert samples[("mlp_dagster_last_run_failure_timestamp_seconds", "nightly_scoring_job_for_test")] > 0
    assert len(_Receiver.received) == 2  # one alert per failed run, even when reported twice
    alert = _Receiver.received[0]
    assert alert["event"] == "dagster_run_failed" and alert["job"] == "nightly_scoring_job_for_test"
    assert alert["run_id"] == run.run_id and "warehouse unreachable" in alert["error"]


def test_a_dead_webhook_is_counted_and_the_failure_still_recorded(platform_env, monkeypatch):
    settings = platform_env()
    monkeypatch.setenv("MLP_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/nothing-listens-here")
    sensor = build_run_failure_sensor(settings)
    with dg.instance_for_test() as instance:
        run, event = _failed_run(instance)
        sensor(dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_instance=instance,
                                                  dagster_run=run, dagster_event=event).for_run_failure())
    samples = _samples(RunFailureMetrics(settings.monitoring_dir / "metrics").textfile_path.read_text())
    assert samples[("mlp_dagster_run_failures_total", "nightly_scoring_job_for_test")] == 1
    assert samples[("mlp_dagster_alert_webhook_errors_total", "")] == 1
