"""Feature stage: the dbt project (staging -> feature views -> transaction features -> training set)
as Dagster assets; dbt tests appear as asset checks. Daily partitions become dbt vars so one day
can be rebuilt idempotently."""


import json
import os
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from assets.partitions import daily_partitions, partition_days
from assets.resources import PlatformSettingsResource, dbt_environment, dbt_project
from mlp_platform.deciders.declaration import load_decider
from mlp_platform.settings import Settings

_GROUPS = {"staging": "staging", "features": "features", "training": "training"}
#: Where the application deciders' generated feature models live (mlp_platform.features.dbt_codegen).
DECIDER_FOLDER = "deciders"
_KIND = {"duckdb": "duckdb", "snowflake": "snowflake"}


class PlatformDbtTranslator(DagsterDbtTranslator):
    """Groups dbt models by stage (their folder) and tags the warehouse kind."""

    def __init__(self, warehouse_kind: str):
        super().__init__()
        self._warehouse_kind = warehouse_kind

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        if props.get("resource_type") != "model":
            return spec
        folder = props["fqn"][1] if len(props["fqn"]) > 2 else "features"
        kinds = {"dbt", _KIND[self._warehouse_kind]}
        if folder == DECIDER_FOLDER:  # a decider's generated model: its key and group come from its meta
            return spec.replace_attributes(kinds=kinds)
        return spec.replace_attributes(group_name=_GROUPS.get(folder, "features"), kinds=kinds)

    def get_asset_check_spec(self, asset_spec, manifest, unique_id, project):
        """dbt tests are blocking checks: a failed data test stops everything downstream (the model
        is never trained on data that failed its tests)."""
        check = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        return None if check is None else check._replace(blocking=True)


def dbt_vars(settings: Settings, first_day=None, end_day=None) -> dict[str, object]:
    """dbt vars for a run: partition days (inclusive) plus the decider's label delays (its declaration)."""
    decider = load_decider(settings.deciders_dir)
    labels = decider.labels
    out: dict[str, object] = {"label_delay_days": labels.delay_days, "label_maturity_days": labels.maturity_days,
                              "labels_decider": decider.name}
    if first_day is not None:
        out["min_day"] = first_day.isoformat()
        out["max_day"] = (end_day.fromordinal(end_day.toordinal() - 1)).isoformat()
    return out


def build_feature_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    project = dbt_project(settings)
    if not project.manifest_path.exists():
        raise FileNotFoundError(
            f"dbt manifest missing at {project.manifest_path}: run `make prepare` (or `mlp prepare`) once; "
            "it compiles the feature spec for dbt and parses the project")
    translator = PlatformDbtTranslator(settings.warehouse)
    manifest = json.loads(project.manifest_path.read_text())  # read once for the three definitions

    @dbt_assets(
        manifest=manifest,
        project=project,
        select="path:models/staging path:models/features",
        partitions_def=daily_partitions(settings),
        backfill_policy=dg.BackfillPolicy.single_run(),
        dagster_dbt_translator=translator,
        name="daily_feature_models",
    )
    def daily_feature_models(context: AssetExecutionContext, dbt: DbtCliResource,
                             platform: PlatformSettingsResource):
        current = platform.get()
        os.environ.update(dbt_environment(current))
        first_day, end_day = partition_days(context)
        args = ["build", "--vars", json.dumps(dbt_vars(current, first_day, end_day))]
        yield from dbt.cli(args, context=context).stream()

    out = [daily_feature_models, unpartitioned_models(manifest, project, translator, "path:models/training",
                                                      "training_models")]
    if _has_decider_models(manifest):
        # each application decider's feature table (``<decider>/features``), in its own group
        out.append(unpartitioned_models(manifest, project, translator, f"path:models/{DECIDER_FOLDER}",
                                        "decider_feature_models"))
    return out


def unpartitioned_models(manifest, project, translator, select: str, name: str) -> dg.AssetsDefinition:
    """The dbt models of ``select`` as one unpartitioned definition (built with the run's dbt vars)."""

    @dbt_assets(manifest=manifest, project=project, select=select, dagster_dbt_translator=translator, name=name)
    def models(context: AssetExecutionContext, dbt: DbtCliResource, platform: PlatformSettingsResource):
        current = platform.get()
        os.environ.update(dbt_environment(current))
        yield from dbt.cli(["build", "--vars", json.dumps(dbt_vars(current))], context=context).stream()

    return models


def _has_decider_models(manifest: Mapping[str, Any]) -> bool:
    """Whether the parsed project holds a generated decider model (none: no such asset definition)."""
    nodes = manifest["nodes"].values()
    return any(n.get("resource_type") == "model" and n.get("fqn", [None, None])[1] == DECIDER_FOLDER for n in nodes)
