"""Loading a registered version for scoring: the artefact checked against the feature spec, its
trees compiled (:class:`~mlp_platform.runtime.fast_scorer.FastScorer`), its digest, operating
threshold and training population (from its reference profile: the typical values of reasons).
Used by the scoring service and by whoever scores rows the way the service does."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from orjson import loads as orjson_loads


@dataclass(frozen=True)
class Population:
    """One feature in the training population: its sorted non-missing sample and median."""

    sorted_values: np.ndarray

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Population | None:
        arr = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
        arr = np.sort(arr[~np.isnan(arr)])
        return cls(arr) if arr.size else None

    @property
    def median(self) -> float:
        return float(np.median(self.sorted_values))

    def percentile(self, value: float) -> float:
        """Share of the population strictly below ``value`` plus half of the ties (mid-rank), in [0, 1]."""
        lo = np.searchsorted(self.sorted_values, value, side="left")
        hi = np.searchsorted(self.sorted_values, value, side="right")
        return float((lo + hi) / 2 / self.sorted_values.size)


def populations_from_profile(profile: Mapping, feature_names: Sequence[str]) -> dict[str, Population]:
    """The training populations of ``feature_names`` from a reference profile's JSON (its joint row
    sample: ``profile["sample"][name]``, missing as null). Features absent from it get none."""
    sample = profile.get("sample") or {}
    out = {}
    for name in feature_names:
        pop = Population.of(sample[name]) if name in sample else None
        if pop is not None:
            out[name] = pop
    return out


@dataclass
class LoadedModel:
    version: str
    scorer: object  # FastScorer or Scorer: score(row) / contributions(row)
    operating_threshold: float
    artifact_sha256: str
    feature_names: list[str]
    #: The training population of each feature (from the version's reference profile; empty for a
    #: version registered without one): the typical values and directions of its reasons.
    populations: dict[str, Population] = field(default_factory=dict)


def model_flavour(model_dir) -> str:
    """The serving flavour of an MLflow model directory: ``lightgbm`` (compiled fast scoring) or
    ``sklearn`` (the generic slower path of :mod:`mlp_platform.runtime.estimator_scorer`)."""
    from pathlib import Path

    import yaml

    flavours = (yaml.safe_load((Path(model_dir) / "MLmodel").read_text()) or {}).get("flavors") or {}
    for flavour in ("lightgbm", "sklearn"):
        if flavour in flavours:
            return flavour
    raise ValueError(f"{model_dir}: MLflow model of flavours {sorted(flavours)}; a decider serves lightgbm or sklearn")


def serving_scorer(model_dir, feature_names: Sequence[str], *, version: str = "", backend: str = "auto",
                   populations: Mapping[str, Population] | None = None, batch_kernel: str = "auto"):
    """The scorer the service uses for a registered model directory: LightGBM compiled (its schema
    checked against ``feature_names``), any other flavour through the generic estimator path (with
    the training population's medians as the reference of its contributions). ``batch_kernel``: the
    FastScorer's (``rows`` where nothing scores whole days: the service)."""
    from mlp_platform.runtime.scorer import Scorer

    if model_flavour(model_dir) == "lightgbm":
        from mlp_platform.runtime.fast_scorer import FastScorer

        base = Scorer.from_model_dir(model_dir, list(feature_names), version=version, native=True)
        return FastScorer.from_booster(base.booster, base.feature_names, backend=backend, batch_kernel=batch_kernel)
    from mlp_platform.runtime.estimator_scorer import EstimatorScorer

    typical = {n: p.median for n, p in (populations or {}).items()}
    return EstimatorScorer.from_model_dir(model_dir, list(feature_names), version=version, typical=typical)


def registry_loader(settings, scorer_backend: str = "auto", decider=None,
                    batch_kernel: str = "auto") -> Callable[[str], LoadedModel]:
    """Load a version of ``decider``'s registered model (default: the settings' default decider) from
    the registry (:func:`~mlp_platform.registry.tracking_server.read_only_registry`) through the runtime scorer (its spec's schema checked), with its training
    population when the version has a reference profile. ``scorer_backend``: the
    :class:`~mlp_platform.runtime.fast_scorer.FastScorer` backend (auto, compiled, lightgbm);
    ``batch_kernel``: its whole-day kernel (``rows`` for the service, which never scores whole days:
    a new pod then compiles only the model's own code)."""
    from mlp_platform.deciders.declaration import load_decider
    from mlp_platform.registry.mlflow_registry import REFERENCE_PROFILE
    from mlp_platform.registry.tracking_server import read_only_registry

    decider = decider or load_decider(settings.deciders_dir)
    registry = read_only_registry(settings, decider)  # a tracking server: its REST API, no MLflow client
    spec = decider.spec

    def load(version: str) -> LoadedModel:
        model_dir = registry.model_dir(version)
        profile = registry.load_text(registry.ref(version).run_id, REFERENCE_PROFILE)
        populations = {} if profile is None else populations_from_profile(orjson_loads(profile), spec.feature_names)
        scorer = serving_scorer(model_dir, spec.feature_names, version=version, backend=scorer_backend,
                                populations=populations, batch_kernel=batch_kernel)
        digest = hashlib.sha256()
        for path in sorted(model_dir.rglob("*")):
            if path.is_file():
                digest.update(path.read_bytes())
        threshold = float(registry.version_tags(version).get("operating_threshold", "0.5"))
        return LoadedModel(version, scorer, threshold, digest.hexdigest(), list(spec.feature_names), populations)

    return load
