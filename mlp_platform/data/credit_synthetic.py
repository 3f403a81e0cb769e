"""Deterministic synthetic loan-application generator: the credit decider's embedded default source.

This module owns a simulated lending world and nothing else. It emits frames in the canonical
``APPLICATION_SCHEMA`` / ``OUTCOME_SCHEMA`` (see :mod:`mlp_platform.data.schema`) one day at a time,
with the German credit data's attributes (same canonical levels) plus what a lender's systems add:
a monthly income, a credit-bureau score, the channel and, for broker business, the intermediary.

* **World** (from ``seed`` and ``n_applicants`` only): applicants with an age, sex, marital status,
  job, employment length, housing, property, income, dependents, a latent creditworthiness and the
  bureau score that reflects it with noise; intermediaries (brokers) each with a quality of their
  own.
* **Applications** (per day, from ``(seed, day ordinal)``): a Poisson count with a weekly cycle
  (fewer at weekends); each draws an applicant (repeat applicants happen), a channel, a purpose,
  an amount scaled by income and a term that grows with the amount; the instalment rate band is
  the monthly instalment's share of income.
* **Outcomes**: every application has one outcome, ``label`` 1 (bad: default within the
  performance window) or 0, drawn from a default probability that rises with the debt burden, the
  term, a weak checking account, a poor credit history, a low bureau score and a low-quality
  broker, and does **not** depend on sex, age or foreign-worker status directly (any gap there is
  through correlated attributes, which is what a fairness gate must measure). A bad outcome is
  known on the day of default (30 days to the end of the window after the application); a good
  one at the end of the window. (Simplification: every application is booked and observed; a
  real lender observes only approved ones.)

Drift: from ``CreditSyntheticConfig.drift_start`` on, the enabled ``drift_kinds`` change the world:
``income_shock`` cuts incomes by 20% and raises defaults (a downturn), ``broker_surge`` triples
broker business through a new low-quality intermediary ``BRK-NEW``, ``amount_inflation`` raises
requested amounts by 25%. Days before ``drift_start`` are identical to the same config without drift.
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass

import numpy as np
import polars as pl

from mlp_platform.data.schema import APPLICATION_LEVELS, APPLICATION_SCHEMA, OUTCOME_SCHEMA

DRIFT_KINDS: tuple[str, ...] = ("income_shock", "broker_surge", "amount_inflation")
NEW_INTERMEDIARY = "BRK-NEW"
_TAG_WORLD, _TAG_DAY = 11, 12
_DAY_S = 86_400
_TERMS = np.array([6, 9, 12, 18, 24, 30, 36, 48, 60, 72])


@dataclass(frozen=True)
class CreditSyntheticConfig:
    seed: int = 7
    start_date: datetime.date = datetime.date(2026, 1, 1)
    days: int = 120
    n_applicants: int = 20_000
    applications_per_day: float = 250.0
    n_intermediaries: int = 12
    performance_window_days: int = 90
    drift_start: datetime.date | None = None
    drift_kinds: tuple[str, ...] = DRIFT_KINDS

    def __post_init__(self):
        if self.n_applicants < 1 or self.applications_per_day <= 0 or self.days < 1:
            raise ValueError("n_applicants, applications_per_day and days must be positive")
        if self.performance_window_days < 31:
            raise ValueError("performance_window_days must be at least 31 (defaults are observed from day 30)")
        unknown = sorted(set(self.drift_kinds) - set(DRIFT_KINDS))
        if unknown:
            raise ValueError(f"unknown drift kind(s) {unknown} (known: {', '.join(DRIFT_KINDS)})")

    @property
    def end_date(self) -> datetime.date:
        return self.start_date + datetime.timedelta(days=self.days)

    def drifting(self, day: datetime.date, kind: str) -> bool:
        return self.drift_start is not None and day >= self.drift_start and kind in self.drift_kinds


def _pick(rng: np.random.Generator, levels: tuple[str, ...], p, size: int) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return np.asarray(levels, dtype=object)[rng.choice(len(levels), size=size, p=p / p.sum())]


@dataclass(frozen=True)
class _World:
    age: np.ndarray
    sex: np.ndarray
    marital: np.ndarray
    job: np.ndarray
    employment: np.ndarray
    housing: np.ndarray
    property: np.ndarray
    income: np.ndarray
    dependents: np.ndarray
    telephone: np.ndarray
    foreign: np.ndarray
    residence: np.ndarray
    worth: np.ndarray  # latent creditworthiness, standard normal, higher is better
    bureau: np.ndarray
    broker_quality: np.ndarray  # per intermediary, higher is better


@functools.lru_cache(maxsize=8)
def _world(seed: int, n: int, n_intermediaries: int) -> _World:
    rng = np.random.default_rng([seed, _TAG_WORLD, n])
    L = APPLICATION_LEVELS
    age = np.clip(rng.gamma(6.0, 6.0, n) + 18, 18, 85).astype(np.int32)
    sex = _pick(rng, L["sex"], [0.35, 0.65], n)
    marital = np.where(sex == "female", "unknown", _pick(rng, ("single", "married", "divorced"), [0.6, 0.3, 0.1], n))
    job = _pick(rng, L["job"], [0.03, 0.2, 0.62, 0.15], n)
    tenure = np.clip((age - 18) / 10 + rng.normal(0, 1.2, n), 0, 10)
    employment = np.asarray(L["employment_since"], dtype=object)[
        np.digitize(tenure, [0.15, 1.0, 2.5, 4.0])]
    housing = _pick(rng, L["housing"], [0.1, 0.18, 0.72], n)
    prop = _pick(rng, L["property"], [0.15, 0.33, 0.23, 0.29], n)
    job_scale = {"unskilled_nonresident": 0.6, "unskilled_resident": 0.8, "skilled": 1.0, "management": 1.6}
    income = (2_400 * np.vectorize(job_scale.get)(job) * (1 + 0.012 * np.minimum(age - 18, 30))
              * rng.lognormal(0, 0.35, n)).round(2)
    worth = rng.normal(0, 1, n) + 0.15 * (job == "management") - 0.2 * (employment == "unemployed")
    bureau = np.clip(640 + 70 * worth + rng.normal(0, 35, n), 300, 900).astype(np.int32)
    return _World(
        age=age, sex=sex, marital=marital, job=job, employment=employment, housing=housing, property=prop,
        income=income, dependents=(1 + (rng.random(n) < 0.16)).astype(np.int32),
        telephone=_pick(rng, L["telephone"], [0.6, 0.4], n), foreign=_pick(rng, L["foreign_worker"], [0.04, 0.96], n),
        residence=rng.integers(1, 5, n).astype(np.int32), worth=worth, bureau=bureau,
        broker_quality=rng.normal(0, 0.5, n_intermediaries))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_day(config: CreditSyntheticConfig, day: datetime.date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The applications of ``day`` and their outcomes (known later: see ``label_time``)."""
    if not config.start_date <= day < config.end_date:
        raise ValueError(f"{day} is outside the synthetic range {config.start_date}..{config.end_date}")
    w = _world(config.seed, config.n_applicants, config.n_intermediaries)
    rng = np.random.default_rng([config.seed, _TAG_DAY, day.toordinal()])
    L = APPLICATION_LEVELS
    weekday_factor = 0.45 if day.weekday() >= 5 else 1.12
    n = int(rng.poisson(config.applications_per_day * weekday_factor))
    who = rng.integers(0, config.n_applicants, n)
    seconds = np.sort(rng.integers(7 * 3600, 22 * 3600, n))
    start = datetime.datetime.combine(day, datetime.time())
    event_time = np.datetime64(start, "us") + (seconds * 1_000_000).astype("timedelta64[us]")

    surge = config.drifting(day, "broker_surge")
    channel = _pick(rng, ("branch", "online", "broker"), [0.4, 0.4, 0.6 if surge else 0.2], n)
    brokers = np.array([f"BRK-{i:03d}" for i in range(config.n_intermediaries)] + [NEW_INTERMEDIARY], dtype=object)
    broker_quality = np.append(w.broker_quality, -1.2)
    broker_pick = rng.integers(0, config.n_intermediaries, n)
    if surge:  # half the broker business goes through the new intermediary
        broker_pick = np.where(rng.random(n) < 0.5, config.n_intermediaries, broker_pick)
    is_broker = channel == "broker"
    intermediary = np.where(is_broker, brokers[broker_pick], None)

    income = w.income[who] * (0.8 if config.drifting(day, "income_shock") else 1.0)
    worth = w.worth[who]
    purpose = _pick(rng, L["purpose"], [0.23, 0.1, 0.18, 0.28, 0.01, 0.02, 0.05, 0.01, 0.1, 0.02], n)
    amount = income * rng.lognormal(0.2, 0.6, n) * np.where(np.isin(purpose, ["car_new", "business"]), 1.8, 1.0)
    if config.drifting(day, "amount_inflation"):
        amount = amount * 1.25
    amount = np.clip(np.round(amount, -1), 250, 50_000)
    term = _TERMS[np.clip(np.digitize(amount / income, [0.4, 0.7, 1.0, 1.5, 2.0, 2.6, 3.4, 4.5, 6.0])
                          + rng.integers(-1, 2, n), 0, len(_TERMS) - 1)].astype(np.int32)
    burden = amount / term / income  # the instalment's share of monthly income
    rate_band = (np.digitize(burden, [0.04, 0.07, 0.11]) + 1).astype(np.int32)
    checking = np.asarray(L["checking_account"], dtype=object)[
        np.digitize(worth + rng.normal(0, 1, n), [-0.7, 0.3, 0.9])]
    savings = np.asarray(L["savings"], dtype=object)[
        np.clip(np.digitize(worth + rng.normal(0, 1.2, n), [0.2, 0.9, 1.4, 1.9]), 0, 4)]
    history = np.asarray(L["credit_history"], dtype=object)[
        np.digitize(worth + rng.normal(0, 1, n), [-1.9, -1.5, -0.4, 0.9])]
    existing = np.clip(1 + rng.poisson(0.4, n), 1, 4).astype(np.int32)
    debtors = _pick(rng, L["other_debtors"], [0.9, 0.05, 0.05], n)
    plans = _pick(rng, L["other_installment_plans"], [0.8, 0.14, 0.06], n)

    logit = (-2.7 - 0.9 * worth - 0.006 * (w.bureau[who] - 640) + 8.0 * burden + 0.018 * (term - 24)
             + 0.6 * (checking == "negative") + 0.3 * (checking == "below_200") - 0.5 * (checking == "none")
             + 0.8 * np.isin(history, ["no_credits", "all_paid_here"]) + 0.1 * (history == "past_delay")
             - 0.3 * (history == "critical") + 0.3 * (plans != "none") - 0.35 * (debtors == "guarantor")
             - 0.4 * np.where(is_broker, broker_quality[broker_pick], 0.0) + 0.25 * is_broker)
    if config.drifting(day, "income_shock"):
        logit = logit + 0.35
    bad = rng.random(n) < _sigmoid(logit)
    window = config.performance_window_days
    known_after_s = np.where(bad, rng.integers(30 * _DAY_S, window * _DAY_S, n), window * _DAY_S)
    label_time = event_time + (known_after_s * 1_000_000).astype("timedelta64[us]")

    ids = [f"app-{day:%Y%m%d}-{i:05d}" for i in range(n)]
    columns = {
        "application_id": ids,
        "event_time": event_time,
        "applicant_id": [f"A{i:07d}" for i in who],
        "channel": channel,
        "intermediary_id": intermediary,
        "requested_amount": amount,
        "term_months": term,
        "installment_rate_pct": rate_band,
        "monthly_income": income.round(2),
        "bureau_score": w.bureau[who],
        "age_years": w.age[who],
        "residence_since_years": w.residence[who],
        "existing_credits": existing,
        "dependents": w.dependents[who],
        "checking_account": checking,
        "savings": savings,
        "credit_history": history,
        "employment_since": w.employment[who],
        "purpose": purpose,
        "sex": w.sex[who],
        "marital_status": w.marital[who],
        "other_debtors": debtors,
        "property": w.property[who],
        "other_installment_plans": plans,
        "housing": w.housing[who],
        "job": w.job[who],
        "telephone": w.telephone[who],
        "foreign_worker": w.foreign[who],
    }
    apps = pl.DataFrame({k: v.tolist() if getattr(v, "dtype", None) is np.dtype(object) else v for k, v in columns.items()},
                        schema=APPLICATION_SCHEMA)
    outcomes = pl.DataFrame({"application_id": ids, "label": bad.astype(np.int8), "label_time": label_time},
                            schema=OUTCOME_SCHEMA)
    return apps, outcomes


def generate_period(config: CreditSyntheticConfig, first_day: datetime.date | None = None,
                    end_day: datetime.date | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every day of [first_day, end_day) (default: the whole config range), concatenated."""
    first_day, end_day = first_day or config.start_date, end_day or config.end_date
    parts = [generate_day(config, first_day + datetime.timedelta(days=i)) for i in range((end_day - first_day).days)]
    if not parts:
        return pl.DataFrame(schema=APPLICATION_SCHEMA), pl.DataFrame(schema=OUTCOME_SCHEMA)
    return pl.concat([a for a, _ in parts]), pl.concat([o for _, o in parts])
