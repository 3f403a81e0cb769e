"""Benchmark: single-row scoring latency of a ~300-tree LightGBM model, the platform's paths and peers.

Not a test: it measures, on this machine, what one online scoring call costs in-process, side by
side in one run, on the same model and the same rows:

* ``Booster.predict`` on a one-row numpy matrix, ``num_threads=1`` (what ``Scorer.score_row`` does);
* ``Booster.predict`` on a one-row pandas DataFrame built from the row (the naive service code);
* ``FastScorer.score``, compiled trees (the platform's fast path) and with ``backend="lightgbm"``
  (LightGBM's C API single-row fast path, ``LGBM_BoosterPredictForMatSingleRowFast``, the fallback);
* ``FastScorer.contributions`` (TreeSHAP reason codes, computed for review/decline only) and
  ``Booster.predict(pred_contrib=True)`` for comparison;
* peers, when ``--peer-python`` names an interpreter that has them (a throw-away venv: ``pip install
  lightgbm treelite tl2cgen lleaves 'llvmlite<0.44'``): Treelite + TL2cgen compiled C, and lleaves
  (LLVM-compiled trees), each through its own Python API and through a direct ``ctypes`` call of the
  compiled function with preallocated buffers (the fastest way to call it; TL2cgen's input is
  pre-encoded outside the timed call). They run in a child process, which also times
  ``FastScorer.score`` again as a same-process control.

Every path's scores are compared with ``booster.predict`` on the whole row pool (max |diff|).

    .venv/bin/python bench/bench_scorer.py [--model-dir MLFLOW_MODEL_DIR | --model-file model.txt]
        [--calls 20000] [--train-rows 200000] [--peer-python /tmp/peervenv/bin/python] [--json out.json]

Without a model it trains one: 300 trees, 31 leaves, 32 features, on random transaction-like data
(amounts, counts with many zeros, ratios with missing values, 2% positives). Per-call latency is
``perf_counter_ns`` around each call, after a warm-up, cycling over 2,000 distinct rows so that the
branch predictor cannot learn them; the calls are split into rounds interleaved across the paths so
that machine noise hits all of them alike. The machine is shared and noisy: the load average is
printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_FEATURES = 32


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Transaction-like features: amounts, counts (many zeros), ratios with missing values, noise."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, N_FEATURES))
    x[:, 0:8] = rng.lognormal(3.5, 1.2, size=(n, 8))
    x[:, 8:16] = rng.poisson(rng.uniform(0.2, 4.0, size=8), size=(n, 8))
    x[:, 16:24] = rng.beta(2.0, 5.0, size=(n, 8))
    x[:, 24:32] = rng.normal(size=(n, 8))
    logit = (0.6 * np.log(x[:, 0]) - 0.4 * np.log(x[:, 1]) + 0.5 * (x[:, 8] > 2) + 3.0 * x[:, 16]
             - 2.0 * x[:, 17] + 0.7 * x[:, 24] * x[:, 25] + np.sin(2 * x[:, 26]) + 0.3 * x[:, 9] - 6.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    x[:, 16:24][rng.random((n, 8)) < 0.1] = np.nan  # no history yet
    return x, y


def rows_from_thresholds(model_str: str, n_features: int, n: int, seed: int) -> np.ndarray:
    """Rows for a model we have no data for: each value drawn among that feature's split thresholds."""
    rng = np.random.default_rng(seed)
    per_feature: list[list[float]] = [[] for _ in range(n_features)]
    feats: list[int] = []
    for line in model_str.splitlines():
        if line.startswith("split_feature="):
            feats = [int(v) for v in line.split("=", 1)[1].split()]
        elif line.startswith("threshold="):
            for f, t in zip(feats, line.split("=", 1)[1].split(), strict=True):
                if np.isfinite(float(t)):
                    per_feature[f].append(float(t))
    x = np.column_stack([rng.choice(np.array(p or [0.0]), size=n) + rng.normal(0, 1e-3, size=n)
                         for p in per_feature])
    x[rng.random(x.shape) < 0.05] = np.nan
    return x


