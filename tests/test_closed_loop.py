"""End to end, in one process, with no manual step after the first model: a synthetic world drifts,
the nightly assets report it, the drift sensor requests one retrain, the gates pass, promotion starts a
staged rollout, and the rollout sensor takes the new version through shadow and the canary stages to
champion while the scoring service (in process, over its HTTP API) serves traffic and picks every step
up from the routing state.

Real everything: the synthetic source, DuckDB + dbt, MLflow (SQLite), LightGBM, the Dagster instance
(``instance_for_test``), the sensors evaluated with ``build_sensor_context`` and the runs they request
executed in process, the scoring service with its embedded online store and fsynced decision log.
"""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest
from fastapi.testclient import TestClient

from assets.definitions import build_definitions
from mlp_platform import lifecycle
from mlp_platform.data.synthetic import SyntheticConfig, generate_day
from mlp_platform.deciders.declaration import default_decider, write_variant
from mlp_platform.registry.audit import verify_chain
from mlp_platform.serving.app import build_service, create_app
from mlp_platform.serving.routing import RoutingFile
from sensors.definitions import REPLAY_JOB, RETRAIN_JOB
from sensors.drift import DRIFT_SENSOR, drift_summaries
from sensors.rollout import ROLLOUT_SENSOR

START = dt.date(2026, 1, 1)
TRAIN_DAYS = 45                    # days 0..44 exist before the first model (30-day windows mature)
FIRST_SERVED = START + dt.timedelta(days=TRAIN_DAYS)
DRIFT_START = dt.date(2026, 2, 19)  # the drift switch: 4 ordinary days are served before it
LAST_DAY = dt.date(2026, 3, 1)
API_KEY = "loop-test-key-0123456789"
FAST_TRAINING = {"n_candidates": 2, "n_folds": 2, "max_rounds": 120}
#: The retrain runs the drift sensor requests (MLP_RETRAIN_RUN_CONFIG): a small search, and wide
#: non-inferiority tolerances. In a world of 250 cards the candidate's out-of-time window holds a few
#: dozen frauds, so the paired 95% intervals span about +-0.6 (recall at 1% FPR) and no candidate could be
#: shown non-inferior at the default 0.02-0.03; the gates still run and block (their refusals are
#: tested in test_lifecycle.py and test_gates.py).
RETRAIN_RUN_CONFIG = {"ops": {
    "candidate_model": {"config": FAST_TRAINING},
    "candidate_evaluation": {"config": {"ap_tolerance": 1.0, "alert_budget_tolerance": 1.0, "recall_tolerance": 1.0}},
}}
ROLLOUT = {"shadow_soak_s": 0, "canary_soak_s": 0, "shadow_min_observations": 150, "canary_min_observations": 40,
           "canary_stages": [0.25, 0.5, 1.0], "max_score_psi": 1.0, "max_shadow_disagreement": 0.25,
           "max_decline_rate_increase": 0.05}


@pytest.fixture
def loop_env(tmp_path, monkeypatch):
    env = {"MLP_DATA_DIR": str(tmp_path / "data"), "MLP_SYNTH_CUSTOMERS": "250", "MLP_SYNTH_MERCHANTS": "80",
           "MLP_SYNTH_DAYS": str((LAST_DAY - START).days + 1), "MLP_SYNTH_DRIFT_START": DRIFT_START.isoformat(),
           "MLP_DECIDERS_DIR": str(write_variant(default_decider(), tmp_path / "deciders",
                                                 {"labels": {"delay_days": 2, "maturity_days": 3}})),
           "MLP_RETRAIN_MIN_DAYS": "2",
           "MLP_RETRAIN_COOLDOWN_HOURS": "24", "MLP_ROLLOUT_CONFIG": json.dumps(ROLLOUT),
           "MLP_RETRAIN_RUN_CONFIG": json.dumps(RETRAIN_RUN_CONFIG), "MLP_API_KEYS": API_KEY,
           "MLP_ADMIN_KEYS": "loop-admin-key-0123456789", "MLP_RELOAD_INTERVAL_S": "3600",
           "MLP_EVENT_TIME_MAX_AGE_S": "none"}  # the simulated months lie before the server clock
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for var in ("MLP_SOURCE", "MLP_ENV", "MLP_WAREHOUSE", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                "MLP_FEATURE_STORE_URL", "MLP_DECISION_LOG_DIR", "MLP_SERVICE_METRICS_URL"):
        monkeypatch.delenv(var, raising=False)
    from mlp_platform.settings import load_settings

    return load_settings()


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _materialize(defs, instance, selection: str, first: dt.date | None = None, last: dt.date | None = None,
                 run_config: dict | None = None):
    graph = defs.get_repository_def().asset_graph
    keys = dg.AssetSelection.from_string(selection).resolve(graph)
    assets = [a for a in defs.assets if any(k in keys for k in a.keys)]
    checks = [c for c in defs.asset_checks if any(k.asset_key in keys for k in c.check_keys)]
    tags = None
    if first is not None:
        tags = {"dagster/asset_partition_range_start": first.isoformat(),
                "dagster/asset_partition_range_end": (last or first).isoformat()}
    result = dg.materialize([*assets, *checks], instance=instance, resources=defs.resources, tags=tags, run_config=run_config,
                            selection=dg.AssetSelection.from_string(selection))
    assert result.success, selection
    return result


