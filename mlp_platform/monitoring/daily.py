"""The nightly monitoring of one day, as the ``monitoring/drift_report`` asset runs it, and the staging
replay of a day through a candidate.

For a day and the champion version:

1. **what was served**: the exact feature vectors the service logged for the day's decisions
   (``monitoring.served_features``, loaded from the decision log) and the champion's scores; a day
   the service did not decide (nothing logged) falls back to the offline features of the day and the
   champion's batch scores -- the report says which (``features_source``);
2. **drift** of those features and scores against the champion's reference profile (stored with the
   version at training: :func:`mlp_platform.lifecycle.reference_profile`), with the calibrated rule
   of :mod:`mlp_platform.monitoring.drift`; features constant within a day by construction
   (``is_weekend``) are not judged day by day;
3. **skew**: served vs the offline recomputation of the same transactions
   (``features.transaction_features``), per feature;
4. **label-based performance** of the day whose labels have just matured (``label_maturity_days``
   earlier), from the champion's batch scores of that day and the labels known by the end of the
   monitored day, against the version's backtest expectation;
5. an **Evidently** HTML report of the day (sampled) next to it, under ``monitoring_dir/reports``.

The day's summary (severity, drifted features, prediction drift, performance decay) is returned for
the asset's metadata (the drift sensor reads it there), stored in ``monitoring.drift_daily`` and
written to ``monitoring_dir/drift_latest.json`` for the scoring service's drift gauges.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mlp_platform import lifecycle
from mlp_platform.data.warehouse import warehouse_for
from mlp_platform.deciders.declaration import load_decider
from mlp_platform.evaluation.replay import ReplayReport, replay
from mlp_platform.features.spec import default_spec
from mlp_platform.monitoring.drift import DriftReport, compute_drift, monitoring_record
from mlp_platform.monitoring.evidently_report import write_evidently_report
from mlp_platform.monitoring.performance import performance_report
from mlp_platform.monitoring.plots import drift_figure
from mlp_platform.monitoring.skew import skew_report
from mlp_platform.settings import Settings

DRIFT_DAILY = "monitoring.drift_daily"
REPLAY_TABLE = "monitoring.staging_replay"
LATEST = "drift_latest.json"
#: Served feature values that differ from the offline recomputation on more than this share of a
#: day's decisions fail the skew check (ERROR); any mismatch at all is a WARN.
SKEW_ERROR_RATE = 0.01
#: Feature kinds constant within a calendar day by construction: one day cannot be compared with a
#: reference of many days (a Saturday is 100% weekend), so they are not judged day by day.
DAY_CONSTANT_KINDS = frozenset({"is_weekend"})


def day_constant_features() -> set[str]:
    return {f.name for f in default_spec().features if f.kind in DAY_CONSTANT_KINDS}


def _bounds(day: dt.date) -> tuple[str, str]:
    return day.isoformat(), (day + dt.timedelta(days=1)).isoformat()


def _table_exists(settings: Settings, table: str) -> bool:
    return warehouse_for(settings).table_exists(table)


def served_counts(settings: Settings, first: dt.date, end: dt.date) -> dict[str, int]:
    if not _table_exists(settings, "monitoring.decisions"):
        return {}
    frame = warehouse_for(settings).query(
        f"select cast(day as varchar) as day, count(*) as n from monitoring.decisions "
        f"where day >= '{first}' and day < '{end}' group by 1 order by 1")
    return dict(zip(frame["day"].to_list(), frame["n"].to_list(), strict=True))


def served_day(settings: Settings, day: dt.date, names: list[str]) -> pl.DataFrame:
    """The day's decisions with the feature vectors as served (empty if none were logged)."""
    if not _table_exists(settings, "monitoring.served_features"):
        return pl.DataFrame()
    cols = ", ".join(f"f.{n}" for n in names)
    return warehouse_for(settings).query(
        f"select d.decision_id, d.transaction_id, d.model_version, d.arm, d.score, d.decision, d.degraded, "
        f"d.policy_version, {cols} from monitoring.decisions d join monitoring.served_features f "
        f"using (decision_id) where d.day = '{day}' order by d.event_time, d.transaction_id")


def offline_day(settings: Settings, day: dt.date, names: list[str]) -> pl.DataFrame:
    lo, hi = _bounds(day)
    cols = ", ".join(names)
    return warehouse_for(settings).query(
        f"select transaction_id, customer_id, event_time, {cols} from features.transaction_features "
        f"where event_time >= '{lo}' and event_time < '{hi}' order by event_time, transaction_id")


def batch_scores(settings: Settings, day: dt.date, version: str) -> pl.DataFrame:
    if not _table_exists(settings, "scoring.batch_scores"):
        return pl.DataFrame()
    return warehouse_for(settings).query(
        f"select transaction_id, customer_id, event_time, score from scoring.batch_scores "
        f"where day = '{day}' and model_version = '{version}'")


