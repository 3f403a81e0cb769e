"""Review stage: analysts' outcomes of review cases become labels (raw.analyst_labels, read by dbt's
stg_labels beside the chargebacks), every hour and before the training set is rebuilt."""

import dagster as dg

from assets.resources import ReviewDatabaseResource, WarehouseResource
from mlp_platform.review.outcomes import export_analyst_labels
from mlp_platform.settings import Settings

RAW_ANALYST_LABELS = dg.AssetKey("raw_analyst_labels")
REVIEW_LABELS_JOB = "review_labels_job"


def build_review_assets(settings: Settings) -> tuple[list[dg.AssetsDefinition], list, list]:
    """The asset, its job and its hourly schedule (off by default, like the nightly one)."""

    @dg.asset(key=RAW_ANALYST_LABELS, group_name="review", kinds={"python", settings.warehouse},
              description=(
                  "Analysts' outcomes of review cases (fraud / not fraud; approve / decline), copied from the "
                  "review database into raw.analyst_labels with the time each was recorded (label_time = "
                  "resolved_at): the second label source of stg_labels. Incremental and idempotent."))
    def raw_analyst_labels(review_database: ReviewDatabaseResource, warehouse: WarehouseResource):
        result = export_analyst_labels(review_database.get_store(), warehouse.get_warehouse())
        return dg.MaterializeResult(metadata={**result.as_metadata(), "dagster/row_count": result.exported})

    job = dg.define_asset_job(REVIEW_LABELS_JOB, selection=dg.AssetSelection.assets(RAW_ANALYST_LABELS),
                              description="Copy the analysts' new outcomes into the warehouse as labels.")
    schedule = dg.ScheduleDefinition(name="review_labels_schedule", job=job, cron_schedule="15 * * * *",
                                     default_status=dg.DefaultScheduleStatus.STOPPED,
                                     description="Every hour at :15, the analysts' new outcomes become labels "
                                                 "(turn on in the UI).")
    return [raw_analyst_labels], [job], [schedule]
