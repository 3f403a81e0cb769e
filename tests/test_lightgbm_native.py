"""NativeBooster (LightGBM's C library without the lightgbm package) against lightgbm.Booster: the
same features, text, predictions (bit for bit) and TreeSHAP handle; bad models refused clearly."""

from __future__ import annotations

import subprocess
import sys

import lightgbm as lgb
import numpy as np
import pytest

from mlp_platform.runtime.fast_scorer import FastScorer
from mlp_platform.runtime.lightgbm_native import NativeBooster, NativeBoosterError


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 6))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) + rng.normal(size=3000) > 0.3).astype(int)
    booster = lgb.train({"objective": "binary", "num_leaves": 15, "verbose": -1, "seed": 1},
                        lgb.Dataset(x, y, feature_name=[f"feature_{i}_with_a_long_name" for i in range(6)]),
                        num_boost_round=80)
    path = tmp_path_factory.mktemp("native") / "model.lgb"
    booster.save_model(str(path))
    return path


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 6)) * 3
    x[rng.random(x.shape) < 0.15] = np.nan
    x[:5] = 0.0
    return x


def test_native_booster_is_the_package_booster(model_file, rows):
    package, native = lgb.Booster(model_file=str(model_file)), NativeBooster.from_file(model_file)
    assert native.num_feature() == package.num_feature() == 6
    assert native.feature_name() == package.feature_name()
    assert native.best_iteration == package.best_iteration
    # the package appends its own pandas_categorical line to the C library's text
    for kwargs in ({}, {"num_iteration": 10}):
        assert package.model_to_string(**kwargs) == native.model_to_string(**kwargs) + "\npandas_categorical:null\n"
    for kwargs in ({}, {"raw_score": True}, {"num_iteration": 20}, {"num_threads": 2}):
        assert np.array_equal(native.predict(rows, **kwargs), package.predict(rows, **kwargs)), kwargs
    again = NativeBooster.from_string(package.model_to_string())
    assert np.array_equal(again.predict(rows), package.predict(rows))


def test_fast_scorer_on_a_native_booster(model_file, rows, tmp_path):
    """The compiled trees, their verification and LightGBM's TreeSHAP (through the native handle)
    give what the package booster gives."""
    package = lgb.Booster(model_file=str(model_file))
    scorer = FastScorer.from_booster(NativeBooster.from_file(model_file), cache_dir=tmp_path)
    assert scorer.backend == "compiled" and scorer.info["verify_max_abs_diff"] == 0.0
    assert np.array_equal(np.array([scorer.score(r) for r in rows]), package.predict(rows, num_threads=1))
    contrib = package.predict(rows[:50], pred_contrib=True, num_threads=1)
    assert np.allclose(np.array([scorer.contributions(r) for r in rows[:50]]), contrib, rtol=0, atol=1e-12)
    fallback = FastScorer.from_booster(NativeBooster.from_file(model_file), backend="lightgbm")
    assert np.array_equal(np.array([fallback.score(r) for r in rows]), package.predict(rows, num_threads=1))


def test_bad_models_and_rows_are_refused(model_file, tmp_path, rows):
    broken = tmp_path / "broken.lgb"
    broken.write_text("tree\nversion=v4\nnum_class=one\n")
    with pytest.raises(NativeBoosterError):
        NativeBooster.from_file(broken)
    with pytest.raises(NativeBoosterError):
        NativeBooster.from_file(tmp_path / "absent.lgb")
    native = NativeBooster.from_file(model_file)
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        native.predict(rows[:, :5])
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        native.predict(rows[0])


def test_loading_a_model_does_not_import_the_lightgbm_package(model_file):
    code = ("import sys; from mlp_platform.runtime.lightgbm_native import NativeBooster; "
            f"b = NativeBooster.from_file({str(model_file)!r}); assert b.num_feature() == 6; "
            "assert not {'lightgbm', 'sklearn', 'pandas'} & {m.split('.')[0] for m in sys.modules}, "
            "sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