@dataclass
class DayMonitoring:
    day: dt.date
    model_version: str
    features_source: str
    drift: DriftReport
    skew: dict[str, Any] | None
    performance: dict[str, Any] | None
    evidently_path: Path | None
    summary: dict[str, Any] = field(default_factory=dict)

    def drift_table(self) -> str:
        lines = ["| feature | PSI | KS | W1/std | drifted | severity |", "|---|---|---|---|---|---|"]
        entries = dict(self.drift.features)
        if self.drift.prediction:
            entries["(score)"] = self.drift.prediction
        for name, e in sorted(entries.items(), key=lambda kv: -(kv[1].get("psi") or 0)):
            lines.append(f"| {name} | {e.get('psi', float('nan')):.4f} (> {e.get('psi_threshold', 0):.4f}) | "
                         f"{e.get('ks', float('nan')):.4f} | {e.get('wasserstein', float('nan')):.4f} | "
                         f"{e.get('drifted')} | {e.get('severity')} |")
        return "\n".join(lines)

    def figure(self):
        return drift_figure(self.drift)

    def checks(self) -> list[dict[str, Any]]:
        """Asset-check outcomes: feature drift, prediction drift, serving skew, label performance."""
        s = self.summary
        out = [{"name": "feature_drift", "passed": not s["drifted_features"],
                "severity": s["feature_severity"],
                "explanation": (f"{len(s['drifted_features'])} feature(s) drifted: "
                                f"{', '.join(s['drifted_features'][:10])}") if s["drifted_features"]
                else "no feature beyond its calibrated threshold"},
               {"name": "prediction_drift", "passed": not s["prediction_drifted"],
                "severity": s["prediction_severity"],
                "explanation": f"score distribution PSI {s.get('prediction_psi')}"}]
        if self.skew is None:
            out.append({"name": "serving_skew", "passed": True, "severity": "warn",
                        "explanation": "no decisions served on this day: skew not measurable"})
        else:
            rate = s["skew_max_mismatch_rate"]
            out.append({"name": "serving_skew", "passed": rate == 0.0,
                        "severity": "error" if rate > SKEW_ERROR_RATE else "warn",
                        "explanation": f"largest per-feature mismatch rate {rate:.4%} "
                                       f"({', '.join(s['skewed_features'][:10]) or 'none'})"})
        perf = self.performance
        out.append({"name": "label_performance", "passed": not (perf and perf.get("decayed")),
                    "severity": "error",
                    "explanation": perf["reason"] if perf else "no matured labels for a scored day yet"})
        return out


def _atomic_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _performance(settings: Settings, day: dt.date, version: str) -> dict[str, Any] | None:
    """Performance of the day whose labels matured by the end of ``day``."""
    matured = day - dt.timedelta(days=load_decider(settings.deciders_dir).labels.maturity_days)
    scored = batch_scores(settings, matured, version)
    if scored.is_empty():
        return None
    known_by = (day + dt.timedelta(days=1)).isoformat()
    labels = warehouse_for(settings).query(
        f"select transaction_id, max(label) as label from staging.stg_labels "
        f"where label_time < '{known_by}' and label = 1 group by 1")
    frame = scored.join(labels, on="transaction_id", how="left").with_columns(pl.col("label").fill_null(0))
    registry = lifecycle.registry_for(settings)
    expected = registry.load_json(registry.ref(version).run_id, "backtest.json")
    threshold = float(registry.version_tags(version).get("operating_threshold", "0.5"))
    report = performance_report(frame["label"].to_numpy(), frame["score"].to_numpy(), threshold=threshold,
                                expected=expected, days=frame["event_time"].dt.date().to_numpy(),
                                cards=frame["customer_id"].to_numpy())
    return {"matured_day": matured.isoformat(), **report}