def time_calls(fns: dict[str, Callable], rows: np.ndarray, calls: int, warmup: int,
               rounds: int = 4) -> dict[str, dict]:
    """Per-call latency (µs) of each function over ``calls`` calls, interleaved in ``rounds``."""
    samples: dict[str, list[int]] = {name: [] for name in fns}
    n_rows = len(rows)
    for fn in fns.values():
        for i in range(warmup):
            fn(rows[i % n_rows])
    per_round = max(calls // rounds, 1)
    clock = time.perf_counter_ns
    for r in range(rounds):
        for name, fn in fns.items():
            out = samples[name]
            start = r * per_round
            for i in range(start, start + per_round):
                row = rows[i % n_rows]
                t0 = clock()
                fn(row)
                out.append(clock() - t0)
    result = {}
    for name, ts in samples.items():
        ts.sort()
        result[name] = {"calls": len(ts), "median_us": ts[len(ts) // 2] / 1000,
                        "p99_us": ts[min(int(len(ts) * 0.99), len(ts) - 1)] / 1000,
                        "mean_us": statistics.fmean(ts) / 1000}
    return result


# --------------------------------------------------------------------------------------------------
# The peer worker (runs under --peer-python, in a child process)
# --------------------------------------------------------------------------------------------------

def peer_worker(spec_path: str) -> None:
    import ctypes

    spec = json.loads(Path(spec_path).read_text())
    rows = np.load(spec["rows"])
    reference = np.load(spec["reference"])
    calls, warmup, tmp = spec["calls"], spec["warmup"], Path(spec["tmp"])
    out: dict = {"python": sys.version.split()[0], "paths": {}, "exactness": {}, "notes": [], "versions": {}}
    fns: dict[str, Callable] = {}

    def exactness(name: str, fn: Callable) -> None:
        got = np.array([fn(r) for r in rows])
        out["exactness"][name] = float(np.max(np.abs(got - reference)))

    import lightgbm as lgb

    out["versions"]["lightgbm"] = lgb.__version__
    try:
        import tl2cgen
        import treelite

        out["versions"].update(treelite=treelite.__version__, tl2cgen=tl2cgen.__version__)
        tm = treelite.frontend.load_lightgbm_model(spec["model_file"])
        lib = tmp / "tl2cgen_model.so"
        t0 = time.perf_counter()
        tl2cgen.export_lib(tm, toolchain="gcc", libpath=str(lib), params={"parallel_comp": os.cpu_count() or 1},
                           nthread=os.cpu_count() or 1, verbose=False)
        out["notes"].append(f"tl2cgen compile {time.perf_counter() - t0:.1f} s")
        predictor = tl2cgen.Predictor(str(lib), nthread=1, verbose=False)

        def tl2cgen_api(row):
            return predictor.predict(tl2cgen.DMatrix(row.reshape(1, -1), dtype="float64")).ravel()[0]

        # Direct call of the generated `void predict(union Entry* data, int pred_margin, double* result)`.
        # An Entry is 8 bytes; a missing value is marked by `missing == -1` in its first 4 bytes.
        so = ctypes.CDLL(str(lib))
        c_predict = so.predict
        c_predict.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        c_predict.restype = None
        encoded = rows.copy()
        ints = encoded.view(np.int32).reshape(len(rows), -1)[:, ::2]
        ints[np.isnan(rows)] = -1
        ebuf, res = np.zeros(rows.shape[1]), np.zeros(1)
        eptr, rptr = ebuf.ctypes.data, res.ctypes.data
        cycle = {"i": 0}
        n_rows = len(rows)

        def tl2cgen_direct(row, _encoded=encoded, _n=n_rows, _c=cycle):
            # `row` is ignored: the pre-encoded rows are walked in the same cyclic order.
            i = _c["i"]
            _c["i"] = i + 1 if i + 1 < _n else 0
            ebuf[:] = _encoded[i]
            res[0] = 0.0  # the generated code accumulates into result
            c_predict(eptr, 0, rptr)
            return res[0]

        fns["tl2cgen Predictor.predict(DMatrix)"] = tl2cgen_api
        exactness("tl2cgen Predictor.predict(DMatrix)", tl2cgen_api)
        cycle["i"] = 0
        exactness("tl2cgen compiled, direct ctypes call", tl2cgen_direct)
        cycle["i"] = 0
        fns["tl2cgen compiled, direct ctypes call"] = tl2cgen_direct
    except Exception as exc:  # noqa: BLE001 - reported in the table
        out["notes"].append(f"treelite/tl2cgen not run: {type(exc).__name__}: {exc}")
    try:
        import lleaves

        out["versions"]["lleaves"] = metadata.version("lleaves")
        lm = lleaves.Model(model_file=spec["model_file"])
        t0 = time.perf_counter()
        lm.compile(cache=str(tmp / "lleaves_model.o"))
        out["notes"].append(f"lleaves compile {time.perf_counter() - t0:.1f} s")
        entry = lm._c_entry_func
        lbuf, lout = np.zeros(rows.shape[1]), np.zeros(1)
        dptr = ctypes.POINTER(ctypes.c_double)
        lbp, lop = lbuf.ctypes.data_as(dptr), lout.ctypes.data_as(dptr)

        def lleaves_direct(row):
            lbuf[:] = row
            entry(lbp, lop, 0, 1)
            return lout[0]

        def lleaves_api(row):
            return lm.predict(row.reshape(1, -1), n_jobs=1)[0]

        fns["lleaves Model.predict(n_jobs=1)"] = lleaves_api
        fns["lleaves compiled, direct ctypes call"] = lleaves_direct
        exactness("lleaves Model.predict(n_jobs=1)", lleaves_api)
        exactness("lleaves compiled, direct ctypes call", lleaves_direct)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        out["notes"].append(f"lleaves not run: {type(exc).__name__}: {exc}")
    try:
        from mlp_platform.runtime.fast_scorer import FastScorer

        fast = FastScorer.from_model_file(spec["model_file"], cache_dir=spec["cache_dir"])
        fns["FastScorer.score (control, peer process)"] = fast.score
        exactness("FastScorer.score (control, peer process)", fast.score)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        out["notes"].append(f"FastScorer control not run: {type(exc).__name__}: {exc}")
    out["paths"] = time_calls(fns, rows, calls, warmup)
    Path(spec["out"]).write_text(json.dumps(out))


# --------------------------------------------------------------------------------------------------
# The main run
# --------------------------------------------------------------------------------------------------

def machine_info() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "python": sys.version.split()[0],
            "platform": platform.platform(), "loadavg_start": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, help="an MLflow LightGBM model directory")
    ap.add_argument("--model-file", type=Path, help="a LightGBM text model file")
    ap.add_argument("--train-rows", type=int, default=100_000)
    ap.add_argument("--trees", type=int, default=300)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--warmup", type=int, default=2_000)
    ap.add_argument("--pandas-calls", type=int, default=None, help="calls for the pandas path (default --calls)")
    ap.add_argument("--peer-python", default=os.environ.get("MLP_BENCH_PEER_PYTHON"),
                    help="an interpreter with lightgbm, treelite, tl2cgen, lleaves (default $MLP_BENCH_PEER_PYTHON)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="FastScorer's library cache (default: a temp dir)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (model, rows, compiled libraries)")
    ap.add_argument("--peer-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer_worker:
        peer_worker(args.peer_worker)
        return

    import lightgbm as lgb
    import pandas as pd  # the naive path only; the serving code never imports it

    from mlp_platform.runtime.fast_scorer import FastScorer

    info = machine_info()
    info["lightgbm"] = lgb.__version__
    info["numpy"] = np.__version__
    tmp = Path(tempfile.mkdtemp(prefix="bench_scorer_"))
    cache_dir = args.cache_dir or tmp / "cache"
    if args.model_dir:
        from mlp_platform.runtime.scorer import Scorer

        scorer = Scorer.from_model_dir(args.model_dir)
        booster, names = scorer.booster, scorer.feature_names
        rows = rows_from_thresholds(booster.model_to_string(), booster.num_feature(), 2000, seed=1)
        info["model"] = f"MLflow model {args.model_dir}"
    elif args.model_file:
        booster = lgb.Booster(model_file=str(args.model_file))
        names = booster.feature_name()
        rows = rows_from_thresholds(booster.model_to_string(), booster.num_feature(), 2000, seed=1)
        info["model"] = f"model file {args.model_file}"
    else:
        x, y = make_data(args.train_rows, seed=7)
        params = {"objective": "binary", "num_leaves": 31, "learning_rate": 0.05, "min_child_samples": 20,
                  "feature_fraction": 0.9, "num_threads": os.cpu_count() or 1, "seed": 7, "verbose": -1,
                  "deterministic": True}
        t0 = time.perf_counter()
        booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=args.trees)
        names = [f"f{i:02d}" for i in range(N_FEATURES)]
        rows = make_data(2000, seed=99)[0]
        info["model"] = (f"trained here: {args.train_rows} rows x {N_FEATURES} features, {y.mean():.1%} positives, "
                         f"{args.trees} rounds, 31 leaves ({time.perf_counter() - t0:.1f} s)")
    model_file = tmp / "model.txt"
    booster.save_model(str(model_file))
    n_leaves = sum(int(line.split("=")[1]) for line in booster.model_to_string().splitlines()
                   if line.startswith("num_leaves="))
    info["trees"], info["leaves"], info["features"] = booster.num_trees(), n_leaves, booster.num_feature()
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    reference = booster.predict(rows, num_threads=1)

    t0 = time.perf_counter()
    fast = FastScorer.from_booster(booster, names, cache_dir=cache_dir)
    info["fast_scorer_build_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    FastScorer.from_booster(booster, names, cache_dir=cache_dir)
    info["fast_scorer_build_cached_s"] = round(time.perf_counter() - t0, 2)
    info["fast_scorer"] = fast.info
    fast_lgb = FastScorer.from_booster(booster, names, backend="lightgbm")

    def predict_numpy(row):
        return booster.predict(row.reshape(1, -1), num_threads=1)[0]

    def predict_pandas(row):
        return booster.predict(pd.DataFrame([row], columns=names), num_threads=1)[0]

    def predict_contrib(row):
        return booster.predict(row.reshape(1, -1), pred_contrib=True, num_threads=1)[0]

    score_paths: dict[str, Callable] = {
        "Booster.predict, 1-row numpy (num_threads=1)": predict_numpy,
        "FastScorer.score, compiled trees": fast.score,
        "FastScorer.score, backend=lightgbm (C API fast path)": fast_lgb.score,
    }
    exact = {}
    for name, fn in score_paths.items():
        exact[name] = float(np.max(np.abs(np.array([fn(r) for r in rows]) - reference)))
    exact["Booster.predict, 1-row pandas DataFrame"] = float(
        np.max(np.abs(np.array([predict_pandas(r) for r in rows[:200]]) - reference[:200])))
    contrib_ref = booster.predict(rows[:500], pred_contrib=True, num_threads=1)
    exact["FastScorer.contributions (TreeSHAP)"] = float(
        np.max(np.abs(np.vstack([fast.contributions(r) for r in rows[:500]]) - contrib_ref)))
    exact["Booster.predict(pred_contrib=True), 1-row numpy"] = 0.0

    print(f"# model: {info['model']}; {info['trees']} trees, {info['leaves']} leaves, {info['features']} features",
          flush=True)
    print(f"# FastScorer: backend {fast.backend}, build {info['fast_scorer_build_s']} s "
          f"(cached {info['fast_scorer_build_cached_s']} s), verified on {fast.info.get('verified_rows')} "
          f"probe rows, max |diff| {fast.info.get('verify_max_abs_diff')}", flush=True)

    results = time_calls(score_paths, rows, args.calls, args.warmup)
    results.update(time_calls({"FastScorer.contributions (TreeSHAP)": fast.contributions,
                               "Booster.predict(pred_contrib=True), 1-row numpy": predict_contrib},
                              rows, args.calls, args.warmup))
    pandas_calls = args.pandas_calls or args.calls
    results.update(time_calls({"Booster.predict, 1-row pandas DataFrame": predict_pandas}, rows, pandas_calls,
                              min(args.warmup, 500)))
    where = dict.fromkeys(results, "main")

    notes: list[str] = []
    peer: dict = {}
    if args.peer_python:
        np.save(tmp / "rows.npy", rows)
        np.save(tmp / "reference.npy", reference)
        spec = {"model_file": str(model_file), "rows": str(tmp / "rows.npy"), "reference": str(tmp / "reference.npy"),
                "calls": args.calls, "warmup": args.warmup, "tmp": str(tmp), "out": str(tmp / "peer.json"),
                "cache_dir": str(cache_dir)}
        (tmp / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([args.peer_python, str(Path(__file__).resolve()), "--peer-worker", str(tmp / "spec.json")],
                              capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0 or not (tmp / "peer.json").exists():
            notes.append(f"peer process failed ({proc.returncode}): {proc.stderr[-1500:]}")
        else:
            peer = json.loads((tmp / "peer.json").read_text())
            notes.extend(peer["notes"])
            notes.append(f"peer process: python {peer['python']}, {peer['versions']}")
            for name, res in peer["paths"].items():
                results[name] = res
                where[name] = "peer"
                exact[name] = peer["exactness"].get(name, float("nan"))
    else:
        notes.append("peers not run: pass --peer-python (or $MLP_BENCH_PEER_PYTHON), an interpreter with "
                     "lightgbm, treelite, tl2cgen and lleaves ('llvmlite<0.44' for lleaves 1.3)")
    info["loadavg_end"] = os.getloadavg()

    contrib_names = {"FastScorer.contributions (TreeSHAP)", "Booster.predict(pred_contrib=True), 1-row numpy"}
    score_names = [n for n in results if n not in contrib_names]
    fastest = min(results[n]["median_us"] for n in score_names)
    fastest_p99 = min(results[n]["p99_us"] for n in score_names)
    print(f"\nSingle-row latency, {args.calls} calls per path (pandas: {pandas_calls}), 2,000 distinct rows; "
          f"load average {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}; {info['cpu']}, "
          f"{info['cores']} cores, lightgbm {info['lightgbm']}\n")
    header = f"{'path':58} {'proc':5} {'median µs':>10} {'p99 µs':>9} {'x fastest':>10} {'p99 x':>7} {'max |diff|':>11}"
    print(header)
    print("-" * len(header))
    for group in (score_names, [n for n in results if n in contrib_names]):
        for name in sorted(group, key=lambda n: results[n]["median_us"]):
            r = results[name]
            print(f"{name:58} {where[name]:5} {r['median_us']:10.2f} {r['p99_us']:9.2f} "
                  f"{r['median_us'] / fastest:10.2f} {r['p99_us'] / fastest_p99:7.2f} {exact.get(name, float('nan')):11.3g}")
        print()
    print("ratios: to the fastest scoring path (median, and p99 to the lowest p99); reason-code rows are "
          "relative to the same fastest score")
    for note in notes:
        print(f"note: {note}")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": results, "where": where, "max_abs_diff": exact,
                                         "notes": notes}, indent=2, default=str))
    if args.keep:
        print(f"kept {tmp}")
    else:
        fast.close()
        fast_lgb.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
