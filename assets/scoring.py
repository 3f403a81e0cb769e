"""Scoring stage: nightly batch scoring of each day's transactions with the champion, written to the
warehouse (``scoring.batch_scores``, one day replaced per run, so backfills are idempotent) and the
customers' batch risk pushed to the online store. The champion version is resolved once per run and
recorded with every row and in the metadata."""

import datetime as dt

import dagster as dg
from dagster import AssetExecutionContext

from assets.partitions import daily_partitions, partition_days
from assets.resources import PlatformSettingsResource
from mlp_platform import lifecycle
from mlp_platform.batch.scoring import score_day
from mlp_platform.settings import Settings

TRANSACTION_FEATURES = dg.AssetKey(["features", "transaction_features"])


class BatchScoringConfig(dg.Config):
    #: Score with this registered version instead of the champion (a backfill with a fixed version).
    model_version: str = ""


def build_scoring_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=["scoring", "batch_scores"], group_name="scoring", kinds={"lightgbm", "duckdb"},
        deps=[TRANSACTION_FEATURES], partitions_def=daily_partitions(settings),
        backfill_policy=dg.BackfillPolicy.single_run(),
        description="Scores every transaction of the day with the champion (or the configured version) through "
                    "the compiled trees, applies the serving decision policy, replaces the day in "
                    "scoring.batch_scores, and pushes each customer's batch risk to the online store.",
    )
    def batch_scores(context: AssetExecutionContext, config: BatchScoringConfig,
                     platform: PlatformSettingsResource) -> dg.MaterializeResult:
        current = platform.get()
        version = config.model_version or lifecycle.registry_for(current).alias("champion")
        if not version:
            raise dg.Failure("no champion in the registry and no model_version configured: nothing to score with")
        first, end = partition_days(context)
        per_day, rows, decisions = {}, 0, {"approve": 0, "review": 0, "decline": 0}
        day = first
        while day < end:
            result = score_day(current, str(version), day)
            per_day[day.isoformat()] = result.as_metadata()
            rows += result.rows
            for k, v in result.decisions.items():
                decisions[k] = decisions.get(k, 0) + v
            context.log.info(f"{day}: {result.rows} transactions scored by v{version}, "
                             f"approval {result.approval_rate:.3f}, {result.customers_pushed} customers pushed")
            day += dt.timedelta(days=1)
        return dg.MaterializeResult(metadata={
            "model_version": str(version), "rows": rows, "decisions": dg.MetadataValue.json(decisions),
            "approval_rate": decisions["approve"] / rows if rows else float("nan"),
            "by_day": dg.MetadataValue.json(per_day)})

    return [batch_scores]
