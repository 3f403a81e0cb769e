"""Data contracts: validation of incoming transactions and labels against the canonical schema.

Two severities:

* **critical** (missing id or time, negative or non-numeric amount, duplicate id, a value of the
  wrong type, a label outside {0, 1}, a label known before its transaction): the partition is
  refused as a whole with a :class:`ContractViolation` naming the offending rows. Nothing is written.
* **non-critical** (unknown channel, missing country, currency, merchant category): the value is
  replaced by a documented default (see :mod:`mlp_platform.data.schema`) and counted, so the
  report shows how much of the partition was patched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from mlp_platform.data.schema import (
    CHANNELS,
    DEFAULT_CHANNEL,
    DEFAULT_COUNTRY,
    DEFAULT_CURRENCY,
    DEFAULT_MERCHANT_CATEGORY,
    LABEL_SCHEMA,
    TRANSACTION_SCHEMA,
)

MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Issue:
    rule: str
    rows: int
    examples: list[str]

    def describe(self) -> str:
        return f"{self.rule}: {self.rows} row(s), e.g. {', '.join(self.examples)}"


@dataclass
class ContractReport:
    """What a contract found in one batch; shown as asset-check metadata in the Dagster UI."""

    dataset: str
    rows: int
    critical: list[Issue] = field(default_factory=list)
    defaults: list[Issue] = field(default_factory=list)

    @property
    def defaulted_rows(self) -> int:
        return sum(i.rows for i in self.defaults)

    def as_metadata(self) -> dict[str, object]:
        meta: dict[str, object] = {"rows": self.rows, "critical_violations": sum(i.rows for i in self.critical)}
        for issue in self.defaults:
            meta[f"defaulted.{issue.rule}"] = issue.rows
            meta[f"examples.{issue.rule}"] = ", ".join(issue.examples)
        for issue in self.critical:
            meta[f"critical.{issue.rule}"] = issue.rows
            meta[f"examples.{issue.rule}"] = ", ".join(issue.examples)
        return meta


class ContractViolation(ValueError):
    """A critical violation: the partition is refused, nothing is written."""

    def __init__(self, report: ContractReport):
        self.report = report
        lines = "; ".join(i.describe() for i in report.critical)
        super().__init__(f"{report.dataset}: data contract violated, partition refused: {lines}")


def _row_names(df: pl.DataFrame, mask: pl.Series, id_column: str = "transaction_id") -> list[str]:
    """Human-readable references to offending rows: position and id where there is one."""
    idx = df.with_row_index("_row").filter(mask)
    out = []
    for row in idx.head(MAX_EXAMPLES).iter_rows(named=True):
        ident = row.get(id_column)
        out.append(f"row {row['_row']}" + (f" (id={ident})" if ident is not None else ""))
    return out


def _coerce(df: pl.DataFrame, schema: dict[str, pl.DataType], dataset: str, report: ContractReport) -> pl.DataFrame:
    """Cast every column to its canonical type; values that do not convert are critical."""
    missing = [c for c in schema if c not in df.columns]
    optional = {"device_id", "currency", "channel", "country", "merchant_category", "fraud_scenario"}
    required_missing = [c for c in missing if c not in optional]
    if required_missing:
        report.critical.append(Issue("missing_column", report.rows, [", ".join(required_missing)]))
        raise ContractViolation(report)
    df = df.with_columns([pl.lit(None, dtype=schema[c]).alias(c) for c in missing])
    casted = []
    for name, dtype in schema.items():
        col, source_dtype = pl.col(name), df.schema[name]
        if dtype == pl.String() and source_dtype != pl.String():
            casted.append(col.cast(pl.String, strict=False).alias(name))
        elif isinstance(dtype, pl.Datetime) and source_dtype == pl.String():
            casted.append(col.str.to_datetime(time_unit="us", strict=False).alias(name))
        elif isinstance(dtype, pl.Datetime) and isinstance(source_dtype, pl.Datetime) and source_dtype.time_zone:
            casted.append(col.dt.convert_time_zone("UTC").dt.replace_time_zone(None).cast(dtype).alias(name))
        else:
            casted.append(col.cast(dtype, strict=False).alias(name))
    out = df.select(casted)
    for name in schema:
        bad = df[name].is_not_null() & out[name].is_null()
        n = int(bad.sum())
        if n:
            report.critical.append(Issue(f"wrong_type.{name}", n, _row_names(df, bad)))
    return out


def _default(df: pl.DataFrame, column: str, mask: pl.Expr, value: str, rule: str, report: ContractReport) -> pl.DataFrame:
    flags = df.select(mask.fill_null(False)).to_series()
    n = int(flags.sum())
    if n:
        report.defaults.append(Issue(rule, n, _row_names(df, flags)))
        df = df.with_columns(pl.when(mask).then(pl.lit(value)).otherwise(pl.col(column)).alias(column))
    return df


def _refuse_on_critical(checks: dict[str, pl.Series], out: pl.DataFrame, report: ContractReport) -> None:
    """Record every critical rule that matched rows; refuse the batch if any did."""
    for rule, mask in checks.items():
        mask = mask.fill_null(False)
        n = int(mask.sum())
        if n:
            report.critical.append(Issue(rule, n, _row_names(out, mask)))
    if report.critical:
        raise ContractViolation(report)


def validate_transactions(df: pl.DataFrame, dataset: str = "transactions") -> tuple[pl.DataFrame, ContractReport]:
    """Return the canonical, defaulted frame and its report; raise ContractViolation if critical."""
    report = ContractReport(dataset=dataset, rows=df.height)
    out = _coerce(df, TRANSACTION_SCHEMA, dataset, report)
    checks = {
        "missing.transaction_id": out["transaction_id"].is_null() | (out["transaction_id"].str.strip_chars() == ""),
        "missing.event_time": out["event_time"].is_null() & df["event_time"].is_null(),
        "missing.customer_id": out["customer_id"].is_null(),
        "missing.merchant_id": out["merchant_id"].is_null(),
        "missing.amount": out["amount"].is_null() & df["amount"].is_null(),
        "negative_amount": out["amount"] < 0,
        "non_finite_amount": out["amount"].is_nan() | out["amount"].is_infinite(),
        "duplicate.transaction_id": out["transaction_id"].is_duplicated() & out["transaction_id"].is_not_null(),
    }
    _refuse_on_critical(checks, out, report)

    out = out.with_columns(pl.col("channel").str.to_lowercase().str.strip_chars())
    out = _default(out, "channel", ~pl.col("channel").is_in(list(CHANNELS)) | pl.col("channel").is_null(),
                   DEFAULT_CHANNEL, "unknown_channel", report)
    out = out.with_columns(pl.col("country").str.to_uppercase().str.strip_chars())
    out = _default(out, "country", pl.col("country").is_null() | (pl.col("country").str.len_chars() != 2),
                   DEFAULT_COUNTRY, "missing_country", report)
    out = _default(out, "currency", pl.col("currency").is_null(), DEFAULT_CURRENCY, "missing_currency", report)
    out = _default(out, "merchant_category", pl.col("merchant_category").is_null(), DEFAULT_MERCHANT_CATEGORY,
                   "missing_merchant_category", report)
    return out, report


def validate_labels(
    labels: pl.DataFrame, transactions: pl.DataFrame, dataset: str = "labels"
) -> tuple[pl.DataFrame, ContractReport]:
    """Labels must reference a transaction of the same batch and be known after it happened."""
    report = ContractReport(dataset=dataset, rows=labels.height)
    out = _coerce(labels, LABEL_SCHEMA, dataset, report)
    joined = out.join(transactions.select("transaction_id", "event_time"), on="transaction_id", how="left")
    checks = {
        "missing.transaction_id": out["transaction_id"].is_null(),
        "missing.label_time": out["label_time"].is_null(),
        "label_not_0_or_1": ~out["label"].is_in([0, 1]) | out["label"].is_null(),
        "unknown_transaction": joined["event_time"].is_null() & out["transaction_id"].is_not_null(),
        "label_before_transaction": joined["label_time"] < joined["event_time"],
        "duplicate.transaction_id_label_time": out.select(
            pl.struct("transaction_id", "label_time").is_duplicated()).to_series(),
    }
    _refuse_on_critical(checks, out, report)
    return out, report
