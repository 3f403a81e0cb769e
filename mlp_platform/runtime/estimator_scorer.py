"""The generic (slower) serving path: a scikit-learn-compatible binary classifier, handed over through
MLflow's ``sklearn`` flavour (``mlp models submit``), scoring single rows with the interface of the
compiled LightGBM scorer (``score``, ``score_matrix``, ``contributions``, ``feature_names``).

* Scores are ``predict_proba(x)[:, 1]`` (class 1 = the bad outcome; a model whose ``classes_`` are
  not ``[0, 1]`` is refused). A model fitted on a pandas frame (``feature_names_in_``) is given a
  plain array when, on probe rows (the typical row, each feature missing in turn, random rows), the
  array gives exactly the frame's scores; otherwise (a ``ColumnTransformer`` selecting by name, for
  example) a frame with the spec's column names. Measured on the German credit pipeline (imputer,
  scaler, logistic regression): 430 µs per ``predict_proba`` on an array against 930 µs on a
  one-row frame (scikit-learn validates the frame at every step), so the probe pays its weight.
* Contributions (for adverse-action reasons) have no TreeSHAP here: each feature's is the change in
  log-odds when that feature alone is replaced by its typical value in the training population
  (occlusion: one ``predict_proba`` call on n + 1 rows), positive when the applicant's value raised
  the risk above the typical one; the last element (the bias) is the log-odds of the typical
  row's part, so the contributions sum to the row's log-odds like TreeSHAP's. A feature with no
  typical value (no reference profile) gets 0.

Measured cost (bench/bench_deciders.py, docs/benchmarks.md): this path is what the latency gate
judges for such a model; compiled fast scoring applies to LightGBM only.

Loading: MLflow's ``skops`` format (the default of ``mlflow.sklearn``) admits only audited types
plus those the submitter declared trusted (listed in the submission's record); pickle formats run
arbitrary code on load and are refused at submission unless the decider allows them
(``submission.allow_pickle``). Only people trusted with the registry may submit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlp_platform.runtime.scorer import ModelSchemaError

_EPS = 1e-12


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


class EstimatorScorer:
    """One scikit-learn-compatible binary classifier behind the serving scorer's interface."""

    backend = "estimator"

    def __init__(self, estimator: Any, feature_names: Sequence[str], *, version: str = "",
                 typical: Mapping[str, float] | None = None):
        if not callable(getattr(estimator, "predict_proba", None)):
            raise ModelSchemaError(f"{type(estimator).__name__} has no predict_proba: a decider needs a "
                                   "probability of the bad outcome")
        classes = getattr(estimator, "classes_", None)
        if classes is not None and [int(c) if isinstance(c, int | np.integer) else c for c in classes] != [0, 1]:
            raise ModelSchemaError(f"classes_ are {list(classes)}: a decider's model is binary with classes [0, 1] "
                                   "(1 = the bad outcome)")
        self.estimator = estimator
        self.feature_names = list(feature_names)
        self.version = version
        fitted = getattr(estimator, "feature_names_in_", None)
        if fitted is not None and list(fitted) != self.feature_names:
            raise ModelSchemaError(f"the estimator was fitted on columns {list(fitted)}, not the feature spec's "
                                   f"{self.feature_names}")
        self.typical = np.array([float((typical or {}).get(n, math.nan)) for n in self.feature_names])
        self._frame = fitted is not None and not self._array_gives_the_frames_scores()

    @classmethod
    def from_model_dir(cls, model_dir: Path, expected_features: Sequence[str], *, version: str = "",
                       typical: Mapping[str, float] | None = None) -> EstimatorScorer:
        """Load an MLflow ``sklearn``-flavour model directory; refuse it if its signature's inputs
        are not the spec's features in the spec's order."""
        import mlflow.sklearn

        model_dir = Path(model_dir)
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        if "sklearn" not in (mlmodel.get("flavors") or {}):
            raise ModelSchemaError(f"{model_dir}: not a scikit-learn MLflow model")
        inputs = json.loads((mlmodel.get("signature") or {}).get("inputs") or "[]")
        names = [c.get("name") for c in inputs]
        if names and names != list(expected_features):
            raise ModelSchemaError("the model's signature differs from the feature specification")
        return cls(mlflow.sklearn.load_model(str(model_dir)), expected_features, version=version, typical=typical)

    def _probe_blocks(self) -> list[np.ndarray]:
        n = len(self.feature_names)
        base = np.where(np.isnan(self.typical), 0.0, self.typical)
        missing = np.tile(base, (n, 1))
        missing[np.arange(n), np.arange(n)] = np.nan
        rng = np.random.default_rng(0)
        return [np.vstack([base, base * rng.uniform(0.5, 1.5, size=(8, n)) + rng.normal(size=(8, n))]), missing]

    def _array_gives_the_frames_scores(self) -> bool:
        """Each probe block the frame path scores must get the same scores as an array (a block the
        frame path itself refuses, such as missing values for a model without an imputer, is
        skipped); no block scored at all: frames."""
        import warnings

        import pandas as pd

        compared = 0
        for block in self._probe_blocks():
            try:
                framed = np.asarray(self.estimator.predict_proba(pd.DataFrame(block, columns=self.feature_names)))
            except Exception:  # the model refuses these rows whatever their container
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    plain = np.asarray(self.estimator.predict_proba(block))
            except Exception:  # a name-based step refuses arrays: frames it is
                return False
            if framed.shape != plain.shape or not np.array_equal(framed, plain, equal_nan=True):
                return False
            compared += 1
        return compared > 0

    def _input(self, x: np.ndarray):
        if self._frame:
            import pandas as pd

            return pd.DataFrame(x, columns=self.feature_names)
        return x

    def _predict_proba(self, x):
        if self._frame:
            return self.estimator.predict_proba(self._input(x))
        import warnings

        with warnings.catch_warnings():  # "X does not have valid feature names": checked equal at load
            warnings.simplefilter("ignore")
            return self.estimator.predict_proba(x)

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"expected rows of {len(self.feature_names)} features, got shape {x.shape}")
        proba = np.asarray(self._predict_proba(x), dtype=np.float64)
        return proba[:, 1]

    def score(self, row: np.ndarray) -> float:
        return float(self.score_matrix(np.asarray(row, dtype=np.float64).reshape(1, -1))[0])

    def contributions(self, row: np.ndarray) -> np.ndarray:
        """Occlusion contributions in log-odds, the bias last (see the module docstring)."""
        row = np.asarray(row, dtype=np.float64).reshape(-1)
        n = row.size
        known = ~np.isnan(self.typical)
        rows = np.tile(row, (n + 1, 1))
        idx = np.arange(n)
        rows[idx + 1, idx] = np.where(known, self.typical, row)
        logits = _logit(self.score_matrix(rows))
        out = np.zeros(n + 1)
        out[:n] = np.where(known, logits[0] - logits[1:], 0.0)
        out[n] = logits[0] - out[:n].sum()
        return out
