"""The Dagster code location (loaded by workspace.yaml): assets, checks, jobs, schedules, resources.

Everything is built from the one settings module, so the same code runs on the embedded default
(synthetic source, DuckDB) and in production (MLP_ENV=production).
"""

from __future__ import annotations

import dagster as dg

from assets.deciders import application_deciders, build_decider_assets
from assets.features import build_feature_assets
from assets.ingest import build_ingest_assets
from assets.model import MODEL_ASSETS, MODEL_CHECKS, MODEL_JOBS
from assets.monitoring import build_monitoring_assets
from assets.resources import resources_for
from assets.review import build_review_assets
from assets.rollout import ROLLOUT_JOBS
from assets.scoring import build_scoring_assets
from assets.serving import build_serving_assets
from mlp_platform.settings import Settings, load_settings
from sensors.decider_drift import build_decider_drift_sensors
from sensors.decider_rollout import build_decider_rollout_sensors
from sensors.definitions import build_automation
from sensors.submissions import build_submission_sensors


def build_definitions(settings: Settings) -> dg.Definitions:
    monitoring_assets, monitoring_checks = build_monitoring_assets(settings)
    decider_assets, decider_checks, decider_jobs, decider_schedules = build_decider_assets(settings)
    review_assets, review_jobs, review_schedules = build_review_assets(settings)
    assets = [*build_ingest_assets(settings), *review_assets, *build_feature_assets(settings), *MODEL_ASSETS,
              *build_serving_assets(settings), *build_scoring_assets(settings), *monitoring_assets, *decider_assets]
    jobs, schedules, sensors = build_automation(settings)
    jobs = [*jobs, *MODEL_JOBS, *ROLLOUT_JOBS, *decider_jobs, *review_jobs]
    deciders = application_deciders(settings)
    sensors = [*sensors, *build_submission_sensors(deciders), *build_decider_drift_sensors(deciders),
               *build_decider_rollout_sensors(deciders)]
    schedules = [*schedules, *decider_schedules, *review_schedules]
    # Locally one process runs a whole run (fast start, one DuckDB writer); in production the run
    # launcher of the Dagster deployment (dagster-k8s) isolates runs and steps run in subprocesses.
    executor = dg.in_process_executor if settings.env == "local" else dg.multiprocess_executor
    return dg.Definitions(assets=assets, asset_checks=[*MODEL_CHECKS, *monitoring_checks, *decider_checks], jobs=jobs, schedules=schedules, sensors=sensors,
                          resources=resources_for(settings), executor=executor)


defs = build_definitions(load_settings())
