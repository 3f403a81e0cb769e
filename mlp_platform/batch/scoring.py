"""Nightly batch scoring: one day of transactions scored by one named model version, written to the
warehouse idempotently, with per-customer batch risk pushed to the online store.

:func:`score_day` reads the day's rows of ``features.transaction_features`` (straight to Arrow,
one float64 array per feature, nulls as NaN: zero-copy from DuckDB), scores them through the serving code path (the
version's registered artefact loaded by :func:`mlp_platform.serving.service.registry_loader`: the same
schema check, the same compiled trees, the same artefact digest the online service logs), evaluated
over the whole matrix in C (:meth:`FastScorer.score_batch`, rows split over ``threads`` threads), and
applies the decider's decision policy as the online service does (:meth:`PolicyDecl.thresholds` /
:meth:`PolicyDecl.decide`, vectorised; bounds from the declaration and the version's
``operating_threshold`` tag; batch features are complete, so there is no degraded decision). The day's rows in ``scoring.batch_scores``
are replaced in one transaction (delete + insert): re-running or backfilling a day leaves exactly the
last run's rows.

:func:`push_customer_batch_risk` aggregates the day per customer (the score of the customer's last
transaction, the highest score, the count of review/decline decisions) from ``scoring.batch_scores``
and pushes it to the online store as of the end of the day (midnight after it: readable by
transactions of the next day, never by those of the day itself), view
:data:`mlp_platform.serving.batch_push.CUSTOMER_BATCH_RISK`.

Warehouse: the one the settings select (DuckDB locally, Snowflake in production), through
:mod:`mlp_platform.data.warehouse`'s sessions, with SQL both engines run. Never uses "latest": the
caller names the version.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from mlp_platform.data.warehouse import Session, warehouse_for
from mlp_platform.deciders.declaration import DeciderDeclaration, PolicyDecl, load_decider

FEATURES_TABLE = "features.transaction_features"
SCORES_SCHEMA = "scoring"
SCORES_TABLE = f"{SCORES_SCHEMA}.batch_scores"
DECISIONS = ("approve", "review", "decline")  # the fraud decider's actions (replay's decision matrix)

_SCORES_DDL = f"""
create table if not exists {SCORES_TABLE} (
    transaction_id varchar not null,
    customer_id varchar,
    merchant_id varchar,
    event_time timestamp,
    day date not null,
    score double not null,
    decision varchar not null,
    model_version varchar not null,
    model_sha256 varchar not null,
    scored_at timestamp not null
)"""


class BatchScoringError(ValueError):
    """Batch scoring cannot run as asked (no features for the day, unknown version, wrong warehouse)."""


@dataclass(frozen=True)
class BatchScoringResult:
    """What scoring one day produced (for the asset's metadata)."""

    day: dt.date
    model_version: str
    model_sha256: str
    rows: int
    decisions: dict[str, int]
    approval_rate: float
    score_quantiles: dict[str, float]
    thresholds: dict[str, float]
    scorer_backend: str
    scored_at: dt.datetime
    seconds: dict[str, float] = field(default_factory=dict)
    customers_pushed: int = 0
    push: dict[str, Any] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(), "model_version": self.model_version, "model_sha256": self.model_sha256,
            "rows": self.rows, "decisions": dict(self.decisions), "approval_rate": self.approval_rate,
            "score_quantiles": dict(self.score_quantiles), "thresholds": dict(self.thresholds),
            "scorer_backend": self.scorer_backend, "scored_at": self.scored_at.isoformat(),
            "seconds": dict(self.seconds), "customers_pushed": self.customers_pushed,
        }


# ------------------------------------------------------------------------------------- decision policy


def decision_thresholds(operating_threshold: float, policy: PolicyDecl) -> dict[str, float]:
    """The decider's band bounds for a version: the code the online service runs
    (:meth:`PolicyDecl.thresholds`, through :meth:`ScoringService.thresholds`)."""
    return policy.thresholds(operating_threshold)