def monitor_day(settings: Settings, day: dt.date, version: str) -> DayMonitoring:
    names = default_spec().feature_names
    profile = lifecycle.load_reference_profile(settings, version)
    if profile is None:
        raise ValueError(f"version {version} has no reference profile: retrain it with this platform")
    offline = offline_day(settings, day, names)
    served = served_day(settings, day, names)
    if not served.is_empty():
        source = "served"
        current = served.select(names)
        scores = np.where(served["model_version"].cast(pl.Utf8).to_numpy() == str(version),
                          served["score"].to_numpy().astype(np.float64), np.nan)
    else:
        if offline.is_empty():
            raise ValueError(f"{day}: no decisions served and no offline features: nothing to monitor")
        source = "offline (no decisions logged this day)"
        current = offline.select(names)
        scored = batch_scores(settings, day, version)
        joined = offline.select("transaction_id").join(scored.select("transaction_id", "score"),
                                                       on="transaction_id", how="left")
        scores = joined["score"].fill_null(np.nan).to_numpy().astype(np.float64)
    judged = [n for n in names if n in profile.features and n not in day_constant_features()]
    profile = dataclasses.replace(profile, feature_names=judged, features={n: profile.features[n] for n in judged})
    drift = compute_drift(profile, current.select(judged), scores if np.isfinite(scores).any() else None)
    skew = None
    if not served.is_empty():
        skew = skew_report(served.select("transaction_id", *names).unique("transaction_id", keep="first"),
                           offline.select("transaction_id", *names), names).to_dict()
    performance = _performance(settings, day, version)
    reports = settings.monitoring_dir / "reports"
    evidently_path = write_evidently_report(profile, current, reports / f"drift-{day}.html", columns=names)
    report = drift.to_dict()
    severity = report["summary"].get("severity", "ok")
    skew_rates = {n: v["mismatch_rate"] for n, v in (skew or {}).items() if n != "summary"}
    prediction = report.get("prediction") or {}
    summary = {
        "day": day.isoformat(), "model_version": str(version), "features_source": source,
        "rows": current.height, "severity": severity,
        "drift_detected": bool(report["summary"].get("drift_detected")),
        "dataset_drift": bool(report["summary"].get("dataset_drift")),
        "drifted_share": report["summary"].get("drifted_share"),
        "feature_severity": max((e["severity"] for e in report["features"].values()),
                                key=("ok", "warn", "error").index, default="ok"),
        "drifted_features": drift.drifted_features,
        "prediction_drifted": bool(prediction.get("drifted")), "prediction_psi": prediction.get("psi"),
        "prediction_severity": prediction.get("severity", "ok"),
        "skew_max_mismatch_rate": max(skew_rates.values(), default=0.0),
        "skewed_features": sorted(n for n, r in skew_rates.items() if r > 0),
        "performance_decay": bool(performance and performance.get("decayed")),
        "performance_reason": performance["reason"] if performance else "no matured labels yet",
        "evidently_report": str(evidently_path),
    }
    _record(settings, summary, report, skew, performance)
    _publish_latest(settings, summary, drift, skew)
    return DayMonitoring(day, str(version), source, drift, skew, performance, evidently_path, summary)


def _record(settings: Settings, summary: dict, report: dict, skew: dict | None, performance: dict | None) -> None:
    row = pl.DataFrame({"day": [dt.date.fromisoformat(summary["day"])], "model_version": [summary["model_version"]],
                        "severity": [summary["severity"]], "summary": [json.dumps(summary, default=str)],
                        "drift": [json.dumps(report, default=str)], "skew": [json.dumps(skew, default=str)],
                        "performance": [json.dumps(performance, default=str)],
                        "computed_at": [dt.datetime.now(dt.UTC).replace(tzinfo=None)]})
    warehouse_for(settings).replace_rows(DRIFT_DAILY, row, "day = ? and model_version = ?",
                                         [row["day"][0], summary["model_version"]])


def _publish_latest(settings: Settings, summary: dict, drift: DriftReport, skew: dict | None) -> None:
    """drift_latest.json for the service's gauges (only moves forward in days)."""
    path = settings.monitoring_dir / LATEST
    if path.exists():
        try:
            if json.loads(path.read_text()).get("day", "") > summary["day"]:
                return
        except ValueError:
            pass
    _atomic_json(path, monitoring_record(summary["day"], summary["model_version"], drift, skew))


def replay_day(settings: Settings, day: dt.date, candidate_version: str) -> ReplayReport:
    """Replay the day's logged production decisions through ``candidate_version`` (see
    :mod:`mlp_platform.evaluation.replay`); the per-decision rows go to monitoring.staging_replay."""
    names = default_spec().feature_names
    served = served_day(settings, day, names)
    if served.is_empty():
        raise ValueError(f"no production decisions of {day} in the warehouse: load the decision log "
                         "(monitoring/served_decisions) for that day first")
    offline = offline_day(settings, day, names)
    registry = lifecycle.registry_for(settings)
    scorer = lifecycle.load_scorer(registry, str(candidate_version))
    review = float(registry.version_tags(str(candidate_version)).get("operating_threshold", "0.5"))
    skew = skew_report(served.select("transaction_id", *names).unique("transaction_id", keep="first"),
                       offline.select("transaction_id", *names), names).to_dict()
    report = replay(served.select("decision_id", "transaction_id", "score", "decision", "arm", "degraded",
                                  "model_version", "policy_version"),
                    served.select("decision_id", *names), offline, names, scorer, str(candidate_version), review,
                    day=day.isoformat(), skew=skew)
    warehouse_for(settings).replace_rows(REPLAY_TABLE, report.rows, "day = ? and candidate_version = ?",
                                         [day.isoformat(), str(candidate_version)])
    return report
