"""Serving stage: batch features pushed from the warehouse to the online store, one day at a time."""

import datetime as dt

import dagster as dg
from dagster import AssetExecutionContext

from assets.partitions import daily_partitions, partition_days
from assets.resources import PlatformSettingsResource
from mlp_platform.data.warehouse import warehouse_for
from mlp_platform.features.spec import default_spec
from mlp_platform.serving.batch_push import batch_views, push_batch
from mlp_platform.settings import Settings


def build_serving_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    views = batch_views(default_spec())

    @dg.asset(
        name="online_batch_features", group_name="serving", kinds={"python", "redis"},
        deps=[dg.AssetKey(["features", f"fv_{v.name}"]) for v in views],
        partitions_def=daily_partitions(settings), backfill_policy=dg.BackfillPolicy.single_run(),
        description="Pushes the batch feature views (label-delayed merchant fraud rates) of each day, as of "
                    "its start, from the warehouse into the online feature store, with the as-of timestamp.",
    )
    def online_batch_features(context: AssetExecutionContext, platform: PlatformSettingsResource):
        current = platform.get()
        first, end = partition_days(context)
        warehouse = warehouse_for(current)
        summary = {}
        for view in views:
            key = default_spec().entities[view.entity].key
            cols = ", ".join([key, "as_of_date", *[f.name for f in view.features]])
            frame = warehouse.query(f"select {cols} from features.fv_{view.name} "
                                    f"where as_of_date >= '{first}' and as_of_date < '{end}'")
            day = first
            while day < end:
                rows = frame.filter(frame["as_of_date"] == day).to_dicts()
                result = push_batch(current.feature_store_url, current.batch_snapshot_dir, view.name, day, rows)
                summary[f"{view.name}/{day}"] = result["rows"]
                day += dt.timedelta(days=1)
        return dg.MaterializeResult(metadata={"values_by_day": dg.MetadataValue.json(summary),
                                              "entities": sum(summary.values())})

    return [online_batch_features]
