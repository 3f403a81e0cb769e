"""What a rollout stage observed: decision-log records since the stage started (read-only) and,
when given, the increase of the scoring service's Prometheus counters since then.

Decision log: every ``decisions-*.jsonl`` segment under the log root and under each of its
sub-directories (one per serving worker), read without opening a :class:`DecisionLog` (the service
holds the writer lock). Lines not yet terminated by a newline (a commit in progress, a torn tail)
are skipped and counted as unreadable; the zero-filled space after the last record of a live segment
is not a line; segments last modified before the stage started are not read at all. Decisions taken
on degraded (fallback) features are left out of every comparison (they are floored to a fixed
decision whatever the model says) and counted.

* shadow stage: the candidate's shadow records paired with the champion decision they shadowed
  (same ``decision_id``): candidate vs served scores and decisions of the same transactions.
* canary stage: decisions on the challenger arm (the candidate) vs decisions on the champion arm
  (the baseline champion), both since the stage started.

Metrics: a snapshot (the counters the guardrails use, parsed with ``prometheus_client``) is stored
when a stage starts; the stage's counts are the current values minus the snapshot (a series lower
than its snapshot means the service restarted: its current value is taken as the increase).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlp_platform.rollout.scores import ScoreSample
from mlp_platform.rollout.state import CANARY, SHADOW, RolloutState, parse_time, utc_iso
from mlp_platform.serving.decision_log import SEGMENT_PREFIX, SEGMENT_SUFFIX, is_padding

try:  # 3-4x faster on decision records; a dependency of dagster-dbt, json when absent
    from orjson import JSONDecodeError as _DecodeError
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads, _DecodeError = json.loads, json.JSONDecodeError

#: Samples kept from the service's /metrics (everything the guardrails read).
KEPT_SAMPLES = frozenset({
    "mlp_requests_total", "mlp_errors_total", "mlp_request_latency_seconds_bucket",
    "mlp_request_latency_seconds_count", "mlp_shadow_scores_total", "mlp_shadow_dropped_total",
    "mlp_shadow_disagreements_total", "mlp_decisions_total",
    # an application decider's own series (labelled decider)
    "mlp_decider_requests_total", "mlp_decider_shadow_scores_total", "mlp_decider_request_latency_seconds_bucket",
    "mlp_decider_request_latency_seconds_count",
})
SCORE_ENDPOINT = "/v1/score"
_SEGMENT = re.compile(rf"^{re.escape(SEGMENT_PREFIX)}(\d+){re.escape(SEGMENT_SUFFIX)}$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
MTIME_SLACK_S = 5.0
MAX_PENDING = 200_000  # served decisions waiting for their shadow record


def decision_log_root(settings) -> Path:
    """Where the service writes its decision log(s): ``MLP_DECISION_LOG_DIR`` or
    ``<data>/serving/decisions`` (the convention of ``ServingConfig.from_settings`` and ``mlp audit``)."""
    return settings.decision_log_root


# --- decision log ------------------------------------------------------------------------------


@dataclass
class LogScan:
    """Counts of what reading the log skipped (reported with the observation)."""

    directories: int = 0
    segments_read: int = 0
    segments_skipped: int = 0
    unreadable_lines: int = 0


def _segments(directory: Path) -> list[Path]:
    found = []
    for entry in os.scandir(directory):
        m = _SEGMENT.match(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), Path(entry.path)))
    return [p for _, p in sorted(found)]


def iter_log_records(root: Path, since: dt.datetime, until: dt.datetime | None = None,
                     scan: LogScan | None = None) -> Iterator[dict[str, Any]]:
    """Records with ``since <= time <= until`` from every log directory under ``root`` (read-only)."""
    scan = scan if scan is not None else LogScan()
    if not root.exists():
        return
    directories = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    cutoff = since.timestamp() - MTIME_SLACK_S
    for directory in directories:
        segments = _segments(directory)
        if segments:
            scan.directories += 1
        for path in segments:
            try:
                if path.stat().st_mtime < cutoff:  # last written before the window: nothing in it
                    scan.segments_skipped += 1
                    continue
                fh = open(path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                continue
            scan.segments_read += 1
            with fh:
                for line in fh:
                    if not line.endswith(b"\n") or b"\x00" in line:
                        if not is_padding(line):  # zero-filled space after the last record is no line
                            scan.unreadable_lines += 1  # a commit in progress or a torn tail
                        continue
                    try:
                        record = _loads(line)
                        moment = parse_time(record["time"])
                    except (_DecodeError, ValueError, KeyError, TypeError):
                        scan.unreadable_lines += 1
                        continue
                    if moment < since or (until is not None and moment > until):
                        continue
                    yield record


# --- metrics -----------------------------------------------------------------------------------


def series_key(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def split_key(key: str) -> tuple[str, dict[str, str]]:
    name, _, rest = key.partition("{")
    return name, dict(_LABEL.findall(rest))


def parse_metrics(text: str) -> dict[str, float]:
    """The guardrail counters of a Prometheus text exposition, as ``{series key: value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    if not isinstance(text, str):
        raise ValueError(f"metrics text must be a str, not {type(text).__name__}")
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in KEPT_SAMPLES:
                    values[series_key(sample.name, dict(sample.labels))] = float(sample.value)
    except (ValueError, TypeError, IndexError) as err:
        raise ValueError(f"metrics text is not in the Prometheus text format: {err}") from err
    return values


def fetch_metrics_text(url: str, timeout_s: float = 2.0) -> str:
    """GET the service's /metrics (e.g. ``http://127.0.0.1:8000/metrics``); raises OSError when
    the service does not answer (the caller then evaluates without metrics)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - operator-given URL
        return response.read().decode()


@dataclass
class MetricsWindow:
    """Counter increases since the stage started."""

    deltas: dict[str, float]

    @classmethod
    def between(cls, snapshot: dict[str, float], current: dict[str, float]) -> MetricsWindow:
        deltas = {}
        for key, value in current.items():
            before = snapshot.get(key, 0.0)
            deltas[key] = value if value < before else value - before  # lower: the service restarted
        return cls(deltas)

    def series(self, name: str, **labels: str) -> Iterator[tuple[dict[str, str], float]]:
        for key, value in self.deltas.items():
            sample, have = split_key(key)
            if sample == name and all(have.get(k) == v for k, v in labels.items()):
                yield have, value

    def total(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.series(name, **labels))

    def quantile_ms(self, q: float, name: str, **labels: str) -> tuple[float, float]:
        """(upper bound of the bucket holding quantile ``q``, in ms; observations). Conservative:
        the true quantile is at most this value; ``inf`` when it lies above the largest bucket."""
        buckets: dict[float, float] = {}
        for have, value in self.series(name, **labels):
            le = float(have["le"])
            buckets[le] = buckets.get(le, 0.0) + value
        if not buckets:
            return math.nan, 0.0
        edges = sorted(buckets)
        count = buckets[edges[-1]] if math.isinf(edges[-1]) else max(buckets.values())
        if count <= 0:
            return math.nan, 0.0
        rank = q * count
        for le in edges:
            if buckets[le] >= rank - 1e-9:
                return le * 1000.0, count
        return math.inf, count


# --- the observation ---------------------------------------------------------------------------


@dataclass
class Observation:
    """What the current stage saw. ``candidate`` and ``champion`` are the two compared samples:
    in shadow, the candidate's shadow scores and the served champion scores of the same decisions;
    in canary, the challenger arm and the champion arm."""

    stage: str
    since: str
    until: str
    candidate: ScoreSample = field(default_factory=ScoreSample)
    champion: ScoreSample = field(default_factory=ScoreSample)
    shadow_pairs: int = 0
    shadow_disagreements: int = 0
    unpaired_shadows: int = 0
    degraded_skipped: int = 0
    log: LogScan = field(default_factory=LogScan)
    metrics: MetricsWindow | None = None
    metrics_note: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "since": self.since, "until": self.until,
            "candidate_n": self.candidate.n, "candidate_decisions": dict(self.candidate.decisions),
            "champion_n": self.champion.n, "champion_decisions": dict(self.champion.decisions),
            "shadow_pairs": self.shadow_pairs, "shadow_disagreements": self.shadow_disagreements,
            "unpaired_shadows": self.unpaired_shadows, "degraded_skipped": self.degraded_skipped,
            "log_directories": self.log.directories, "segments_read": self.log.segments_read,
            "unreadable_lines": self.log.unreadable_lines,
            "metrics": "evaluated" if self.metrics is not None else self.metrics_note,
        }


def observe(state: RolloutState, root: Path, now: dt.datetime, metrics_text: str | None = None) -> Observation:
    """Read what the current stage of ``state`` produced up to ``now``."""
    since = parse_time(state.stage_started_at)
    obs = Observation(state.stage, state.stage_started_at, utc_iso(now))
    records = iter_log_records(root, since, now, obs.log)
    if state.stage == SHADOW:
        _observe_shadow(state, records, obs)
    elif state.stage == CANARY:
        _observe_canary(state, records, obs)
    else:
        raise ValueError(f"nothing to observe in a {state.stage} rollout")
    current = parse_metrics(metrics_text) if metrics_text is not None else None  # bad text: a clear error
    if current is None:
        obs.metrics_note = "no metrics text given: error-rate and latency guardrails not evaluated"
    elif state.metrics_snapshot is None:
        obs.metrics_note = ("no metrics snapshot was taken when the stage started: error-rate and latency "
                            "guardrails not evaluated")
    else:
        obs.metrics = MetricsWindow.between(state.metrics_snapshot, current)
    return obs


def _observe_shadow(state: RolloutState, records: Iterator[dict[str, Any]], obs: Observation) -> None:
    """Pairs in one pass: the service logs a shadow record after the decision it shadows, in the same
    worker's log, so a served decision waits in ``pending`` only until its shadow arrives (bounded:
    the oldest waiting decisions are dropped past ``MAX_PENDING``, their shadows then count unpaired)."""
    pending: OrderedDict[str, tuple[float, str] | None] = OrderedDict()  # None: degraded
    for record in records:
        kind = record.get("kind")
        if kind == "decision":
            if record.get("arm") != "champion" or record.get("model_version") != state.baseline_champion:
                continue
            pending[record["decision_id"]] = (None if record.get("degraded")
                                              else (float(record["score"]), str(record["decision"])))
            if len(pending) > MAX_PENDING:
                pending.popitem(last=False)
        elif kind == "shadow" and record.get("model_version") == state.candidate:
            of_decision = str(record.get("of_decision"))
            if of_decision not in pending:  # shadowed a decision outside the window or of another arm
                obs.unpaired_shadows += 1
                continue
            served = pending.pop(of_decision)
            if served is None:
                obs.degraded_skipped += 1
                continue
            score, decision = float(record["score"]), str(record["decision"])
            obs.candidate.add(score, decision)
            obs.champion.add(*served)
            obs.shadow_pairs += 1
            obs.shadow_disagreements += decision != served[1]


def _observe_canary(state: RolloutState, records: Iterator[dict[str, Any]], obs: Observation) -> None:
    for record in records:
        if record.get("kind") != "decision":
            continue
        arm, version = record.get("arm"), record.get("model_version")
        if arm == "challenger" and version == state.candidate:
            sample = obs.candidate
        elif arm == "champion" and version == state.baseline_champion:
            sample = obs.champion
        else:
            continue
        if record.get("degraded"):
            obs.degraded_skipped += 1
            continue
        sample.add(float(record["score"]), str(record["decision"]))
