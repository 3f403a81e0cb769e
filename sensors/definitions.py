"""Jobs, schedules and sensors of the closed loop.

* ``nightly_job`` (daily partitions) + ``nightly_schedule``: ingest the day, rebuild its features,
  push batch features online, batch-score it with the champion, load the decision log and compute the
  day's drift/skew/performance report. Off by default; switched on in the UI.
* ``drift_retrain_sensor`` -> ``retrain_job`` (training set, candidate, backtest, gates, promotion):
  sustained drift or decay retrains; promotion starts a staged rollout.
* ``rollout_sensor`` -> ``rollout_step_job``: shadow -> canary stages -> champion, guardrails checked
  after each soak, automatic rollback.
* ``run_failure_alert_sensor``: failed runs -> log, Prometheus textfile metric, optional webhook.
* ``review_labels_job`` + ``review_labels_schedule`` (assets/review.py): analysts' outcomes become
  labels, hourly; the training and retrain jobs copy them in first.
* ``daily_features_job``, ``training_set_job``, ``model_lifecycle_job``, ``staging_replay_job``: by hand.
"""

from __future__ import annotations

import dagster as dg

from assets.rollout import rollout_step_job
from mlp_platform.settings import Settings
from sensors.drift import build_drift_sensor
from sensors.rollout import build_rollout_sensor
from sensors.run_failure import build_run_failure_sensor

DAILY_FEATURES_JOB = "daily_features_job"
TRAINING_SET_JOB = "training_set_job"
MODEL_JOB = "model_lifecycle_job"
RETRAIN_JOB = "retrain_job"
NIGHTLY_JOB = "nightly_job"
REPLAY_JOB = "staging_replay_job"
DAILY_GROUPS = ("ingest", "staging", "features", "serving", "scoring", "monitoring")


def build_automation(settings: Settings):
    daily = dg.define_asset_job(
        DAILY_FEATURES_JOB,
        selection=dg.AssetSelection.groups("ingest", "staging", "features"),
        description="Ingest one day from the configured source and rebuild that day's feature tables.",
    )
    nightly = dg.define_asset_job(
        NIGHTLY_JOB,
        selection=dg.AssetSelection.groups(*DAILY_GROUPS) - dg.AssetSelection.assets(["monitoring", "staging_replay"]),
        description="The nightly run for one day: ingest, features, batch features online, batch scoring with "
                    "the champion, decision log into the warehouse, drift/skew/performance report.",
    )
    nightly_schedule = dg.build_schedule_from_partitioned_job(
        nightly, hour_of_day=1, minute_of_hour=0, name="nightly_schedule",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Each night at 01:00, the nightly job for the day before (turn on in the UI).",
    )
    training = dg.define_asset_job(
        TRAINING_SET_JOB,
        selection=dg.AssetSelection.groups("review", "training"),
        description="Rebuild the training set (features joined with labels as of label maturity), the "
                    "analysts' newest outcomes copied in first.",
    )
    model = dg.define_asset_job(
        MODEL_JOB,
        selection=dg.AssetSelection.groups("model"),
        description="Train a candidate, backtest it against the champion, run the gates, promote if they pass.",
    )
    retrain = dg.define_asset_job(
        RETRAIN_JOB,
        selection=dg.AssetSelection.groups("review", "training", "model"),
        description="Retrain: copy the analysts' new outcomes in as labels, rebuild the training set, train a "
                    "candidate, backtest, gates, and promotion "
                    "(a staged rollout). Requested by the drift sensor.",
    )
    replay = dg.define_asset_job(
        REPLAY_JOB,
        selection=dg.AssetSelection.assets(["monitoring", "staging_replay"]),
        description="Replay a past day of production decisions through a candidate version (config: day, "
                    "candidate_version) and report the divergences.",
    )
    sensors = [build_drift_sensor(retrain), build_rollout_sensor(rollout_step_job),
               build_run_failure_sensor(settings)]
    return [daily, nightly, training, model, retrain, replay], [nightly_schedule], sensors
