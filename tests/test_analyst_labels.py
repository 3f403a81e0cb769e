"""Analysts' outcomes become labels, point in time: resolved cases are copied into raw.analyst_labels
(idempotently), dbt's stg_labels reads them beside the chargebacks with the time each was recorded,
and the training set a retrain builds uses an outcome only where it was known by the transaction's
label cut-off (event time + maturity). Real ingest, real dbt, a real SQLite review database."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from featurelib import run_dbt

from mlp_platform.data.ingest import ingest_days
from mlp_platform.data.warehouse import DuckDBWarehouse
from mlp_platform.deciders.declaration import load_decider
from mlp_platform.review.cases import CaseStore, case_from_decision
from mlp_platform.review.outcomes import export_analyst_labels
from mlp_platform.settings import load_settings


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analyst_labels")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"MLP_DATA_DIR": str(tmp / "data"), "MLP_SYNTH_CUSTOMERS": "120",
                           "MLP_SYNTH_MERCHANTS": "40", "MLP_SYNTH_DAYS": "35"}.items():
            mp.setenv(key, value)
        for var in ("MLP_SOURCE", "MLP_ENV", "MLP_WAREHOUSE", "MLFLOW_TRACKING_URI", "MLP_SYNTH_DRIFT_START"):
            mp.delenv(var, raising=False)
        settings = load_settings()
        first, end = settings.source_days()
        warehouse = DuckDBWarehouse(settings.duckdb_path)
        ingest_days(settings, warehouse, first, end)
        run_dbt(settings.duckdb_path, tmp / "dbt", "build")
        yield {"settings": settings, "warehouse": warehouse, "tmp": tmp,
               "store": CaseStore.from_url(f"sqlite:///{tmp / 'cases.db'}")}


def _resolve(world, transaction: dict, outcome: str, after: dt.timedelta, n: int) -> None:
    store, fraud = world["store"], load_decider(world["settings"].deciders_dir)
    event_time = transaction["event_time"].replace(tzinfo=dt.UTC)
    record = {"decision_id": f"case-{n}", "kind": "decision", "transaction_id": transaction["transaction_id"],
              "time": event_time.isoformat(), "decision": "review", "score": 0.4, "model_version": "1"}
    store.open_many([case_from_decision(record, fraud.name)])
    store.claim(f"case-{n}", "ann", [fraud.name], at=event_time + after - dt.timedelta(minutes=5))
    store.resolve(f"case-{n}", "ann", [fraud.name], fraud.review, outcome=outcome,
                  policy_actions=fraud.policy.actions, at=event_time + after)


def _training_labels(world, ids: list[str]) -> dict[str, int]:
    run_dbt(world["settings"].duckdb_path, world["tmp"] / "dbt", "run", "--select", "training_set")
    frame = world["warehouse"].query("select transaction_id, label from training.training_set")
    return dict(frame.filter(pl.col("transaction_id").is_in(ids)).iter_rows())


def test_a_retrain_uses_analyst_outcomes_known_by_the_cut_off_and_no_later_one(world):
    warehouse = world["warehouse"]
    maturity = load_decider(world["settings"].deciders_dir).labels.maturity_days
    txns = warehouse.query("""
        select t.transaction_id, t.event_time from staging.stg_transactions as t
        where t.transaction_id not in (select transaction_id from raw.labels where label = 1)
          and t.event_time <= (select max(event_time) from staging.stg_transactions) - interval 20 day
        order by t.event_time limit 3""").to_dicts()
    chargeback = warehouse.query("""
        select l.transaction_id, t.event_time from raw.labels as l
        join staging.stg_transactions as t using (transaction_id)
        where l.label = 1 and l.label_time <= t.event_time + interval 14 day
          and t.event_time <= (select max(event_time) from staging.stg_transactions) - interval 20 day
        order by t.event_time limit 1""").to_dicts()[0]
    early, late, cleared = txns
    ids = [early["transaction_id"], late["transaction_id"], cleared["transaction_id"], chargeback["transaction_id"]]
    assert _training_labels(world, ids) == {ids[0]: 0, ids[1]: 0, ids[2]: 0, ids[3]: 1}

    _resolve(world, early, "fraud", dt.timedelta(days=2), 1)  # known 2 days after: before its cut-off
    _resolve(world, late, "fraud", dt.timedelta(days=maturity + 6), 2)  # recorded after its cut-off
    _resolve(world, cleared, "not_fraud", dt.timedelta(hours=3), 3)
    _resolve(world, chargeback, "not_fraud", dt.timedelta(hours=3), 4)
    result = export_analyst_labels(world["store"], warehouse)
    assert (result.read, result.exported, result.by_decider) == (4, 4, {"fraud": 4})
    again = export_analyst_labels(world["store"], warehouse)
    assert again.exported == 0 and warehouse.query("select count(*) as n from raw.analyst_labels")["n"][0] == 4

    staged = warehouse.query("select transaction_id, label, label_time, label_source from staging.stg_labels "
                             "where label_source = 'analyst' order by label_time")
    assert staged.height == 4
    assert staged.filter(pl.col("transaction_id") == ids[0])["label_time"][0] == \
        early["event_time"] + dt.timedelta(days=2)  # the time the analyst recorded it, not the decision's
    # the retrain's training set: the early outcome is used, the one recorded after the cut-off is not
    # (a label_time of the decision instead of the resolution would make ids[1] a fraud); a "not fraud"
    # does not undo a chargeback known by the cut-off
    assert _training_labels(world, ids) == {ids[0]: 1, ids[1]: 0, ids[2]: 0, ids[3]: 1}


def test_an_outcome_for_a_transaction_not_ingested_waits_for_it(world):
    """A case of live traffic resolved before its transaction reached the warehouse: exported, but
    stg_labels (and so every dbt test on it) only reads it once the transaction is there."""
    store, warehouse = world["store"], world["warehouse"]
    fraud = load_decider(world["settings"].deciders_dir)
    now = dt.datetime.now(dt.UTC)
    record = {"decision_id": "case-live", "kind": "decision", "transaction_id": "T-not-ingested",
              "time": now.isoformat(), "decision": "review", "score": 0.5, "model_version": "1"}
    store.open_many([case_from_decision(record, fraud.name)])
    store.claim("case-live", "ann", [fraud.name])
    store.resolve("case-live", "ann", [fraud.name], fraud.review, outcome="fraud", policy_actions=fraud.policy.actions)
    assert export_analyst_labels(store, warehouse).exported == 1
    assert warehouse.query("select count(*) as n from staging.stg_labels "
                           "where transaction_id = 'T-not-ingested'")["n"][0] == 0
    run_dbt(world["settings"].duckdb_path, world["tmp"] / "dbt", "test", "--select", "stg_labels")


def test_the_dagster_asset_copies_the_outcomes(world):
    """raw_analyst_labels materialised for real (its resources as the code location builds them)."""
    import dagster as dg

    from assets.resources import ReviewDatabaseResource, WarehouseResource
    from assets.review import build_review_assets

    store, fraud = world["store"], load_decider(world["settings"].deciders_dir)
    record = {"decision_id": "case-asset", "kind": "decision", "transaction_id": "T-asset",
              "time": dt.datetime.now(dt.UTC).isoformat(), "decision": "review", "score": 0.5, "model_version": "1"}
    store.open_many([case_from_decision(record, fraud.name)])
    store.claim("case-asset", "bob", [fraud.name])
    store.resolve("case-asset", "bob", [fraud.name], fraud.review, outcome="not_fraud",
                  policy_actions=fraud.policy.actions)
    assets, _, _ = build_review_assets(world["settings"])
    result = dg.materialize(assets, resources={
        "review_database": ReviewDatabaseResource(url=str(store.engine.url)),
        "warehouse": WarehouseResource(kind="duckdb", duckdb_path=str(world["settings"].duckdb_path))})
    assert result.success
    metadata = result.asset_materializations_for_node("raw_analyst_labels")[0].metadata
    assert metadata["exported"].value >= 1
    row = world["warehouse"].query("select reviewer, outcome, label from raw.analyst_labels "
                                   "where case_id = 'case-asset'").to_dicts()
    assert row == [{"reviewer": "bob", "outcome": "not_fraud", "label": 0}]
