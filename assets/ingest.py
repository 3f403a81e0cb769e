"""Ingest stage: raw transactions and labels from the configured source, daily partitions,
with the data contracts as asset checks."""


import dagster as dg
from dagster import AssetExecutionContext

from assets.partitions import daily_partitions, partition_days
from assets.resources import PlatformSettingsResource, WarehouseResource
from mlp_platform.data.contracts import ContractReport, ContractViolation
from mlp_platform.data.ingest import ingest_days
from mlp_platform.settings import Settings

RAW_TRANSACTIONS = dg.AssetKey("raw_transactions")
RAW_LABELS = dg.AssetKey("raw_labels")


def _check_result(key: dg.AssetKey, name: str, passed: bool, report: ContractReport,
                  severity: dg.AssetCheckSeverity, description: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(asset_key=key, check_name=name, passed=passed, severity=severity,
                               metadata={**report.as_metadata(), "result": description})


def build_ingest_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    partitions = daily_partitions(settings)

    @dg.multi_asset(
        name="ingest_source",
        specs=[
            dg.AssetSpec(RAW_TRANSACTIONS, group_name="ingest", kinds={"python", "duckdb"},
                         description=(
                             "Card transactions of the configured source (synthetic generator or the Fraud "
                             "Detection Handbook data), validated against the canonical data contract and "
                             "written to raw.transactions, one partition per event day.")),
            dg.AssetSpec(RAW_LABELS, group_name="ingest", kinds={"python", "duckdb"},
                         description=(
                             "Fraud labels of those transactions with the time each became known "
                             "(label_time), written to raw.labels. fraud_scenario is label metadata only.")),
        ],
        check_specs=[
            dg.AssetCheckSpec("contract_critical", asset=RAW_TRANSACTIONS, blocking=True,
                              description="No missing id/time, negative amount, duplicate id or wrong type."),
            dg.AssetCheckSpec("contract_defaults", asset=RAW_TRANSACTIONS,
                              description="Share of rows patched with a documented default stays under the "
                                          "configured threshold (unknown channel, missing country, ...)."),
            dg.AssetCheckSpec("contract_critical", asset=RAW_LABELS, blocking=True,
                              description="Every label names a known transaction, is 0/1 and is not known "
                                          "before the transaction happened."),
        ],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=False,
    )
    def ingest_source(context: AssetExecutionContext, platform: PlatformSettingsResource,
                      warehouse: WarehouseResource):
        settings = platform.get()
        first_day, end_day = partition_days(context)
        try:
            result = ingest_days(settings, warehouse.get_warehouse(), first_day, end_day)
        except ContractViolation as violation:
            key = RAW_LABELS if violation.report.dataset == "raw_labels" else RAW_TRANSACTIONS
            yield _check_result(key, "contract_critical", False, violation.report, dg.AssetCheckSeverity.ERROR,
                                str(violation))
            raise dg.Failure(description=str(violation), metadata=violation.report.as_metadata()) from violation
        tx_report, label_report = result.transactions_report, result.labels_report
        defaulted_share = tx_report.defaulted_rows / max(tx_report.rows, 1)
        yield _check_result(RAW_TRANSACTIONS, "contract_critical", True, tx_report, dg.AssetCheckSeverity.ERROR,
                            "no critical violation")
        yield _check_result(
            RAW_TRANSACTIONS, "contract_defaults", defaulted_share <= settings.contract_default_warn_share,
            tx_report, dg.AssetCheckSeverity.WARN,
            f"{defaulted_share:.2%} of rows received a default "
            f"(threshold {settings.contract_default_warn_share:.0%}); fields the source lacks entirely: "
            f"{', '.join(result.absent_fields) or 'none'}")
        yield _check_result(RAW_LABELS, "contract_critical", True, label_report, dg.AssetCheckSeverity.ERROR,
                            "no critical violation")
        days = f"{first_day.isoformat()}..{(end_day.toordinal() - first_day.toordinal())} day(s)"
        yield dg.MaterializeResult(asset_key=RAW_TRANSACTIONS, metadata={
            "source": result.source, "days": days, "dagster/row_count": result.transactions,
            "absent_fields": ", ".join(result.absent_fields) or "none"})
        yield dg.MaterializeResult(asset_key=RAW_LABELS, metadata={
            "source": result.source, "days": days, "dagster/row_count": result.labels, "frauds": result.frauds})

    return [ingest_source]
