"""Nightly batch scoring throughput: ours against the obvious MLflow way, side by side, in one run.

Not a test: it measures, on this machine, in one run, on the same registered model (300 trees, 31
leaves, the spec's 32 features) and the same rows (one day of ``features.transaction_features`` in a
temporary DuckDB warehouse, 100k and 1M rows, nullable features ~10% null):

* **ours, read + score**: ``read_day_features`` (DuckDB -> Arrow -> one float64 array per feature,
  nulls as NaN) + ``FastScorer.score_columns`` (the batch kernel in C, chunks of rows over 2
  threads), the scorer from the serving loader (``registry_loader``) built before the clock starts.
* **peer, read + score**: ``con.sql("select * ... where event_date = D").df()`` (the day into pandas)
  + ``mlflow.pyfunc.load_model("models:/<name>/<version>").predict(frame[features].astype("float64"))``
  (the int columns must be cast: the signature says double and pyfunc refuses int64) (schema
  enforcement, then LightGBM's own predict with its default threads), loaded before the clock starts.
* **before / after in the same run**: the same read + score and evaluation with the scorer's
  previous batch path (``batch_kernel="rows"``: the per-row compiled code over the rows) next to the
  default (``batch_kernel="auto"``: the QuickScorer-style batch kernel).
* **model evaluation only**: ``score_batch(matrix)`` against ``pyfunc.predict(frame)`` on rows already
  in memory (and, for reference, ``booster.predict(matrix)`` with 2 threads and with 1).
* **score_day end to end** (ours only): model load from the registry + read + score + decisions +
  replace the day in ``scoring.batch_scores`` (no online-store push).

Medians of repeats; ratios are peer seconds / our seconds. Scores of both sides are compared
(max |difference|) so the two really computed the same thing.

    .venv/bin/python bench/bench_batch_scoring.py [--rows 100000 1000000] [--repeats 5 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DAY = dt.date(2026, 3, 1)
N_TREES = 300
NULLABLE = ("customer_seconds_since_previous", "customer_amount_to_mean_30d", "customer_amount_mean_1h")


def _features(n: int, seed: int) -> np.ndarray:
    from mlp_platform.features.spec import default_spec

    spec = default_spec()
    names = spec.feature_names
    rng = np.random.default_rng(seed)
    x = rng.lognormal(2.0, 1.2, size=(n, len(names)))
    ints = [i for i, f in enumerate(spec.features) if f.dtype == "int"]
    x[:, ints] = rng.poisson(2.0, size=(n, len(ints)))
    for name in NULLABLE:
        x[rng.random(n) < 0.1, names.index(name)] = np.nan
    return x


def register_model(settings) -> str:
    import lightgbm as lgb

    from mlp_platform.features.spec import default_spec
    from mlp_platform.registry.mlflow_registry import ModelRegistry
    from mlp_platform.training.splits import TimeSplit
    from mlp_platform.training.trainer import TrainedModel

    names = default_spec().feature_names
    x = _features(40_000, 1)
    logit = (0.02 * x[:, names.index("amount")] + 0.4 * x[:, 0] - 0.05 * np.nan_to_num(x[:, 18], nan=20.0)
             + 0.3 * x[:, 20] - 3.0)
    y = (np.random.default_rng(2).random(len(x)) < 1 / (1 + np.exp(-logit))).astype(int)
    params = {"objective": "binary", "num_leaves": 31, "learning_rate": 0.05, "verbose": -1, "num_threads": 2,
              "deterministic": True, "force_row_wise": True, "seed": 1}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=names), num_boost_round=N_TREES)
    split = TimeSplit((DAY, DAY), (DAY, DAY), (DAY, DAY), 0)
    trained = TrainedModel(booster=booster, feature_names=names, params=params, best_iteration=N_TREES,
                           split=split, metrics={}, data_fingerprint={
                               "rows": len(x), "first_day": "2026-01-01", "last_day": "2026-02-01",
                               "content_sha256": "0" * 64})
    return ModelRegistry.from_settings(settings).log_training(
        trained, spec_hash=default_spec().spec_hash, code_version="bench_batch_scoring",
        operating_threshold=0.3).version


def write_day(settings, n: int) -> None:
    """One day of n rows in features.transaction_features (replacing whatever the day held)."""
    import duckdb
    import polars as pl

    from mlp_platform.features.spec import default_spec

    spec = default_spec()
    x = _features(n, 3)
    rng = np.random.default_rng(4)
    start = np.datetime64(dt.datetime.combine(DAY, dt.time()), "us")
    frame = pl.DataFrame({
        "transaction_id": pl.int_range(0, n, eager=True).cast(pl.String).str.zfill(9),
        "event_time": start + np.sort(rng.integers(0, 86_400_000_000, n)).astype("timedelta64[us]"),
        "event_date": np.full(n, np.datetime64(DAY, "D")),
        "customer_id": rng.integers(0, 200_000, n).astype(str),
        "merchant_id": rng.integers(0, 20_000, n).astype(str),
        "channel": np.full(n, "ecom"), "country": np.full(n, "DE"), "merchant_category": np.full(n, "5411"),
        "currency": np.full(n, "EUR"),
        **{name: x[:, j] for j, name in enumerate(spec.feature_names)},
        "feature_spec_hash": np.full(n, spec.spec_hash),
    }).with_columns(
        [pl.col(f.name).cast(pl.Int64) for f in spec.features if f.dtype == "int"]
    ).with_columns([pl.col(name).fill_nan(None) for name in NULLABLE])
    arrow = frame.to_arrow()  # noqa: F841 (read by name in SQL)
    with duckdb.connect(str(settings.duckdb_path)) as con:
        con.execute("create schema if not exists features")
        con.execute("drop table if exists features.transaction_features")
        con.execute("create table features.transaction_features as select * from arrow")


def bench_decision_load(settings, n: int) -> None:
    """Informational (no peer): load n decision records written by DecisionLog.append into the
    warehouse (two worker directories), then an incremental load of 1 % more."""
    from mlp_platform.batch.decisions import load_decisions
    from mlp_platform.features.spec import default_spec
    from mlp_platform.serving.decision_log import DecisionLog

    names = default_spec().feature_names
    root = settings.data_dir / "bench_decisions"

    def record(i: int, worker: int) -> dict:
        return {"decision_id": f"w{worker}-{i:08d}", "kind": "decision", "time": "2026-03-02T01:00:00+00:00",
                "transaction_id": f"T{worker}{i:09d}", "event_time": f"2026-03-01T{i % 24:02d}:00:00",
                "customer_hash": "c" * 32, "merchant_hash": "m" * 32, "device_hash": "d" * 32,
                "request": {"amount": 10.0 + i % 100, "currency": "EUR", "channel": "ecom", "country": "DE",
                            "merchant_category": "5411"},
                "arm": "champion", "model_version": "1", "model_sha256": "a" * 64, "routing_revision": 1,
                "features": {f: float((i + j) % 13) for j, f in enumerate(names)}, "fallbacks": [],
                "defaults_applied": [], "degraded": False, "score": (i % 1000) / 1000,
                "thresholds": {"review": 0.3, "decline": 0.9}, "policy_version": "p/r=0.3/d=0.9",
                "decision": "approve", "reasons": []}

    def write(lo: int, hi: int) -> None:
        for worker in (1, 2):
            with DecisionLog(root / f"worker-{worker}", fsync=False) as log:
                log.append_many([record(i, worker) for i in range(lo, hi)], trusted=True)

    write(0, n // 2)
    t0 = time.perf_counter()
    first = load_decisions(settings, root)
    full = time.perf_counter() - t0
    write(n // 2, n // 2 + n // 200)
    t0 = time.perf_counter()
    more = load_decisions(settings, root)
    incremental = time.perf_counter() - t0
    print(f"decision log load: {first.decisions:,} records in {full:.2f} s ({first.decisions / full:,.0f} records/s, "
          f"chain verified); incremental {more.decisions:,} more in {incremental:.2f} s")


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, nargs="+", default=[5, 3])
    parser.add_argument("--decisions", type=int, default=200_000, help="decision records to load (0: skip)")
    args = parser.parse_args()
    repeats = dict(zip(args.rows, args.repeats + [args.repeats[-1]] * len(args.rows), strict=False))

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    os.environ["MLP_DATA_DIR"] = str(tmp / "data")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLP_WAREHOUSE", "MLP_ENV", "MLP_DECIDERS_DIR"):
        os.environ.pop(var, None)
    os.environ["MLP_FAST_SCORER_CACHE"] = str(tmp / "cc")

    import duckdb
    import lightgbm as lgb
    import mlflow

    from mlp_platform.batch.scoring import read_day_features, score_day
    from mlp_platform.data.warehouse import DuckDBSession
    from mlp_platform.features.spec import default_spec
    from mlp_platform.registry.mlflow_registry import ModelRegistry
    from mlp_platform.runtime.loading import registry_loader
    from mlp_platform.settings import load_settings

    settings = load_settings()
    settings.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    names = default_spec().feature_names
    print(f"date {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; nproc {os.cpu_count()}; {platform.platform()}; "
          f"python {platform.python_version()}; lightgbm {lgb.__version__}; mlflow {mlflow.__version__}; "
          f"duckdb {duckdb.__version__}")
    print(f"load average at start: {os.getloadavg()}")
    version = register_model(settings)
    registry = ModelRegistry.from_settings(settings)
    t0 = time.perf_counter()
    ours = registry_loader(settings)(version)
    load_ours = time.perf_counter() - t0
    uri = f"models:/{registry.model_name}/{version}"
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    t0 = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(uri)
    load_peer = time.perf_counter() - t0
    booster = lgb.Booster(model_file=str(registry.model_dir(version) / "model.lgb"))
    from mlp_platform.runtime.fast_scorer import FastScorer

    rows_scorer = FastScorer(ours.scorer.booster, ours.scorer.feature_names, batch_kernel="rows")
    print(f"batch kernel: {ours.scorer.info.get('batch_kernel')} (simd {ours.scorer.info.get('batch_simd')}, "
          f"block {ours.scorer.info.get('batch_block_rows')} rows); before: {rows_scorer.info['batch_kernel']}")
    print(f"model version {version}: {booster.num_trees()} trees; scorer backend {ours.scorer.backend}; load: ours "
          f"{load_ours:.2f} s (serving loader, incl. compile/verify), pyfunc {load_peer:.2f} s")
    print()
    print(f"{'rows':>9} {'measure':<44} {'ours s':>8} {'peer s':>8} {'ratio':>7} {'ours rows/s':>12}")
    for n in args.rows:
        write_day(settings, n)
        reps = repeats[n]

        where = f"from features.transaction_features where event_date = '{DAY}'"
        needed = f"select transaction_id, customer_id, merchant_id, event_time, {', '.join(names)} {where}"

        def ours_read():
            with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
                return read_day_features(DuckDBSession(con), DAY, names)[1]

        def ours_read_score():
            return ours.scorer.score_columns(ours_read(), threads=2)

        def rows_read_score():
            return rows_scorer.score_columns(ours_read(), threads=2)

        def peer_read(sql=f"select * {where}"):
            with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
                return con.sql(sql).df()

        def peer_read_score(sql=f"select * {where}"):
            return pyfunc.predict(peer_read(sql)[names].astype("float64"))

        # each side twice, alternating, so a drift of the machine's load hits both; medians of all repeats
        a_times, b_times, c_times, d_times = [], [], [], []
        for _ in range(2):
            _, t, a_scores = timed(ours_read_score, reps)
            a_times += t
            _, t, d_scores = timed(rows_read_score, reps)
            d_times += t
            _, t, b_scores = timed(peer_read_score, reps)
            b_times += t
            _, t, _ = timed(lambda needed=needed: peer_read_score(needed), reps)
            c_times += t
        a, b, c, d = (statistics.median(v) for v in (a_times, b_times, c_times, d_times))
        diff = float(np.max(np.abs(np.asarray(a_scores) - np.asarray(b_scores))))
        diff_rows = float(np.max(np.abs(np.asarray(d_scores) - np.asarray(b_scores))))
        print(f"{n:>9} {'read + score (peer: select * to pandas)':<44} {a:8.3f} {b:8.3f} {b / a:6.1f}x {n / a:12,.0f}")
        print(f"{n:>9} {'read + score (peer: needed columns only)':<44} {a:8.3f} {c:8.3f} {c / a:6.1f}x")
        print(f"{n:>9} {'before: read + score, per-row code (vs *)':<44} {d:8.3f} {b:8.3f} {b / d:6.1f}x {n / d:12,.0f}")
        ra, _, cols = timed(ours_read, reps)
        rb, _, frame = timed(peer_read, reps)
        rc, _, _ = timed(lambda needed=needed: peer_read(needed), reps)
        print(f"{n:>9} {'read only (ours vs select *)':<44} {ra:8.3f} {rb:8.3f} {rb / ra:6.1f}x {n / ra:12,.0f}")
        print(f"{n:>9} {'read only (ours vs needed columns)':<44} {ra:8.3f} {rc:8.3f} {rc / ra:6.1f}x")
        frame = frame[names].astype("float64")
        x = frame.to_numpy()
        ea, _, _ = timed(lambda cols=cols: ours.scorer.score_columns(cols, threads=2), reps)
        eb, _, _ = timed(lambda frame=frame: pyfunc.predict(frame), reps)
        print(f"{n:>9} {'model evaluation only (vs pyfunc.predict)':<44} {ea:8.3f} {eb:8.3f} {eb / ea:6.1f}x "
              f"{n / ea:12,.0f}")
        er, _, _ = timed(lambda cols=cols: rows_scorer.score_columns(cols, threads=2), reps)
        print(f"{n:>9} {'before: evaluation, per-row code (vs pyfunc)':<44} {er:8.3f} {eb:8.3f} {eb / er:6.1f}x "
              f"{n / er:12,.0f}")
        l2, _, _ = timed(lambda x=x: booster.predict(x, num_threads=2), reps)
        print(f"{n:>9} {'evaluation, 2 threads: vs booster.predict':<44} {ea:8.3f} {l2:8.3f} {l2 / ea:6.1f}x")
        e1, _, _ = timed(lambda cols=cols: ours.scorer.score_columns(cols, threads=1), reps)
        e1r, _, _ = timed(lambda cols=cols: rows_scorer.score_columns(cols, threads=1), reps)
        l1, _, _ = timed(lambda x=x: booster.predict(x, num_threads=1), max(1, reps // 2))
        print(f"{n:>9} {'evaluation, 1 thread: vs booster.predict':<44} {e1:8.3f} {l1:8.3f} {l1 / e1:6.1f}x")
        print(f"{n:>9} {'before: 1 thread, per-row code vs booster':<44} {e1r:8.3f} {l1:8.3f} {l1 / e1r:6.1f}x")
        sd, _, res = timed(lambda: score_day(settings, version, DAY, push_to_store=False), max(1, reps // 2))
        print(f"{n:>9} {'score_day end to end (ours, no push)':<44} {sd:8.3f} {'':>8} {'':>7} {n / sd:12,.0f}   "
              f"{ {k: round(v, 3) for k, v in res.seconds.items()} }")
        print(f"{'':>9} max |ours - pyfunc| = {diff:.3g} (per-row code: {diff_rows:.3g}); read+score repeats ours {[round(t, 3) for t in a_times]} "
              f"peer {[round(t, 3) for t in b_times]}; load average {os.getloadavg()}")
    if args.decisions:
        bench_decision_load(settings, args.decisions)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
