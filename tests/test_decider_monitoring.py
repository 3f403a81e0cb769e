"""Monitoring per decider: the credit decider's daily report (drift against its champion's training
population, online/offline skew, label performance on matured applications), its drift sensor
(retrains the credit decider, and only it, when drift is sustained), the scoring process's gauges
labelled ``decider``. A real champion trained on the synthetic applications, a real MLflow store,
Dagster's materialize() and sensor context."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import orjson
import pytest

from assets.deciders import monitoring_assets
from assets.resources import PlatformSettingsResource
from mlp_platform.application_lifecycle import (
    decide_application_candidate,
    gate_application_candidate,
    load_application_data,
    train_application_candidate,
)
from mlp_platform.deciders.declaration import load_decider, write_variant
from mlp_platform.evaluation.cv_backtest import CVBacktestConfig
from mlp_platform.monitoring.applications import monitor_application_decider, synthetic_window
from mlp_platform.settings import PROJECT_ROOT, load_settings
from sensors.decider_drift import build_decider_drift_sensor

pytestmark = pytest.mark.slow
DRIFT = dt.date(2026, 9, 1)
QUIET_DAY, DRIFT_DAYS = dt.date(2026, 8, 20), (dt.date(2026, 9, 10), dt.date(2026, 9, 11))


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitoring")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLP_DATA_DIR", str(tmp / "data"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLP_SYNTH_DRIFT_START", raising=False)
        settings = load_settings()
        credit = load_decider(PROJECT_ROOT / "deciders", "credit")
        candidate = train_application_candidate(settings, credit, load_application_data(settings, credit, "synthetic"),
                                                CVBacktestConfig(n_splits=3, n_repeats=1, n_boot=50))
        gates = gate_application_candidate(settings, credit, candidate)
        assert decide_application_candidate(settings, credit, candidate, gates, run_id="t", actor="t").promoted
        yield {"settings": settings, "credit": credit, "version": candidate.ref.version, "tmp": tmp, "mp": mp}


def test_a_quiet_day_and_a_drifted_day(platform):
    settings, credit, version = platform["settings"], platform["credit"], platform["version"]
    quiet = monitor_application_decider(settings, credit, version, QUIET_DAY)["summary"]
    assert not quiet["drift_detected"] and not quiet["performance_decay"]
    assert quiet["skew_mismatched_features"] == [] and quiet["matured"] > 500
    assert 0.8 < quiet["label_auc"] < 0.95
    drifted = monitor_application_decider(settings, credit, version, DRIFT_DAYS[0], drift_start=DRIFT)["summary"]
    # the income shock and the amount inflation of the generator
    assert drifted["drift_detected"] and {"monthly_income", "income_burden"} <= set(drifted["drifted_features"])
    assert drifted["decider"] == "credit" and drifted["model_version"] == version
    latest = json.loads((settings.monitoring_dir / "credit" / "latest.json").read_text())
    assert latest["summary"]["day"] == str(DRIFT_DAYS[0])
    assert (settings.monitoring_dir / "credit" / f"{QUIET_DAY}.json").exists()


def test_skew_compares_what_the_service_logged_with_the_offline_features(platform, tmp_path):
    settings, credit, version = platform["settings"], platform["credit"], platform["version"]
    apps, _ = synthetic_window(settings, credit, QUIET_DAY, credit.monitoring.window_days)
    names = credit.spec.feature_names
    from mlp_platform.features.request import RequestFeaturizer

    featurizer = RequestFeaturizer(credit.spec)
    log_dir = tmp_path / "decisions-credit" / "pod-0"
    log_dir.mkdir(parents=True)
    with open(log_dir / "decisions-000001.jsonl", "wb") as fh:
        for i, app in enumerate(apps.head(40).to_dicts()):
            values = dict(zip(names, featurizer.row(app)[0], strict=True))
            if i < 10:  # a serving bug: the term logged in years
                values["term_months"] = values["term_months"] / 12
            fh.write(orjson.dumps({"kind": "decision", "application_id": app["application_id"],
                                   "features": {k: (None if v != v else v) for k, v in values.items()}}) + b"\n")
    report = monitor_application_decider(settings, credit, version, QUIET_DAY, log_dir=tmp_path / "decisions-credit")
    skew = report["skew"]
    # only the logged applications are compared; a report recomputing online features would see none
    assert skew["summary"]["source"] == "decision log"
    assert skew["term_months"]["n_mismatch"] == 10 and skew["term_months"]["n_compared"] == 40
    assert report["summary"]["skew_mismatched_features"] == ["term_months"]


def test_sustained_drift_retrains_that_decider_only(platform, tmp_path):
    credit = platform["credit"]
    directory = tmp_path / "deciders"
    write_variant(credit, directory, {"model": {"registered_name": "credit-two"}}, as_name="credit_two")
    two = load_decider(directory, "credit_two")
    (_batch, report), job, _schedule = monitoring_assets(credit)
    sensor = build_decider_drift_sensor(credit)
    with dg.instance_for_test() as instance:
        for day in (QUIET_DAY, DRIFT_DAYS[0]):
            assert dg.materialize([report], instance=instance, resources={"platform": PlatformSettingsResource()},
                                  run_config={"ops": {"credit__monitoring_report": {"config": {
                                      "day": str(day), "drift_start": str(DRIFT)}}}}).success
        context = dg.build_sensor_context(instance=instance)
        one_day = sensor(context)
        assert isinstance(one_day, dg.SkipReason) and "needs 2" in one_day.skip_message  # one drifted day
        assert dg.materialize([report], instance=instance, resources={"platform": PlatformSettingsResource()},
                              run_config={"ops": {"credit__monitoring_report": {"config": {
                                  "day": str(DRIFT_DAYS[1]), "drift_start": str(DRIFT)}}}}).success
        context = dg.build_sensor_context(instance=instance, cursor=context.cursor)
        request = sensor(context)
        assert isinstance(request, dg.RunRequest)
        assert request.job_name in (None, "credit_train_job") and request.tags["decider"] == "credit"
        assert request.run_key == f"credit:retrain:{platform['version']}:{DRIFT_DAYS[0]}"
        assert request.run_config["ops"]["credit__applications"]["config"]["source"] == "synthetic"
        # one incident, one retrain
        again = sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor))
        assert isinstance(again, dg.SkipReason)
        # the other decider's sensor sees none of credit's reports
        other = build_decider_drift_sensor(two)(dg.build_sensor_context(instance=instance))
        assert isinstance(other, dg.SkipReason)
    assert job.name == "credit_monitoring_job"


def test_the_scoring_process_exports_the_latest_report_per_decider(platform, tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from mlp_platform.registry.mlflow_registry import ModelRegistry
    from mlp_platform.runtime.loading import registry_loader
    from mlp_platform.serving.deciders import DeciderHost, DeciderMetrics

    settings, credit, version = platform["settings"], platform["credit"], platform["version"]
    monitor_application_decider(settings, credit, version, DRIFT_DAYS[1], drift_start=DRIFT)
    registry = CollectorRegistry()
    host = DeciderHost([credit], log_root=tmp_path, keys={}, admin_keys=(),
                       loader=lambda d: registry_loader(settings, "auto", d),
                       champion=lambda d: ModelRegistry.from_settings(settings, d).alias("champion"),
                       metrics=DeciderMetrics(registry), monitoring_dir=settings.monitoring_dir)
    try:
        host.refresh()
        text = generate_latest(registry).decode()
    finally:
        host.close()
    assert 'mlp_decider_ready{decider="credit"} 1.0' in text
    assert 'mlp_decider_drift_detected{decider="credit"} 1.0' in text
    assert 'mlp_decider_label_auc{decider="credit"} 0.' in text


def test_batch_scores_replace_the_day_with_the_champions_decisions(platform):
    import duckdb

    settings, credit, version = platform["settings"], platform["credit"], platform["version"]
    (batch, _report), _job, _schedule = monitoring_assets(credit)
    config = {"ops": {"credit__batch_scores": {"config": {"day": str(QUIET_DAY)}}}}
    with dg.instance_for_test() as instance:
        for _ in range(2):  # a re-run replaces the day: the same rows, not twice as many
            result = dg.materialize([batch], instance=instance, resources={"platform": PlatformSettingsResource()},
                                    run_config=config)
            assert result.success
    apps, _ = synthetic_window(settings, credit, QUIET_DAY, 1)
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        rows = con.execute("select decision, model_version, count(*) from scoring.credit_batch_scores "
                           "where event_date = ? group by all", [QUIET_DAY]).fetchall()
    assert sum(n for _, _, n in rows) == apps.height > 50
    assert {v for _, v, _ in rows} == {version}
    assert {d for d, _, _ in rows} <= set(credit.policy.actions) and len({d for d, _, _ in rows}) >= 3


def test_an_application_deciders_decisions_load_into_their_own_table_not_the_fraud_one(platform, tmp_path):
    """The credit service's decision records (real ones, from DeciderHost) name their decider: the
    loader puts them in monitoring.application_decisions with their reasons and served features, once,
    and never in the fraud decider's monitoring.decisions (reverted: they would land there with no
    transaction and every fraud feature null)."""
    import asyncio

    import duckdb
    from prometheus_client import CollectorRegistry

    from mlp_platform.batch.decisions import load_decisions
    from mlp_platform.registry.mlflow_registry import ModelRegistry
    from mlp_platform.runtime.loading import registry_loader
    from mlp_platform.serving.deciders import DeciderHost, DeciderMetrics

    settings, credit, version = platform["settings"], platform["credit"], platform["version"]
    root = settings.decider_log_root("credit")
    host = DeciderHost([credit], log_root=root.parent.parent, log_leaf=root.name, keys={}, admin_keys=(),
                       loader=lambda d: registry_loader(settings, "auto", d),
                       champion=lambda d: ModelRegistry.from_settings(settings, d).alias("champion"),
                       metrics=DeciderMetrics(CollectorRegistry()), monitoring_dir=settings.monitoring_dir)
    apps, _ = synthetic_window(settings, credit, QUIET_DAY, 1)
    requests = [{k: v for k, v in r.items() if v is not None} for r in apps.head(12).to_dicts()]
    try:
        host.refresh()

        async def run():
            return [await host.decide("credit", r) for r in requests]
        answers = asyncio.run(run())
    finally:
        host.close()
    assert (root / "decisions-000000.jsonl").exists() or any(root.glob("decisions-*.jsonl"))
    first = load_decisions(settings, root)
    assert first.application_decisions == 12 and first.decisions == 0
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        rows = con.execute("select decision_id, decider, application_id, decision, model_version, reasons, "
                           "features from monitoring.application_decisions order by seq").fetchall()
        fraud = con.execute("select count(*) from monitoring.decisions").fetchone()[0]
    assert fraud == 0
    assert [r[0] for r in rows] == [a["decision_id"] for a in answers]
    assert {r[1] for r in rows} == {"credit"} and {r[4] for r in rows} == {version}
    assert [r[3] for r in rows] == [a["decision"] for a in answers]
    assert set(json.loads(rows[0][6])) == set(credit.spec.feature_names)
    again = load_decisions(settings, root)
    assert again.application_decisions == 0
