"""Jobs, schedules and sensors. The daily feature job ingests a day and rebuilds its features;
its schedule runs it each night for the previous day (off by default, switched on in the UI)."""

from __future__ import annotations

import dagster as dg

from mlp_platform.settings import Settings

DAILY_FEATURES_JOB = "daily_features_job"
TRAINING_SET_JOB = "training_set_job"
MODEL_JOB = "model_lifecycle_job"


def build_automation(settings: Settings):
    daily = dg.define_asset_job(
        DAILY_FEATURES_JOB,
        selection=dg.AssetSelection.groups("ingest", "staging", "features"),
        description="Ingest one day from the configured source and rebuild that day's feature tables.",
    )
    training = dg.define_asset_job(
        TRAINING_SET_JOB,
        selection=dg.AssetSelection.groups("training"),
        description="Rebuild the training set (features joined with labels as of label maturity).",
    )
    nightly = dg.build_schedule_from_partitioned_job(
        daily, hour_of_day=1, minute_of_hour=0, name="nightly_features_schedule",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    model = dg.define_asset_job(
        MODEL_JOB,
        selection=dg.AssetSelection.groups("model"),
        description="Train a candidate, backtest it against the champion, run the gates, promote if they pass.",
    )
    return [daily, training, model], [nightly], []
