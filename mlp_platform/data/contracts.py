"""Data contracts: validation of incoming transactions and labels, and of loan applications and their
credit outcomes, against the canonical schemas.

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
    APPLICATION_CHANNELS,
    APPLICATION_LEVELS,
    APPLICATION_SCHEMA,
    CHANNELS,
    DEFAULT_APPLICATION_CHANNEL,
    DEFAULT_CHANNEL,
    DEFAULT_COUNTRY,
    DEFAULT_CURRENCY,
    DEFAULT_MERCHANT_CATEGORY,
    LABEL_SCHEMA,
    OUTCOME_SCHEMA,
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


def _row_names(df: pl.DataFrame, mask: pl.Series, id_column: str | None = None) -> list[str]:
    """Human-readable references to offending rows: position and id where there is one."""
    id_column = id_column or ("application_id" if "application_id" in df.columns else "transaction_id")
    idx = df.with_row_index("_row").filter(mask)
    out = []
    for row in idx.head(MAX_EXAMPLES).iter_rows(named=True):
        ident = row.get(id_column)
        out.append(f"row {row['_row']}" + (f" (id={ident})" if ident is not None else ""))
    return out


_OPTIONAL_TRANSACTION_COLUMNS = frozenset({"device_id", "currency", "channel", "country", "merchant_category",
                                           "fraud_scenario"})


def _coerce(df: pl.DataFrame, schema: dict[str, pl.DataType], dataset: str, report: ContractReport,
            optional: frozenset[str] = _OPTIONAL_TRANSACTION_COLUMNS) -> pl.DataFrame:
    """Cast every column to its canonical type; values that do not convert are critical."""
    missing = [c for c in schema if c not in df.columns]
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


#: Columns an application source may lack: absent in some sources (see each source's absent fields).
_OPTIONAL_APPLICATION_COLUMNS = frozenset({"event_time", "intermediary_id", "monthly_income", "bureau_score",
                                           "channel", "marital_status", "telephone"})
#: Plausible ranges; outside them a value is a critical error (a typo or an attack, not an applicant).
APPLICATION_RANGES: dict[str, tuple[float, float]] = {
    "requested_amount": (1.0, 10_000_000.0), "term_months": (1, 480), "installment_rate_pct": (1, 4),
    "monthly_income": (0.0, 10_000_000.0), "bureau_score": (0, 1000), "age_years": (18, 120),
    "residence_since_years": (0, 120), "existing_credits": (0, 100), "dependents": (0, 30),
}
#: Categorical attributes a missing or unknown level of which is defaulted (and counted), not refused.
_DEFAULTED_LEVELS = {"channel": DEFAULT_APPLICATION_CHANNEL, "marital_status": "unknown", "telephone": "no"}


def validate_applications(df: pl.DataFrame, dataset: str = "applications") -> tuple[pl.DataFrame, ContractReport]:
    """Return the canonical, defaulted application frame and its report; raise ContractViolation if
    critical: a missing id, duplicate id, a value of the wrong type or outside its plausible range,
    or an unknown level of an attribute a model may read. An unknown channel, marital status or
    telephone flag becomes its documented default."""
    report = ContractReport(dataset=dataset, rows=df.height)
    out = _coerce(df, APPLICATION_SCHEMA, dataset, report, optional=_OPTIONAL_APPLICATION_COLUMNS)
    out = out.with_columns([pl.col(c).str.strip_chars().str.to_lowercase() for c in APPLICATION_LEVELS])
    checks: dict[str, pl.Series] = {
        "missing.application_id": out["application_id"].is_null() | (out["application_id"].str.strip_chars() == ""),
        "missing.applicant_id": out["applicant_id"].is_null(),
        "duplicate.application_id": out["application_id"].is_duplicated() & out["application_id"].is_not_null(),
        "non_finite.requested_amount": out["requested_amount"].is_nan() | out["requested_amount"].is_infinite(),
        "non_finite.monthly_income": out["monthly_income"].is_nan() | out["monthly_income"].is_infinite(),
    }
    for column, (lo, hi) in APPLICATION_RANGES.items():
        if column not in _OPTIONAL_APPLICATION_COLUMNS:
            checks[f"missing.{column}"] = out[column].is_null()
        checks[f"out_of_range.{column}"] = (out[column] < lo) | (out[column] > hi)
    for column, levels in APPLICATION_LEVELS.items():
        if column in _DEFAULTED_LEVELS:
            continue
        checks[f"unknown_level.{column}"] = ~out[column].is_in(list(levels)) | out[column].is_null()
    _refuse_on_critical(checks, out, report)
    for column, default in _DEFAULTED_LEVELS.items():
        levels = APPLICATION_CHANNELS if column == "channel" else APPLICATION_LEVELS[column]
        out = _default(out, column, ~pl.col(column).is_in(list(levels)) | pl.col(column).is_null(), default,
                       f"unknown_{column}", report)
    return out, report


def validate_outcomes(outcomes: pl.DataFrame, applications: pl.DataFrame,
                      dataset: str = "outcomes") -> tuple[pl.DataFrame, ContractReport]:
    """Outcomes must reference an application of the same batch, be 0 (good) or 1 (bad), be unique per
    application, and be known after the application where both are dated."""
    report = ContractReport(dataset=dataset, rows=outcomes.height)
    out = _coerce(outcomes, OUTCOME_SCHEMA, dataset, report, optional=frozenset({"label_time"}))
    joined = out.join(applications.select("application_id", "event_time"), on="application_id", how="left")
    known = out["application_id"].is_in(applications["application_id"].implode())
    dated = applications["event_time"].is_not_null().any()
    checks = {
        "missing.application_id": out["application_id"].is_null(),
        "label_not_0_or_1": ~out["label"].is_in([0, 1]) | out["label"].is_null(),
        "unknown_application": ~known & out["application_id"].is_not_null(),
        "duplicate.application_id": out["application_id"].is_duplicated() & out["application_id"].is_not_null(),
        "label_before_application": joined["label_time"] < joined["event_time"],
        "missing.label_time": out["label_time"].is_null() & pl.Series([dated] * out.height, dtype=pl.Boolean),
    }
    _refuse_on_critical(checks, out, report)
    return out, report
