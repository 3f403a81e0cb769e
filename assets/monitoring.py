"""Monitoring stage: the decision log loaded into the warehouse, the daily drift / skew / performance
report of the champion (with its asset checks, plots and the Evidently HTML report), and the staging
replay of a past day through a candidate. The work is done by ``mlp_platform.monitoring.daily`` and
``mlp_platform.batch.decisions``; these definitions only wire it into Dagster."""

import datetime as dt

import dagster as dg
from dagster import AssetExecutionContext

from assets.deciders import application_deciders
from assets.partitions import daily_partitions, partition_days
from assets.resources import PlatformSettingsResource
from mlp_platform import lifecycle
from mlp_platform.batch.decisions import load_decisions, load_decisions_from_stream
from mlp_platform.monitoring import daily
from mlp_platform.settings import Settings
from mlp_platform.streaming.decision_stream import stream_config

TRANSACTION_FEATURES = dg.AssetKey(["features", "transaction_features"])
STG_LABELS = dg.AssetKey(["staging", "stg_labels"])
BATCH_SCORES = dg.AssetKey(["scoring", "batch_scores"])
SERVED = dg.AssetKey(["monitoring", "served_decisions"])
DRIFT = dg.AssetKey(["monitoring", "drift_report"])


def _severity(level: str) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.ERROR if level == "error" else dg.AssetCheckSeverity.WARN


def build_monitoring_assets(settings: Settings) -> tuple[list, list]:
    partitions = daily_partitions(settings)

    @dg.asset(
        key=SERVED, group_name="monitoring", kinds={"python", "duckdb"}, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        description="Loads the scoring service's decision log into the warehouse (monitoring.decisions, "
                    "monitoring.served_features: the exact feature vectors served, monitoring.shadow_scores), "
                    "incrementally and only after verifying its hash chain: from the decision stream "
                    "(NATS JetStream, MLP_DECISION_STREAM_URL) in production, from the local log segments "
                    "on a laptop. Run nightly after the day ends.",
    )
    def served_decisions(context: AssetExecutionContext, platform: PlatformSettingsResource) -> dg.MaterializeResult:
        current = platform.get()
        stream = stream_config(current)
        if stream is not None:
            result = load_decisions_from_stream(current, stream)
        else:  # the fraud service's log, then each application decider's (their own directories)
            result = load_decisions(current, current.decision_log_root)
            for decider in application_deciders(current):
                more = load_decisions(current, current.decider_log_root(decider.name))
                result.application_decisions += more.application_decisions
                result.other_records += more.other_records
                result.directories.update(more.directories)
        context.log.info(f"decision log loaded: {result}")
        first, end = partition_days(context)
        per_day = daily.served_counts(current, first, end)
        return dg.MaterializeResult(metadata={**result.as_metadata(), "decisions_by_day": dg.MetadataValue.json(per_day)})

    @dg.asset(
        key=DRIFT, group_name="monitoring", kinds={"python", "evidently"}, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[SERVED, TRANSACTION_FEATURES, BATCH_SCORES, STG_LABELS],
        check_specs=[
            dg.AssetCheckSpec("feature_drift", asset=DRIFT,
                              description="No feature drifted beyond its calibrated threshold (WARN/ERROR by size)."),
            dg.AssetCheckSpec("prediction_drift", asset=DRIFT,
                              description="The score distribution did not drift from the champion's training scores."),
            dg.AssetCheckSpec("serving_skew", asset=DRIFT,
                              description="Features served online equal the offline recomputation (per feature)."),
            dg.AssetCheckSpec("label_performance", asset=DRIFT,
                              description="Once labels matured: AP / alert-budget precision not below the "
                                          "backtest expectation."),
        ],
        description="The day's monitoring report for the champion: data drift per feature (PSI on reference "
                    "quantile bins, KS, normalised Wasserstein, calibrated thresholds) of the features as served, "
                    "prediction drift of the scores, training/serving skew, label-based performance of the day "
                    "whose labels just matured, an Evidently HTML report; the summary feeds the drift sensor and "
                    "the service's drift gauges.",
    )
    def drift_report(context: AssetExecutionContext, platform: PlatformSettingsResource):
        current = platform.get()
        first, end = partition_days(context)
        champion = lifecycle.registry_for(current).alias("champion")
        if champion is None:
            raise dg.Failure("no champion: nothing to monitor")
        day = first
        last = None
        while day < end:
            last = daily.monitor_day(current, day, champion)
            context.log.info(f"{day}: {last.summary}")
            day += dt.timedelta(days=1)
        summary = last.summary
        yield dg.MaterializeResult(metadata={
            "summary": dg.MetadataValue.json(summary),
            "model_version": champion, "severity": summary["severity"],
            "drifted_features": dg.MetadataValue.json(summary["drifted_features"]),
            "features_source": summary["features_source"],
            "drift": dg.MetadataValue.md(last.drift_table()),
            "drift_plot": dg.MetadataValue.md(lifecycle.figure_markdown(last.figure())),
            "skew": dg.MetadataValue.json(last.skew or {}),
            "performance": dg.MetadataValue.json(last.performance or {}),
            "evidently_report": dg.MetadataValue.path(str(last.evidently_path)),
        })
        for check in last.checks():
            yield dg.AssetCheckResult(check_name=check["name"], asset_key=DRIFT, passed=check["passed"],
                                      severity=_severity(check["severity"]),
                                      metadata={"explanation": check["explanation"], "day": summary["day"]})

    class ReplayConfig(dg.Config):
        day: str
        candidate_version: str

    @dg.asset(
        key=["monitoring", "staging_replay"], group_name="monitoring", kinds={"python"}, deps=[SERVED],
        description="Staging replay: a past day of production decisions (the feature vectors as served) through a "
                    "candidate version; reports feature divergences (served vs offline), score and decision "
                    "changes, approval rates side by side. Config: day, candidate_version.",
    )
    def staging_replay(context: AssetExecutionContext, config: ReplayConfig,
                       platform: PlatformSettingsResource) -> dg.MaterializeResult:
        current = platform.get()
        report = daily.replay_day(current, dt.date.fromisoformat(config.day), config.candidate_version)
        context.log.info(report.markdown())
        return dg.MaterializeResult(metadata={
            "day": config.day, "candidate_version": config.candidate_version, "decisions": report.decisions,
            "report": dg.MetadataValue.md(report.markdown()),
            "rates": dg.MetadataValue.json(report.rates), "flips": dg.MetadataValue.json(report.flips),
            "score_change": dg.MetadataValue.json(report.score_change),
            "feature_skew": dg.MetadataValue.json(report.feature_skew.get("summary", {})),
        })

    return [served_decisions, drift_report, staging_replay], []
