"""Monitoring of an application decider (credit origination), one report per monitored day, for the
champion version named explicitly:

* **drift**: the features of the window's applications (the ``window_days`` up to the day) and the
  champion's scores of them, against the version's reference profile (its training population):
  the platform's drift statistics (:func:`~mlp_platform.monitoring.drift.compute_drift`);
* **skew**: the features the service computed (the decider's decision-log records of those
  applications, when it served them; else the online featurizer, the code the service runs)
  against the offline feature table (the spec's polars/dbt expressions), application by application;
* **label performance**: the applications whose performance window ended by the day (outcomes
  known by then), the champion's ROC AUC and bad rate on them, against the AUC recorded with the
  version (cross-validated or holdout): *decay* when the interval's upper end falls below it minus
  the declared tolerance.

The applications come from the synthetic generator (the configured seed and drift switch), the only
dated application source here; in production the same function reads the warehouse's tables of the
decider. The report is written to ``<monitoring dir>/<decider>/<day>.json`` and ``latest.json`` (the
scoring process exports it as gauges labelled ``decider``); its summary is what the decider's drift
sensor reads (:func:`mlp_platform.retraining.decide_retrain`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl

from mlp_platform.deciders.declaration import DeciderDeclaration
from mlp_platform.settings import Settings

LATEST = "latest.json"


def report_dir(settings: Settings, decider: DeciderDeclaration) -> Path:
    return settings.monitoring_dir / decider.name


def synthetic_window(settings: Settings, decider: DeciderDeclaration, day: dt.date, window_days: int,
                     drift_start: dt.date | None = None):
    """(window applications, matured applications with their outcomes) of ``day`` from the
    synthetic generator: the window is ``[day - window_days + 1, day]``; matured are the applications
    of the ``window_days`` before ``day - maturity_days``, with outcomes known by the end of ``day``."""
    from mlp_platform.data.contracts import validate_applications, validate_outcomes
    from mlp_platform.data.credit_synthetic import CreditSyntheticConfig, generate_period

    s = settings.synthetic
    maturity = decider.labels.maturity_days
    first = day - dt.timedelta(days=window_days + maturity)
    start = min(s.start_date, first)
    days = (day - start).days + 1
    config = CreditSyntheticConfig(seed=s.seed, start_date=start, days=days,
                                   performance_window_days=decider.labels.delay_days,
                                   drift_start=drift_start if drift_start is not None else s.drift_start)
    window_start = day - dt.timedelta(days=window_days - 1)
    apps, _ = generate_period(config, window_start, day + dt.timedelta(days=1))
    apps, _ = validate_applications(apps)
    old_apps, old_outcomes = generate_period(config, first, first + dt.timedelta(days=window_days))
    old_apps, _ = validate_applications(old_apps)
    old_outcomes, _ = validate_outcomes(old_outcomes, old_apps)
    cutoff = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    known = old_outcomes.filter(pl.col("label_time") < cutoff)
    matured = old_apps.join(known.select("application_id", "label"), on="application_id")
    return apps, matured


def served_features(log_dir: Path, ids: set[str], names: list[str], key: str) -> pl.DataFrame | None:
    """The features the service logged for ``ids`` (decision records of the decider's chains under
    ``log_dir``), or None when it served none of them."""
    rows = []
    for segment in sorted(log_dir.rglob("decisions-*.jsonl")) if log_dir.exists() else []:
        with open(segment, "rb") as fh:
            for line in fh:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:  # the zero-filled tail ahead of the records
                    continue
                if record.get("kind") == "decision" and record.get("application_id") in ids:
                    features = record.get("features") or {}
                    rows.append({key: record["application_id"], **{n: features.get(n) for n in names}})
    if not rows:
        return None
    frame = pl.DataFrame(rows, schema={key: pl.String, **{n: pl.Float64 for n in names}})
    return frame.unique(subset=[key], keep="last")


def monitor_application_decider(settings: Settings, decider: DeciderDeclaration, version: str, day: dt.date, *,
                                window_days: int | None = None, drift_start: dt.date | None = None,
                                log_dir: Path | None = None) -> dict[str, Any]:
    """The monitoring report of ``version`` for ``day`` (see the module docstring), written to the
    decider's report directory; returns it."""
    from mlp_platform.deciders.validate import gate_config
    from mlp_platform.evaluation.metrics import percentile_interval, resample_indices, roc_auc
    from mlp_platform.features.request import RequestFeaturizer, feature_frame
    from mlp_platform.monitoring.drift import DriftRule, compute_drift, monitoring_record
    from mlp_platform.monitoring.profile import ReferenceProfile
    from mlp_platform.monitoring.skew import skew_report
    from mlp_platform.registry.mlflow_registry import REFERENCE_PROFILE
    from mlp_platform.registry.roles import registry_for
    from mlp_platform.runtime.loading import populations_from_profile, serving_scorer

    window_days = window_days or decider.monitoring.window_days
    if window_days < 1:
        raise ValueError("window_days must be >= 1")
    registry = registry_for(settings, decider)
    spec, names, key = decider.spec, decider.spec.feature_names, decider.entity.key
    text = registry.load_text(registry.ref(version).run_id, REFERENCE_PROFILE)
    if text is None:
        raise ValueError(f"{decider.model_name} v{version} has no reference profile: nothing to compare with")
    profile = ReferenceProfile.from_json(text)
    scorer = serving_scorer(registry.model_dir(version), names, version=version,
                            populations=populations_from_profile(orjson.loads(text), names))
    apps, matured = synthetic_window(settings, decider, day, window_days, drift_start)
    if apps.height == 0:
        raise ValueError(f"no applications in the {window_days} day(s) to {day}")
    offline = feature_frame(spec, apps, keep=(key,))
    x = offline.select(names).to_numpy().astype(np.float64)
    scores = np.asarray(scorer.score_matrix(x), dtype=np.float64)
    drift = compute_drift(profile, offline.select(names), scores,
                          rule=DriftRule(drift_share=decider.monitoring.drift_share))

    served = served_features(log_dir, set(apps[key].to_list()), names, key) if log_dir is not None else None
    skew_source = "decision log"
    if served is None:
        featurizer = RequestFeaturizer(spec)
        served = pl.DataFrame([{key: r[key], **dict(zip(names, featurizer.row(r)[0], strict=True))}
                               for r in apps.to_dicts()], schema={key: pl.String, **{n: pl.Float64 for n in names}})
        skew_source = "online featurizer"
    skew = skew_report(served.with_columns(pl.col(n).fill_nan(None) for n in names), offline, names, key=key)
    skew.summary["source"] = skew_source

    tags = registry.version_tags(version)
    expected = tags.get("cv_roc_auc") or tags.get("holdout_roc_auc")
    tolerance = dict(gate_config(decider).tolerances).get("roc_auc", 0.0)
    performance: dict[str, Any] = {"matured": matured.height, "expected_auc": float(expected) if expected else None}
    decay, reason = False, ""
    if matured.height and 0 < int(matured["label"].sum()) < matured.height:
        y = matured["label"].to_numpy().astype(np.int8)
        s = np.asarray(scorer.score_matrix(feature_frame(spec, matured).to_numpy().astype(np.float64)))
        auc = roc_auc(y, s)
        ci = percentile_interval([roc_auc(y[i], s[i]) for i in resample_indices(len(y), 200, 0)
                                  if 0 < y[i].sum() < len(i)], 0.05)
        performance.update(auc=auc, auc_ci=list(ci), bad_rate=float(y.mean()))
        if expected is not None and ci[1] < float(expected) - tolerance:
            decay = True
            reason = (f"ROC AUC {auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] on {len(y)} matured applications, below "
                      f"the recorded {float(expected):.3f} - {tolerance:.2f}")
    record = monitoring_record(day, version, drift, skew)
    record["decider"] = decider.name
    record["performance"] = performance
    record["summary"].update(decider=decider.name, day=str(day), model_version=str(version),
                             window_days=window_days, performance_decay=decay, performance_reason=reason,
                             label_auc=performance.get("auc"), matured=matured.height,
                             skew_mismatched_features=skew.mismatched_features)
    directory = report_dir(settings, decider)
    directory.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(record, default=_json_default, sort_keys=True)
    (directory / f"{day}.json").write_text(payload)
    tmp = directory / f".{LATEST}.tmp"
    tmp.write_text(payload)
    tmp.replace(directory / LATEST)
    return record


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def latest_summary(settings: Settings, decider: DeciderDeclaration) -> dict[str, Any] | None:
    """The summary of the decider's latest monitoring report, or None before the first one."""
    path = report_dir(settings, decider) / LATEST
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("summary")
