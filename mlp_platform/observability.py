"""Pipeline-side observability: failed Dagster runs reported as a log line, a Prometheus metric and
an optional webhook.

The Dagster daemon is not scraped by Prometheus, so the metrics are written in the text exposition
format to a file that node-exporter's textfile collector (or any file-based scrape) picks up:
``<monitoring_dir>/metrics/dagster_runs.prom``. The file holds, per job,
``mlp_dagster_run_failures_total{job=...}`` (monotonic; the state lives in a JSON next to it, so
counts survive restarts) and ``mlp_dagster_last_run_failure_timestamp_seconds{job=...}``. Job names
are a bounded label set (the code location defines them). Files are replaced atomically.

The webhook (``MLP_ALERT_WEBHOOK_URL``) receives a small JSON document; a webhook that is down is
logged and counted, it never fails the sensor (the failure is on disk either way).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("mlp.observability")

FAILURES = "mlp_dagster_run_failures_total"
LAST_FAILURE = "mlp_dagster_last_run_failure_timestamp_seconds"
WEBHOOK_ERRORS = "mlp_dagster_alert_webhook_errors_total"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class RunFailureMetrics:
    """Counters of failed runs per job, persisted as JSON and rendered as a Prometheus textfile."""

    directory: Path

    @property
    def state_path(self) -> Path:
        return self.directory / "dagster_runs.json"

    @property
    def textfile_path(self) -> Path:
        return self.directory / "dagster_runs.prom"

    def state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"jobs": {}, "webhook_errors": 0, "runs": []}
        return json.loads(self.state_path.read_text())

    def record_failure(self, job: str, run_id: str, at: float | None = None) -> tuple[dict[str, Any], bool]:
        """Count a failed run once (a run id seen before is not counted again).
        Returns the state and whether this run was new."""
        state = self.state()
        if run_id in state["runs"]:
            return state, False
        at = time.time() if at is None else at
        entry = state["jobs"].setdefault(job, {"failures": 0, "last_failure": 0.0})
        entry["failures"] += 1
        entry["last_failure"] = max(entry["last_failure"], at)
        state["runs"] = (state["runs"] + [run_id])[-1000:]
        self._save(state)
        return state, True

    def record_webhook_error(self) -> None:
        state = self.state()
        state["webhook_errors"] = state.get("webhook_errors", 0) + 1
        self._save(state)

    def _save(self, state: dict[str, Any]) -> None:
        _atomic_write(self.state_path, json.dumps(state, sort_keys=True))
        _atomic_write(self.textfile_path, render_textfile(state))


def render_textfile(state: dict[str, Any]) -> str:
    lines = [f"# HELP {FAILURES} Failed Dagster runs by job.", f"# TYPE {FAILURES} counter"]
    for job, entry in sorted(state["jobs"].items()):
        lines.append(f'{FAILURES}{{job="{_label(job)}"}} {entry["failures"]}')
    lines += [f"# HELP {LAST_FAILURE} When a run of the job last failed (unix time).",
              f"# TYPE {LAST_FAILURE} gauge"]
    for job, entry in sorted(state["jobs"].items()):
        lines.append(f'{LAST_FAILURE}{{job="{_label(job)}"}} {entry["last_failure"]}')
    lines += [f"# HELP {WEBHOOK_ERRORS} Alert webhook deliveries that failed.", f"# TYPE {WEBHOOK_ERRORS} counter",
              f"{WEBHOOK_ERRORS} {state.get('webhook_errors', 0)}"]
    return "\n".join(lines) + "\n"


def post_webhook(url: str, payload: dict[str, Any], timeout_s: float = 3.0) -> int:
    """POST the payload as JSON; returns the HTTP status. Raises on connection errors."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (configured URL)
        return response.status


def report_run_failure(metrics_dir: Path, *, job: str, run_id: str, error: str,
                       webhook_url: str | None = None, dagster_url: str | None = None) -> dict[str, Any]:
    """Log, count and (optionally) notify one failed run, once per run id. Returns what was done."""
    metrics = RunFailureMetrics(metrics_dir)
    state, new = metrics.record_failure(job, run_id)
    if not new:
        return {"job": job, "run_id": run_id, "failures_of_job": state["jobs"][job]["failures"],
                "textfile": str(metrics.textfile_path), "webhook": None, "already_reported": True}
    log.error("Dagster run %s of job %s failed: %s", run_id, job, error)
    delivered = None
    if webhook_url:
        payload = {"event": "dagster_run_failed", "job": job, "run_id": run_id, "error": error[:2000],
                   "failures_of_job": state["jobs"][job]["failures"],
                   "run_url": f"{dagster_url.rstrip('/')}/runs/{run_id}" if dagster_url else None}
        try:
            delivered = post_webhook(webhook_url, payload)
        except Exception as err:  # a broken webhook must not hide the failure: it is on disk already
            log.warning("alert webhook %s failed: %s", webhook_url, err)
            metrics.record_webhook_error()
            delivered = f"error: {err}"
    return {"job": job, "run_id": run_id, "failures_of_job": state["jobs"][job]["failures"],
            "textfile": str(metrics.textfile_path), "webhook": delivered}
