"""FastScorer: exact to booster.predict (1e-12) on hard rows, reason codes, threads, fallbacks."""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import threading

import lightgbm as lgb
import numpy as np
import pytest

from mlp_platform.runtime import fast_scorer as fs_mod
from mlp_platform.runtime.fast_scorer import K_ZERO_THRESHOLD, FastScorer, FastScorerError

N_FEATURES = 16
TOL = 1e-12
SPECIAL = [math.nan, 0.0, -0.0, K_ZERO_THRESHOLD, -K_ZERO_THRESHOLD, K_ZERO_THRESHOLD / 2, -K_ZERO_THRESHOLD / 2,
           1e-36, -1e-36, 5e-324, 1e300, -1e300, math.inf, -math.inf]


def _make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Transaction-like features: normals, amounts, counts with many exact zeros, small ints, NaNs."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, N_FEATURES))
    x[:, 0:6] = rng.normal(size=(n, 6))
    x[:, 6:10] = rng.lognormal(3.0, 1.0, size=(n, 4))
    x[:, 10:13] = rng.poisson(0.7, size=(n, 3))
    x[:, 13:16] = rng.integers(-3, 4, size=(n, 3))
    logit = (1.2 * x[:, 0] - x[:, 1] + np.sin(2 * x[:, 2]) + 0.8 * (x[:, 10] > 0) + 0.02 * x[:, 6]
             - 0.5 * x[:, 13] + 0.3 * x[:, 11] * x[:, 3] - 2.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    x[:, :10][rng.random((n, 10)) < 0.08] = np.nan  # missing values (features 10-15 have none)
    x[rng.random(n) < 0.3, 15] = np.nan
    return x, y


def _params(**extra) -> dict:
    return {"objective": "binary", "num_leaves": 31, "learning_rate": 0.05, "min_data_in_leaf": 10,
            "num_threads": 1, "deterministic": True, "force_row_wise": True, "seed": 7, "verbose": -1,
            **extra}


def _thresholds(booster: lgb.Booster) -> dict[int, list[float]]:
    """Every split threshold per feature, read from the text model (exact)."""
    out: dict[int, list[float]] = {}
    feats: list[int] = []
    for line in booster.model_to_string().splitlines():
        if line.startswith("split_feature="):
            feats = [int(v) for v in line.split("=", 1)[1].split()]
        elif line.startswith("threshold="):
            for f, t in zip(feats, line.split("=", 1)[1].split(), strict=True):
                out.setdefault(f, []).append(float(t))
    return out


def _hard_rows(booster: lgb.Booster, n: int = 2000, seed: int = 11) -> np.ndarray:
    """Random rows, rows exactly on (and one ulp around) split thresholds, zeros, tiny and huge values."""
    rng = np.random.default_rng(seed)
    rows = [_make_data(n // 2, seed)[0]]
    thr = _thresholds(booster)
    pools = []
    for f in range(N_FEATURES):
        pool = [v for t in thr.get(f, []) if math.isfinite(t)
                for v in (t, math.nextafter(t, -math.inf), math.nextafter(t, math.inf))]
        pools.append(np.array(pool + SPECIAL))
    n_thr = n // 2 - 4
    block = np.column_stack([rng.choice(p, size=n_thr) for p in pools])
    exact = np.column_stack([rng.choice(np.array([v for v in thr.get(f, [0.0]) if math.isfinite(v)] or [0.0]),
                                        size=n_thr) for f in range(N_FEATURES)])
    on_threshold = rng.random(block.shape) < 0.5  # half the cells exactly on a threshold of that feature
    block[on_threshold] = exact[on_threshold]
    rows.append(block)
    rows.append(np.vstack([np.zeros(N_FEATURES), np.full(N_FEATURES, np.nan), np.full(N_FEATURES, -0.0),
                           np.full(N_FEATURES, np.inf)]))
    x = np.vstack(rows)
    assert x.shape == (n, N_FEATURES)
    return x


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fast_scorer_cache")


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    x, y = _make_data(6000, seed=3)
    b = lgb.train(_params(), lgb.Dataset(x, y), num_boost_round=300)
    assert b.num_trees() == 300
    return b


@pytest.fixture(scope="module")
def rows(booster) -> np.ndarray:
    return _hard_rows(booster)


@pytest.fixture(scope="module")
def compiled(booster, cache_dir) -> FastScorer:
    scorer = FastScorer.from_booster(booster, cache_dir=cache_dir)
    assert scorer.backend == "compiled", scorer.info
    return scorer


@pytest.fixture(scope="module")
def fast_path(booster) -> FastScorer:
    scorer = FastScorer.from_booster(booster, backend="lightgbm")
    assert scorer.backend == "lightgbm"
    return scorer


def _missing_types(booster: lgb.Booster) -> set[int]:
    types = set()
    for line in booster.model_to_string().splitlines():
        if line.startswith("decision_type="):
            types.update((int(v) >> 2) & 3 for v in line.split("=", 1)[1].split())
    return types


def test_model_exercises_the_missing_value_rules(booster, rows):
    assert _missing_types(booster) >= {0, 2}  # None (features without NaN) and NaN
    thr = _thresholds(booster)
    assert any(math.isinf(t) for ts in thr.values() for t in ts)  # "is it NaN" splits (threshold inf)
    assert np.isnan(rows).mean() > 0.02 and np.isnan(rows).any(axis=0).all()


@pytest.mark.parametrize("which", ["compiled", "fast_path"])
def test_scores_equal_lightgbm(which, request, booster, rows):
    scorer: FastScorer = request.getfixturevalue(which)
    expected = booster.predict(rows, num_threads=1)
    got = np.array([scorer.score(r) for r in rows])
    assert np.max(np.abs(got - expected)) <= TOL
    raw = np.array([scorer.raw_score(r) for r in rows])
    assert np.max(np.abs(raw - booster.predict(rows, raw_score=True, num_threads=1))) <= TOL
    assert isinstance(scorer.score(rows[0]), float)
    assert np.max(np.abs(scorer.score_matrix(rows) - expected)) <= TOL


def test_compiled_is_bit_identical_and_verified(compiled, booster, rows):
    # Stronger than the 1e-12 requirement: the same operations in the same order give the same bits.
    assert np.array_equal(np.array([compiled.score(r) for r in rows]), booster.predict(rows, num_threads=1))
    assert compiled.info["verified_rows"] >= 1024
    assert compiled.info["verify_max_abs_diff"] == 0.0


def test_zero_as_missing_model(cache_dir):
    x, y = _make_data(3000, seed=5)
    b = lgb.train(_params(zero_as_missing=True), lgb.Dataset(x, y), num_boost_round=60)
    assert 1 in _missing_types(b)  # missing type Zero
    scorer = FastScorer.from_booster(b, cache_dir=cache_dir)
    assert scorer.backend == "compiled"
    r = _hard_rows(b, n=1000, seed=2)
    assert np.max(np.abs(np.array([scorer.score(v) for v in r]) - b.predict(r, num_threads=1))) <= TOL


def test_best_iteration_is_honoured(cache_dir):
    x, y = _make_data(3000, seed=6)
    xv, yv = _make_data(1000, seed=7)
    train = lgb.Dataset(x, y)
    b = lgb.train(_params(), train, num_boost_round=200, valid_sets=[lgb.Dataset(xv, yv, reference=train)],
                  callbacks=[lgb.early_stopping(5, verbose=False)])
    assert 0 < b.best_iteration < 200
    r = _hard_rows(b, n=400)
    for backend in ("compiled", "lightgbm"):
        scorer = FastScorer.from_booster(b, backend=backend, cache_dir=cache_dir)
        assert scorer.num_iteration == b.best_iteration
        assert np.max(np.abs(np.array([scorer.score(v) for v in r]) - b.predict(r, num_threads=1))) <= TOL


def test_contributions_are_lightgbm_treeshap(compiled, booster, rows):
    sample = rows[::10]
    expected = booster.predict(sample, pred_contrib=True, num_threads=1)
    got = np.vstack([compiled.contributions(r) for r in sample])
    assert got.shape == (len(sample), N_FEATURES + 1)
    assert np.max(np.abs(got - expected)) <= TOL
    raw = booster.predict(sample, raw_score=True, num_threads=1)
    assert np.max(np.abs(got.sum(axis=1) - raw)) <= 1e-9  # they add up to the log-odds score


def test_reason_codes(compiled, rows):
    names = [f"f{i}" for i in range(N_FEATURES)]
    seen_any = False
    for r in rows[:300]:
        contrib = compiled.contributions(r)[:-1]
        codes = compiled.reason_codes(r, names, top=3)
        positive = np.sort(contrib[contrib > 0])[::-1]
        assert len(codes) == min(3, len(positive))
        values = [v for _, v in codes]
        assert values == sorted(values, reverse=True)
        assert all(v > 0 for v in values)
        assert np.allclose(values, positive[:len(values)], rtol=0, atol=0)
        for name, v in codes:
            assert contrib[names.index(name)] == v
        seen_any |= len(codes) == 3
    assert seen_any
    r = rows[0]
    assert compiled.reason_codes(r, top=0) == []
    default_names = compiled.reason_codes(r)  # the booster's own feature names
    assert [n for n, _ in default_names] == [f"Column_{names.index(n)}" for n, _ in compiled.reason_codes(r, names)]
    with pytest.raises(ValueError):
        compiled.reason_codes(r, names[:-1])


@pytest.mark.parametrize("which", ["compiled", "fast_path"])
def test_threads_give_the_sequential_results(which, request, rows):
    scorer: FastScorer = request.getfixturevalue(which)
    sequential = np.array([scorer.score(r) for r in rows])
    contrib_rows = rows[:200]
    sequential_contrib = np.vstack([scorer.contributions(r) for r in contrib_rows])
    n_threads = 8
    results: list = [None] * n_threads
    errors: list = []
    barrier = threading.Barrier(n_threads)

    def work(k: int) -> None:
        try:
            order = np.roll(np.arange(len(rows)), k * 250)  # each thread in its own order
            barrier.wait()
            out = np.empty(len(rows))
            for _ in range(2):
                for i in order:
                    out[i] = scorer.score(rows[i])
            contrib = np.vstack([scorer.contributions(r) for r in contrib_rows])
            results[k] = (out, contrib)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for out, contrib in results:
        assert np.array_equal(out, sequential)
        assert np.array_equal(contrib, sequential_contrib)


def test_finished_threads_free_their_handles(booster, rows):
    scorer = FastScorer.from_booster(booster, backend="lightgbm")
    pool = scorer._score_pool
    before = len(pool._live)
    threads = [threading.Thread(target=scorer.score, args=(rows[k],)) for k in range(6)]
    for t in threads:
        t.start()
        t.join()
    gc.collect()
    assert len(pool._live) == before
    scorer.close()
    assert pool._live == {}


def test_input_forms_and_validation(compiled, booster, rows):
    r = rows[3]
    expected = float(booster.predict(r.reshape(1, -1), num_threads=1)[0])
    assert compiled.score(r) == expected
    assert compiled.score(r.tolist()) == expected
    assert compiled.score(r.reshape(1, -1)) == expected
    assert compiled.score(np.asfortranarray(rows)[3]) == expected  # a strided view
    r32 = r.astype(np.float32)
    assert compiled.score(r32) == float(booster.predict(r32.reshape(1, -1), num_threads=1)[0])
    with pytest.raises(ValueError):
        compiled.score(r[:-1])
    with pytest.raises(ValueError):
        compiled.score(np.array([1.0]))  # would broadcast silently without the shape check
    with pytest.raises(ValueError):
        compiled.contributions(r[:-1])


def test_from_model_file(booster, rows, tmp_path, cache_dir):
    path = tmp_path / "model.txt"
    booster.save_model(str(path))
    scorer = FastScorer.from_model_file(path, cache_dir=cache_dir)
    assert scorer.backend == "compiled"
    assert scorer.info["cache_hit"] is True  # same trees as the module's compiled scorer
    assert np.max(np.abs(scorer.score_matrix(rows) - booster.predict(rows, num_threads=1))) <= TOL


def test_no_compiler_falls_back_to_the_lightgbm_fast_path(booster, rows, monkeypatch):
    monkeypatch.setattr(fs_mod, "find_c_compiler", lambda: None)
    scorer = FastScorer.from_booster(booster)
    assert scorer.backend == "lightgbm"
    assert "compiler" in scorer.info["fallback_reason"]
    assert np.max(np.abs(np.array([scorer.score(r) for r in rows[:300]])
                         - booster.predict(rows[:300], num_threads=1))) <= TOL
    with pytest.raises(FastScorerError):
        FastScorer.from_booster(booster, backend="compiled")


def test_verification_failure_falls_back(booster, rows, cache_dir, monkeypatch):
    real = fs_mod.generate_c_source

    def off_by_a_hair(model_str):
        source, model = real(model_str)
        return source.replace("s += t0(x);", "s += t0(x) + 1e-9;"), model

    monkeypatch.setattr(fs_mod, "generate_c_source", off_by_a_hair)
    scorer = FastScorer.from_booster(booster, cache_dir=cache_dir)
    assert scorer.backend == "lightgbm"
    assert "differ" in scorer.info["fallback_reason"]
    with pytest.raises(FastScorerError):
        FastScorer.from_booster(booster, backend="compiled", cache_dir=cache_dir)


def test_categorical_model_falls_back(cache_dir):
    rng = np.random.default_rng(4)
    x = np.column_stack([rng.integers(0, 12, 3000), rng.normal(size=3000)]).astype(float)
    y = ((x[:, 0] % 3 == 0) ^ (rng.random(3000) < 0.1)).astype(int)
    b = lgb.train(_params(min_data_per_group=10, cat_smooth=1.0),
                  lgb.Dataset(x, y, categorical_feature=[0]), num_boost_round=20)
    scorer = FastScorer.from_booster(b, cache_dir=cache_dir)
    assert scorer.backend == "lightgbm"
    assert "categorical" in scorer.info["fallback_reason"]
    r = np.vstack([x[:200], [[np.nan, 0.0], [-1.0, 1.0], [99.0, np.nan]]])
    assert np.max(np.abs(np.array([scorer.score(v) for v in r]) - b.predict(r, num_threads=1))) <= TOL


def test_close_frees_handles_and_refuses_further_calls(booster, rows, cache_dir):
    scorer = FastScorer.from_booster(booster, backend="lightgbm")
    scorer.contributions(rows[0])
    scorer.close()
    with pytest.raises(FastScorerError):
        scorer.score(rows[0])
    with pytest.raises(FastScorerError):
        scorer.contributions(rows[0])
    scorer.close()  # idempotent
    with FastScorer.from_booster(booster, cache_dir=cache_dir) as s2:
        s2.contributions(rows[0])
    with pytest.raises(FastScorerError):
        s2.contributions(rows[0])


def test_serving_import_adds_no_heavy_modules():
    """The fast scorer binds LightGBM's C library without importing the lightgbm package (which pulls
    in scikit-learn and pandas: 1.25 s of a new pod's start); reverted, ``lightgbm`` is in the set."""
    code = ("import sys, numpy; before = set(sys.modules); "
            "import mlp_platform.runtime.fast_scorer; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "bad = new & {'pandas', 'polars', 'dagster', 'dbt', 'lightgbm', 'sklearn', 'scipy'}; "
            "assert not bad, bad; "
            "assert not {'dagster', 'dbt', 'polars'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the batch kernel (score_batch / score_columns) ---------------------------------------------------

def _batch_exact(scorer: FastScorer, b: lgb.Booster, x: np.ndarray) -> None:
    """score_batch / score_columns with 1-3 threads, probabilities and raw scores, == booster.predict."""
    expected = b.predict(x, num_threads=1)
    columns = [np.ascontiguousarray(c) for c in x.T]
    for threads in (1, 2, 3):
        assert np.array_equal(scorer.score_batch(x, threads=threads), expected)
        assert np.array_equal(scorer.score_columns(columns, threads=threads), expected)
    assert np.array_equal(scorer.score_batch(x, threads=2, raw_score=True),
                          b.predict(x, raw_score=True, num_threads=1))


def test_batch_kernel_is_bit_identical_on_hard_rows(compiled, booster, rows):
    assert compiled.info["batch_kernel"] == "quickscorer", compiled.info
    assert compiled.info["batch_verify_max_abs_diff"] == 0.0
    # 3 x 5,003 rows: not a multiple of the kernel's block, cut unevenly over the threads
    x = np.vstack([rows, rows[::-1], rows[:1003]])
    x = np.vstack([x, x[:, ::-1][:, np.r_[N_FEATURES - 1, 0:N_FEATURES - 1]]])[:15_009]
    _batch_exact(compiled, booster, x)
    for n in (1, 63, 64, 65):  # partial and whole blocks
        assert np.array_equal(compiled.score_batch(x[:n]), booster.predict(x[:n], num_threads=1))
    # a non-contiguous matrix (a column slice of a wider frame) is scored correctly too
    wide = np.hstack([x, np.ones((len(x), 3))])
    assert np.array_equal(compiled.score_batch(wide[:, :N_FEATURES], threads=2),
                          booster.predict(x, num_threads=1))


def test_batch_kernel_equals_the_per_row_code(booster, rows, cache_dir):
    rows_scorer = FastScorer.from_booster(booster, cache_dir=cache_dir, batch_kernel="rows")
    assert rows_scorer.info["batch_kernel"] == "rows"
    kernel_scorer = FastScorer.from_booster(booster, cache_dir=cache_dir, batch_kernel="quickscorer")
    assert kernel_scorer.info["batch_kernel"] == "quickscorer"
    assert np.array_equal(rows_scorer.score_batch(rows, threads=2), kernel_scorer.score_batch(rows, threads=2))
    with pytest.raises(ValueError, match="batch_kernel"):
        FastScorer.from_booster(booster, cache_dir=cache_dir, batch_kernel="fast")


@pytest.mark.parametrize("extra", [{"zero_as_missing": True}, {"use_missing": False}],
                         ids=["missing-type-zero", "missing-type-none"])
def test_batch_kernel_missing_value_types(extra, cache_dir):
    x, y = _make_data(3000, seed=5)
    b = lgb.train(_params(**extra), lgb.Dataset(x, y), num_boost_round=60)
    assert _missing_types(b) == ({1} if extra.get("zero_as_missing") else {0})
    scorer = FastScorer.from_booster(b, cache_dir=cache_dir)
    assert scorer.info["batch_kernel"] == "quickscorer", scorer.info
    _batch_exact(scorer, b, _hard_rows(b, n=3000, seed=4))


def test_trees_of_more_than_32_leaves_keep_the_per_row_batch_code(cache_dir):
    x, y = _make_data(4000, seed=8)
    b = lgb.train(_params(num_leaves=48, min_data_in_leaf=5), lgb.Dataset(x, y), num_boost_round=20)
    assert max(t["num_leaves"] for t in b.dump_model()["tree_info"]) > 32
    scorer = FastScorer.from_booster(b, cache_dir=cache_dir)
    assert scorer.backend == "compiled"
    assert scorer.info["batch_kernel"] == "rows"
    assert "32 leaves" in scorer.info["batch_kernel_fallback_reason"]
    _batch_exact(scorer, b, _hard_rows(b, n=1000, seed=9))
    with pytest.raises(fs_mod.UnsupportedModel, match="32 leaves"):
        FastScorer.from_booster(b, cache_dir=cache_dir, batch_kernel="quickscorer")


def test_batch_kernel_verification_failure_keeps_the_per_row_code(booster, rows, cache_dir, monkeypatch):
    real = fs_mod.qs_tables

    def off_by_one_leaf(model):
        tables = real(model)
        tables["leaf"] = tables["leaf"] + 1e-9  # a kernel that is slightly wrong
        return tables

    monkeypatch.setattr(fs_mod, "qs_tables", off_by_one_leaf)
    scorer = FastScorer.from_booster(booster, cache_dir=cache_dir)
    assert scorer.info["batch_kernel"] == "rows"
    assert "differs" in scorer.info["batch_kernel_fallback_reason"]
    assert np.array_equal(scorer.score_batch(rows, threads=2), booster.predict(rows, num_threads=1))


# -- the per-model library's parallel build ------------------------------------------------------------

def test_the_parallel_build_links_the_same_trees(booster, rows, tmp_path, monkeypatch):
    """The per-model source compiled as SOURCE_PARTS + 1 objects side by side (a new pod's first load)
    scores bit-identically to the one-unit build and to LightGBM. Were a tree group left out of its
    part (a wrong ``FS_IN`` guard), the link would fail on an undefined ``t<i>``; were the groups
    summed in another order, the bits would differ."""
    source, model = fs_mod.generate_c_source(booster.model_to_string())
    assert source.count("#if FS_IN(") == fs_mod.SOURCE_PARTS + 1
    calls: list[list[str]] = []
    real_run = subprocess.run

    def recording_run(cmd, *args, **kwargs):
        calls.append(list(cmd))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(fs_mod.subprocess, "run", recording_run)
    monkeypatch.setattr(fs_mod, "_usable_cpus", lambda: 2)
    parted, hit, _ = fs_mod.compile_library(source, tmp_path / "parts", source_parts=fs_mod.SOURCE_PARTS)
    assert not hit
    part_flags = sorted(a for cmd in calls for a in cmd if a.startswith("-DFS_PART="))
    assert part_flags == [f"-DFS_PART={k}" for k in range(fs_mod.SOURCE_PARTS + 1)]
    monkeypatch.setattr(fs_mod, "_usable_cpus", lambda: 1)  # one core: one unit, no FS_PART
    calls.clear()
    whole, _, _ = fs_mod.compile_library(source, tmp_path / "whole", source_parts=fs_mod.SOURCE_PARTS)
    assert not any(a.startswith("-DFS_PART=") for cmd in calls for a in cmd)
    expected = booster.predict(rows, num_threads=1)
    for lib in (parted, whole):
        trees = fs_mod._CompiledTrees(lib, model.n_features)
        assert np.array_equal(trees.predict_matrix(rows), expected)
        assert np.array_equal(trees.predict_matrix(rows, raw_score=True),
                              booster.predict(rows, raw_score=True, num_threads=1))