def _run_requested(defs, instance, request: dg.RunRequest, job_name: str):
    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(instance=instance, run_config=request.run_config or None,
                                    tags={**request.tags, "dagster/run_key": request.run_key}, raise_on_error=False)
    failed_checks = {e.check_name: e.metadata.get("explanation") for e in result.get_asset_check_evaluations()
                     if not e.passed}
    assert result.success, (job_name, failed_checks)
    return result


def _tick(defs, instance, name: str, cursor: str | None):
    sensor = defs.resolve_sensor_def(name)
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, sensor_name=name)
    result = sensor.evaluate_tick(context)
    return result, context.cursor


def _transactions(settings, day: dt.date) -> list[dict]:
    config = SyntheticConfig(seed=settings.synthetic.seed, start_date=settings.synthetic.start_date,
                             days=settings.synthetic.days, n_customers=settings.synthetic.n_customers,
                             n_merchants=settings.synthetic.n_merchants, drift_start=settings.synthetic.drift_start)
    transactions, _labels = generate_day(config, day)
    rows = transactions.sort("event_time", "transaction_id").to_dicts()
    for row in rows:
        row["event_time"] = row["event_time"].isoformat()
    return rows


def _serve(client: TestClient, rows: list[dict]) -> list[dict]:
    answers = []
    for row in rows:
        response = client.post("/v1/score", json=row, headers={"Authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 200, response.text
        answers.append(response.json())
    return answers


def test_drifted_world_retrains_and_rolls_a_new_champion_out_without_a_manual_step(loop_env):
    settings = loop_env
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        # -- the world before: 21 days of history, the first model (champion at once: nothing to compare)
        _materialize(defs, instance, "group:ingest or group:staging or group:features",
                     START, FIRST_SERVED - dt.timedelta(days=1))
        first_model = _materialize(defs, instance, "group:training or group:model",
                                   run_config={"ops": {"candidate_model": {"config": FAST_TRAINING}}})
        registry = lifecycle.registry_for(settings)
        v1 = registry.alias("champion")
        assert v1 is not None, first_model.asset_materializations_for_node("model_promotion")[0].metadata
        assert RoutingFile(settings.routing_path).read().champion == v1

        service = build_service(settings)
        with TestClient(create_app(service)) as client:
            # the online store learns the last 30 days of history (velocity windows) without deciding
            for day in _days(FIRST_SERVED - dt.timedelta(days=30), FIRST_SERVED - dt.timedelta(days=1)):
                if day >= START:
                    for row in _transactions(settings, day):
                        service.store.score_features({**row, "event_time": dt.datetime.fromisoformat(row["event_time"])})

            # -- every day: nightly features, batch features online, serve the day, nightly monitoring, sensor
            drift_cursor, retrain = None, None
            served_days = []
            for day in _days(FIRST_SERVED, LAST_DAY):
                _materialize(defs, instance, "group:ingest or group:staging or group:features or key:online_batch_features", day)
                service.refresh_batch_features()
                answers = _serve(client, _transactions(settings, day))
                assert {a["model"]["version"] for a in answers} == {v1}
                service.flush_shadows()
                _materialize(defs, instance, 'group:scoring or (group:monitoring and not key:"monitoring/staging_replay")', day)
                served_days.append(day)
                result, drift_cursor = _tick(defs, instance, DRIFT_SENSOR, drift_cursor)
                summaries = {s["day"]: s for s in drift_summaries(instance)}
                if result.run_requests:
                    retrain = result.run_requests[0]
                    break
            report = {d: (s["severity"], s["drift_detected"], round(s["drifted_share"], 2), s["prediction_drifted"],
                          s["prediction_psi"], s["drifted_features"][:6]) for d, s in sorted(summaries.items())}
            # before the drift, no retrain: days from the training distribution are not flagged
            assert retrain is not None, f"the drift sensor never requested a retrain: {report}"
            assert DRIFT_START <= served_days[-1] <= DRIFT_START + dt.timedelta(days=3), report
            assert not any(s["drift_detected"] for d, s in summaries.items() if d < DRIFT_START.isoformat()), report
            assert retrain.run_key.startswith(f"retrain:{v1}:") and "sustained" in retrain.tags["mlp/reason"]

            # the same incident does not start a second retrain
            again, _ = _tick(defs, instance, DRIFT_SENSOR, drift_cursor)
            assert not again.run_requests

            # -- the retrain: training set, candidate, backtest, blocking gates, promotion -> staged rollout
            retrain_run = _run_requested(defs, instance, retrain, RETRAIN_JOB)
            promotion = retrain_run.asset_materializations_for_node("model_promotion")[0].metadata
            v2 = str(promotion["version"].value)
            assert v2 != v1 and promotion["role"].value == "shadow", promotion
            routing = RoutingFile(settings.routing_path).read()
            assert routing.champion == v1 and routing.shadows == (v2,)

            # -- staging replay: the last served day through the candidate, against production
            replay_day = served_days[-1].isoformat()
            replayed = defs.resolve_job_def(REPLAY_JOB).execute_in_process(instance=instance, run_config={
                "ops": {"monitoring__staging_replay": {"config": {"day": replay_day, "candidate_version": v2}}}})
            assert replayed.success
            meta = replayed.asset_materializations_for_node("monitoring__staging_replay")[0].metadata
            assert meta["decisions"].value == len(_transactions(settings, served_days[-1]))
            rates = meta["rates"].value
            assert set(rates) == {"production", "candidate"} and 0 < rates["production"]["approval_rate"] <= 1
            assert meta["feature_skew"].value["n_matched"] == meta["decisions"].value

            # -- the rollout sensor drives shadow -> 25% -> 50% -> 100% -> champion while traffic flows
            rollout_cursor, steps = None, []
            next_day = served_days[-1] + dt.timedelta(days=1)
            for _round in range(12):
                service.pool.refresh()
                rows = _transactions(settings, next_day if next_day <= LAST_DAY else LAST_DAY)
                if next_day > LAST_DAY:  # re-serve the last day's traffic with fresh ids
                    for row in rows:
                        row["transaction_id"] = f"{row['transaction_id']}-r{_round}"
                _serve(client, rows)
                service.flush_shadows()
                next_day += dt.timedelta(days=1)
                result, rollout_cursor = _tick(defs, instance, ROLLOUT_SENSOR, rollout_cursor)
                for request in result.run_requests:
                    assert request.tags["mlp/rollout_action"] in ("advance", "complete"), request.tags
                    steps.append(request.tags["mlp/rollout_action"])
                    _run_requested(defs, instance, request, "rollout_step_job")
                if steps and steps[-1] == "complete":
                    break
            assert steps == ["advance", "advance", "advance", "complete"], steps
            routing = RoutingFile(settings.routing_path).read()
            assert routing.champion == v2 and routing.challenger is None and routing.shadows == ()
            assert registry.alias("champion") == v2 and registry.alias("previous_champion") == v1

            # the service now serves the new champion, with no restart and no deploy
            service.pool.refresh()
            answers = _serve(client, [{**r, "transaction_id": r["transaction_id"] + "-after"}
                                      for r in _transactions(settings, LAST_DAY)[:20]])
            assert {a["model"]["version"] for a in answers} == {v2}

        # -- the audit trail says why each step happened, and verifies
        events = [r for r in lifecycle.audit_for(settings).records() if r.get("version") == v2]
        assert [e["event"] for e in events if e["event"].startswith("rollout")] == [
            "rollout_started", "rollout_advanced", "rollout_advanced", "rollout_advanced", "rollout_completed"]
        assert all(e.get("reason") for e in events)
        assert verify_chain(lifecycle.audit_for(settings).records()).ok
