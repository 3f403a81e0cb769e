"""The serving scorer: one model version loaded from its registered artefact, scoring single rows.

This is the code path the online service uses; the consistency and latency gates run the candidate
through it, so what is promoted is what will serve. Single-row prediction forces one thread
(OpenMP start-up on a one-row predict costs milliseconds on a small machine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

if TYPE_CHECKING:  # imported where used: importing this module does not load LightGBM
    import lightgbm as lgb


class ModelSchemaError(ValueError):
    """The model's features do not match what the platform will feed it."""


@dataclass
class Scorer:
    booster: lgb.Booster  # or a NativeBooster (native=True)
    feature_names: list[str]
    version: str = ""

    @classmethod
    def from_model_dir(cls, model_dir: Path, expected_features: list[str] | None = None,
                       version: str = "", native: bool = False) -> Scorer:
        """Load an MLflow LightGBM model directory; refuse it if its feature schema differs.
        ``native``: a :class:`~mlp_platform.runtime.lightgbm_native.NativeBooster` (LightGBM's C
        library without importing the ``lightgbm`` package: the scoring service's start-up)."""
        model_dir = Path(model_dir)
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        flavor = mlmodel.get("flavors", {}).get("lightgbm")
        if not flavor:
            raise ModelSchemaError(f"{model_dir}: not a LightGBM MLflow model")
        if native:
            from mlp_platform.runtime.lightgbm_native import NativeBooster

            booster = NativeBooster.from_file(model_dir / flavor["data"])
        else:
            import lightgbm as lgb

            booster = lgb.Booster(model_file=str(model_dir / flavor["data"]))
        signature = mlmodel.get("signature") or {}
        inputs = json.loads(signature["inputs"]) if signature.get("inputs") else []
        names = [col["name"] for col in inputs] or booster.feature_name()
        if len(names) != booster.num_feature():
            raise ModelSchemaError(f"signature has {len(names)} inputs, the booster {booster.num_feature()}")
        if expected_features is not None and names != list(expected_features):
            missing = sorted(set(expected_features) - set(names))
            extra = sorted(set(names) - set(expected_features))
            raise ModelSchemaError(
                f"model features differ from the feature specification (missing {missing}, extra {extra}, "
                f"or another order)")
        return cls(booster, names, version)

    def score_row(self, row: np.ndarray) -> float:
        return float(self.booster.predict(row.reshape(1, -1), num_threads=1)[0])

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        return self.booster.predict(x, num_threads=1)