def decide_many(scores: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """Action index per score into the policy's actions (0: the default action, k: the k-th band),
    the rule of :meth:`PolicyDecl.decide` vectorised: the bounds never decrease from one band to the
    next, so the number of bounds a score reaches is its band."""
    scores = np.asarray(scores, dtype=np.float64)
    bounds = list(thresholds.values())
    if bounds != sorted(bounds):
        raise ValueError(f"band bounds {thresholds} decrease from one band to the next")
    index = np.zeros(len(scores), dtype=np.int8)
    for bound in bounds:
        index += scores >= bound
    return index


# ------------------------------------------------------------------------------------------- reading


KEY_COLUMNS = ("transaction_id", "customer_id", "merchant_id", "event_time")


def read_day_features(session: Session, day: dt.date, feature_names: list[str]):
    """(the rows' keys: an Arrow table of KEY_COLUMNS, one float64 array per feature in
    ``feature_names`` order, null as NaN) of the day's rows of features.transaction_features,
    through Arrow (zero-copy to numpy: the nulls are replaced by NaN in SQL, so no matrix is built)."""
    if not session.table_exists(FEATURES_TABLE):
        raise BatchScoringError(f"no features for {day}: {FEATURES_TABLE} does not exist (materialise the "
                                f"feature tables first)")
    cols = ", ".join(f"coalesce(cast({n} as double), cast('NaN' as double)) as {n}" for n in feature_names)
    table = session.arrow(f"select {', '.join(KEY_COLUMNS)}, {cols} from {FEATURES_TABLE} "
                          f"where event_date = ?", [day])
    if table.num_rows == 0:
        raise BatchScoringError(f"no features for {day}: {FEATURES_TABLE} has no rows with event_date {day} "
                                f"(materialise that day's feature partition first)")
    table = table.combine_chunks()
    columns = [table.column(n).chunk(0).to_numpy(zero_copy_only=True) for n in feature_names]
    return table.select(list(KEY_COLUMNS)), columns


def _spec_hashes(session: Session, day: dt.date) -> set[str]:
    rows = session.fetchall(f"select distinct feature_spec_hash from {FEATURES_TABLE} where event_date = ?", [day])
    return {r[0] for r in rows}


# ------------------------------------------------------------------------------------------- scoring


def _load_version(settings, version: str, decider: DeciderDeclaration):
    from mlflow.exceptions import MlflowException

    from mlp_platform.registry.mlflow_registry import ModelRegistry
    from mlp_platform.runtime.loading import registry_loader

    if not isinstance(version, str) or not version.strip() or version.strip().lower() == "latest":
        raise BatchScoringError(f"batch scoring needs an explicit registered model version, got {version!r}")
    registry = ModelRegistry.from_settings(settings, decider)
    try:
        registry.client.get_model_version(registry.model_name, version)
    except MlflowException as exc:
        raise BatchScoringError(f"model version {version!r} of {registry.model_name!r} is not registered in "
                                f"{registry.tracking_uri}") from exc
    return registry_loader(settings, decider=decider)(version)


def score_day(settings, version: str, day: dt.date, *, threads: int | None = None, push_to_store: bool = True,
              store_url: str | None = None, decider: DeciderDeclaration | None = None) -> BatchScoringResult:
    """Score every transaction of ``day`` with model ``version``; replace the day in scoring.batch_scores;
    push the customers' batch risk to the online store (``store_url``: default the service's,
    ``MLP_FEATURE_STORE_URL`` or the embedded store under the data directory) unless ``push_to_store``
    is False. Raises :class:`BatchScoringError` for an unknown version or a day without features."""

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    warehouse = warehouse_for(settings)
    decider = decider or load_decider(settings.deciders_dir)
    model = _load_version(settings, version, decider)
    timings["load_model"] = time.perf_counter() - t0
    spec = decider.spec
    actions = decider.policy.actions
    if model.feature_names != spec.feature_names:
        raise BatchScoringError(f"version {version} expects other features than the feature spec")

    # One session and one transaction from the read to the write: the rows read are the rows
    # written, and a concurrent rebuild of the day cannot slip in between.
    with warehouse.session() as session:
        session.execute(f"create schema if not exists {SCORES_SCHEMA}")
        session.execute(_SCORES_DDL)
        with session.transaction():
            t0 = time.perf_counter()
            keys, columns = read_day_features(session, day, spec.feature_names)
            hashes = _spec_hashes(session, day)
            if hashes != {spec.spec_hash}:
                raise BatchScoringError(f"features of {day} were computed under feature spec {sorted(hashes)}, "
                                        f"not the current {spec.spec_hash}: rebuild the day's features")
            timings["read_features"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            threads = threads or min(2, os.cpu_count() or 1)
            scorer = model.scorer
            if hasattr(scorer, "score_columns"):
                scores = scorer.score_columns(columns, threads=threads)
            else:
                scores = scorer.score_matrix(np.column_stack(columns))
            thresholds = decision_thresholds(model.operating_threshold, decider.policy)
            decision_index = decide_many(scores, thresholds)
            timings["score"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            scored_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            n = len(scores)
            frame = pl.from_arrow(keys).with_columns(
                pl.col("event_time").cast(pl.Datetime("us")),
                pl.lit(day, dtype=pl.Date).alias("day"),
                pl.Series("score", scores, dtype=pl.Float64),
                pl.Series("decision", actions, dtype=pl.String).gather(decision_index.astype(np.int64)),
                pl.lit(model.version, dtype=pl.String).alias("model_version"),
                pl.lit(model.artifact_sha256, dtype=pl.String).alias("model_sha256"),
                pl.lit(scored_at, dtype=pl.Datetime("us")).alias("scored_at"))
            session.execute(f"delete from {SCORES_TABLE} where day = ?", [day])
            session.insert(SCORES_TABLE, frame)
            written = session.fetchall(f"select count(*) from {SCORES_TABLE} where day = ?", [day])[0][0]
            if written != n:
                raise BatchScoringError(f"{day}: wrote {written} scores for {n} rows read (rolled back)")
    timings["write"] = time.perf_counter() - t0

    counts = np.bincount(decision_index, minlength=len(actions))
    quantiles = np.quantile(scores, [0.5, 0.9, 0.99])
    result = BatchScoringResult(
        day=day, model_version=model.version, model_sha256=model.artifact_sha256, rows=n,
        decisions={name: int(c) for name, c in zip(actions, counts, strict=True)},
        approval_rate=float(counts[0] / n),
        score_quantiles={"p50": float(quantiles[0]), "p90": float(quantiles[1]), "p99": float(quantiles[2]),
                         "max": float(scores.max()), "mean": float(scores.mean())},
        thresholds=dict(thresholds), scorer_backend=getattr(scorer, "backend", type(scorer).__name__),
        scored_at=scored_at, seconds=timings)
    if push_to_store:
        t0 = time.perf_counter()
        push = push_customer_batch_risk(settings, day, store_url=store_url)
        timings["push"] = time.perf_counter() - t0
        result = dataclasses.replace(result, customers_pushed=push["rows"], push=push, seconds=timings)
    return result


# ------------------------------------------------------------------------------ customer batch risk


def default_store_url(settings) -> str:
    """The online store the service uses (``MLP_FEATURE_STORE_URL``, default the embedded store)."""
    return settings.feature_store_url


def customer_batch_risk(settings, day: dt.date) -> list[dict[str, Any]]:
    """Per customer of ``day`` in scoring.batch_scores: the score of the last transaction (by event
    time, then transaction_id), the highest score, and how many transactions were review/decline."""
    # the last transaction by (event time, transaction id); qualify and count_if: both engines
    rows = warehouse_for(settings).query(f"""
        select customer_id, score as batch_risk_score_last,
               max(score) over (partition by customer_id) as batch_risk_score_max,
               count_if(decision in ('review', 'decline')) over (partition by customer_id)
                   as batch_high_risk_count
        from {SCORES_TABLE}
        where day = ? and customer_id is not null
        qualify row_number() over (partition by customer_id order by event_time desc, transaction_id desc) = 1
        order by customer_id""", [day]).rows()
    return [{"customer_id": r[0], "batch_risk_score_last": r[1], "batch_risk_score_max": r[2],
             "batch_high_risk_count": r[3]} for r in rows]


def push_customer_batch_risk(settings, day: dt.date, store_url: str | None = None) -> dict[str, Any]:
    """Push :func:`customer_batch_risk` of ``day`` to the online store as of the end of the day."""
    from mlp_platform.serving.batch_push import CUSTOMER_BATCH_RISK, push_entity_values

    rows = customer_batch_risk(settings, day)
    as_of = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    return push_entity_values(store_url or default_store_url(settings), settings.batch_snapshot_dir,
                              CUSTOMER_BATCH_RISK, rows, as_of)


# ------------------------------------------------------------------------------ application deciders

def score_applications_day(settings, decider: DeciderDeclaration, version: str, day: dt.date,
                           drift_start: dt.date | None = None) -> dict[str, Any]:
    """Score every application of ``day`` (the synthetic source) with ``version`` of an application
    decider, its declared policy's action per application, through the registered artefact's
    serving scorer; replace the day in ``scoring.<decider>_batch_scores`` of the warehouse
    (idempotent: a re-run leaves the same rows). Returns what the asset shows."""
    from mlp_platform.features.request import feature_frame
    from mlp_platform.monitoring.applications import synthetic_window
    from mlp_platform.registry.roles import registry_for
    from mlp_platform.runtime.loading import serving_scorer

    registry = registry_for(settings, decider)
    names = decider.spec.feature_names
    key = decider.entity.key
    scorer = serving_scorer(registry.model_dir(version), names, version=version)
    apps, _ = synthetic_window(settings, decider, day, 1, drift_start)
    x = feature_frame(decider.spec, apps).to_numpy().astype(np.float64)
    scores = np.asarray(scorer.score_matrix(x), dtype=np.float64) if apps.height else np.zeros(0)
    policy = decider.policy
    thresholds = policy.thresholds(float(registry.version_tags(version).get("operating_threshold", "0.5")))
    actions = np.asarray(policy.actions, dtype=object)[decide_many(scores, thresholds)] if apps.height else []
    frame = pl.DataFrame({
        key: apps[key], "event_date": pl.Series([day] * apps.height, dtype=pl.Date),
        "score": scores, "decision": pl.Series(list(actions), dtype=pl.String),
        "model_version": pl.Series([str(version)] * apps.height, dtype=pl.String),
        "policy_version": pl.Series([policy.tag(thresholds)] * apps.height, dtype=pl.String)})
    table = f"scoring.{decider.name}_batch_scores"
    warehouse = warehouse_for(settings)
    warehouse.replace_rows(table, frame, "event_date = ?", [day])
    total = warehouse.query(f"select count(*) as n from {table} where event_date = ?", [day])["n"][0]
    mix = {a: int((frame["decision"] == a).sum()) for a in policy.actions}
    return {"table": table, "day": str(day), "rows": int(total), "model_version": str(version),
            "decisions": mix, "mean_score": float(scores.mean()) if scores.size else None}
