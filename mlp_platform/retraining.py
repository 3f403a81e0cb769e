"""When drift asks for a retrain: the rule the drift sensor applies, as a pure function.

Input: the daily monitoring summaries of the current champion (one per day, from the drift report
asset), and the sensor's cursor. A day *counts against* the champion when drift is detected for the
day as a whole (at least 30% of the features drifted beyond their calibrated thresholds -- dataset
drift -- or the score distribution drifted) at severity ``error`` (``MLP_RETRAIN_SEVERITY``), or when
its matured labels show a performance decay against the backtest expectation. One drifted feature on
its own is an asset-check warning, not a reason to retrain. The rule:

* **sustained** -- at least ``min_days`` consecutive monitored days count against the champion (the
  trailing streak, ending at the latest monitored day); a single noisy day never retrains;
* **one incident, one retrain** -- an incident is named by the first day of its streak and the
  champion version; the run key ``retrain:<champion>:<first day>`` de-duplicates in Dagster too, so a
  sensor that re-evaluates (or restarts from an old cursor) cannot start the same retrain twice;
* **cool-down** -- after a retrain request, no new one for ``cooldown_hours`` (wall clock), whatever
  happens: the new candidate needs time to pass its gates and roll out.

The decision carries the reason in words (shown as the run's tags and the sensor's skip reason).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RetrainPolicy:
    min_days: int = 2
    cooldown_hours: float = 24.0
    #: A day counts against the champion at this drift severity (``warn`` is more eager).
    severity: str = "error"


@dataclass(frozen=True)
class RetrainDecision:
    request: bool
    reason: str
    run_key: str | None = None
    incident_start: str | None = None
    days: tuple[str, ...] = ()
    cursor: dict[str, Any] = field(default_factory=dict)


_RANK = {"ok": 0, "warn": 1, "error": 2}


def day_counts_against(summary: dict[str, Any], policy: RetrainPolicy) -> tuple[bool, str]:
    """Whether a day's monitoring summary counts against the champion, and why."""
    why = []
    severity = summary.get("severity", "ok")
    if summary.get("drift_detected") and _RANK.get(severity, 0) >= _RANK[policy.severity]:
        drifted = summary.get("drifted_features") or []
        pred = " and the score distribution" if summary.get("prediction_drifted") else ""
        why.append(f"drift {severity}: {len(drifted)} feature(s) drifted ({', '.join(drifted[:5])}){pred}")
    if summary.get("performance_decay"):
        why.append(f"performance decay: {summary.get('performance_reason', 'below the backtest expectation')}")
    return bool(why), "; ".join(why)


def decide_retrain(summaries: list[dict[str, Any]], champion: str | None, cursor: dict[str, Any],
                   now: dt.datetime, policy: RetrainPolicy | None = None) -> RetrainDecision:
    """Apply the rule to the champion's daily summaries (any order; one per ``day``)."""
    policy = policy or RetrainPolicy()
    cursor = dict(cursor)
    if champion is None:
        return RetrainDecision(False, "no champion serving: nothing to retrain", cursor=cursor)
    days = sorted((s for s in summaries if str(s.get("model_version")) == str(champion)), key=lambda s: s["day"])
    if not days:
        return RetrainDecision(False, f"no monitored day for champion v{champion} yet", cursor=cursor)
    streak: list[tuple[str, str]] = []
    previous_day = None
    for summary in days:
        bad, why = day_counts_against(summary, policy)
        day = dt.date.fromisoformat(summary["day"])
        contiguous = previous_day is not None and (day - previous_day).days == 1
        if not bad:
            streak = []
        elif contiguous and streak:
            streak.append((summary["day"], why))
        else:
            streak = [(summary["day"], why)]
        previous_day = day
    if len(streak) < policy.min_days:
        last = days[-1]["day"]
        detail = f"{len(streak)} consecutive day(s) against it" if streak else "latest day is within thresholds"
        return RetrainDecision(False, f"champion v{champion} monitored to {last}: {detail} "
                                      f"(retrain needs {policy.min_days})", cursor=cursor)
    incident = streak[0][0]
    run_key = f"retrain:{champion}:{incident}"
    reason = (f"sustained drift/decay of champion v{champion} for {len(streak)} days from {incident}: "
              + " | ".join(f"{d}: {w}" for d, w in streak[-policy.min_days:]))
    if cursor.get("last_run_key") == run_key:
        return RetrainDecision(False, f"incident {run_key} already started a retrain", run_key, incident,
                               tuple(d for d, _ in streak), cursor)
    last_at = cursor.get("last_request_at")
    if last_at:
        until = dt.datetime.fromisoformat(last_at) + dt.timedelta(hours=policy.cooldown_hours)
        if now < until:
            return RetrainDecision(False, f"cool-down after the retrain {cursor.get('last_run_key')} "
                                          f"until {until.isoformat()}; pending: {reason}", None, incident,
                                   tuple(d for d, _ in streak), cursor)
    cursor.update({"last_run_key": run_key, "last_request_at": now.isoformat(), "incident_start": incident})
    return RetrainDecision(True, reason, run_key, incident, tuple(d for d, _ in streak), cursor)
