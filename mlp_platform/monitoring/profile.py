"""Reference profile of a trained model: what its training data and scores looked like, compactly.

This module owns :class:`ReferenceProfile` (built once per model from the features of its training
window and its scores, logged to MLflow as ``reference_profile.json``) and the calibration of the
drift thresholds. Per feature (and per score, as ``prediction``) it keeps

* **reference bins** for PSI, from the whole training window: a feature with at most
  :data:`MAX_DISCRETE_VALUES` distinct values gets one bin per value (edges = the values), any
  other feature ``n_bins`` (default 10) quantile bins whose edges are observed values at the levels
  ``1/n_bins, ..., (n_bins-1)/n_bins`` (inverted-CDF quantiles), with duplicate edges merged, so a
  value holding 40% of the rows (ties, e.g. zero counts) is one bin and a constant feature has one
  value bin. Bins are right-closed: ``(-inf, e0], (e0, e1], ..., (e_last, inf)``, plus a bin for
  missing values (null or NaN). The proportions of every bin over all rows (missing included);
* missing rate, mean and population standard deviation (non-missing values, whole window);
* a **reference sample**: the column of a joint sample of at most ``max_sample`` rows (default
  5000, drawn without replacement, seed ``seed``; the same rows for every feature and the score).
  Its sorted non-missing values are the reference side of KS and Wasserstein, and the joint rows
  are the reference side of the Evidently report. Only the joint sample is stored; the per-feature
  sorted samples are rebuilt from it on load;
* **calibrated thresholds**: for each grid size ``n_g`` in ``calibration_sizes`` (default 1000,
  10 000, 100 000 rows), ``n_boot`` (default 50) "null days" of ``n_g`` rows are drawn with
  replacement from the training window (the same rows for every column, like a real day), the
  drift statistics of each null day are computed against the profile, and the ``quantile`` (default
  0.99; with 50 draws close to the maximum, i.e. conservative) of each statistic is kept. At
  infinite size the statistics tend to their value for the whole window (PSI: 0, since the bins'
  proportions are the window's; KS and Wasserstein: the reference sample against the whole window,
  kept as ``at_infinity``). :meth:`FeatureProfile.thresholds` interpolates linearly in
  ``n**-0.5`` (KS, Wasserstein: their sampling noise scales as ``1/sqrt(n)``) or ``n**-1`` (PSI:
  roughly chi-square / n) between these points, and beyond the smallest grid size extrapolates
  along the same law. The size read is not the day's row count ``n`` but ``n * N / (n + N)``
  (``N``: rows of the training window): the window is itself a sample of ``N`` rows of the process,
  so a day of the same process differs from it like a bootstrap day of that effective size
  (PSI's null is about ``chi2 * (1/n + 1/N)``). Without this, days much larger than the window
  would be judged against the window's own sampling noise, and flagged (measured with a 300k-row
  window and fresh no-drift days of 300k rows: 19-37% of each statistic's values above threshold
  without it, 4-7% with it). For days far larger than the window the significance test is less
  reliable: values unseen in the
  window (a count's rare tail) appear in a big day and cost PSI through the empty-bin epsilon, and
  the reference sample's deviation from the process is only estimated by its deviation from the
  window (measured on fresh no-drift days of 1M rows against a 300k-row window: 15% of PSI, 4% of
  KS and 7% of Wasserstein values above threshold). There the practical floor of the drift rule
  decides (none of those days had a drifted feature).

Cost: the calibration dominates (``n_boot`` x sizes x columns statistic evaluations, one sort
each): about 10-12 s for 31 columns on the shared 2-vCPU machine whatever the window's size (see
``docs/benchmarks.md``); pass a smaller ``n_boot`` / ``calibration_sizes`` in tests.

  With ``days`` (the day of every row), each real day of the window with at least ``min_day_rows``
  rows is also compared with the profile, and the upper 3-sigma control limit of each statistic over
  those days (never below their largest value) is a **day floor** under every threshold: rows of one real day are not independent (they share
  merchants, customers and fraud episodes; label-rate features move by whole weeks), so i.i.d. row
  draws underestimate the day-to-day variation a monitored day shows without any drift.

JSON: :meth:`ReferenceProfile.to_json` / :meth:`ReferenceProfile.from_json` round-trip exactly
(floats in shortest round-trip form, NaN as ``null``); with 30-32 features, the score and 5000 sampled
rows it is about 1.4-2.3 MB (measured).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mlp_platform.monitoring.statistics import (
    PREDICTION,
    SortedColumn,
    bin_proportions,
    column_statistics,
    ks_statistic,
    numeric_columns,
    reference_std,
    wasserstein1,
)

#: Features with at most this many distinct values get one PSI bin per value.
MAX_DISCRETE_VALUES = 20
DEFAULT_MAX_SAMPLE = 5000
DEFAULT_CALIBRATION_SIZES = (1000, 10_000, 100_000)
SCHEMA_VERSION = 1

#: Statistic -> exponent ``a`` of its sampling noise ``~ n**-a`` (threshold interpolation variable).
_NOISE_EXPONENT = {"psi": 1.0, "ks": 0.5, "wasserstein": 0.5}


@dataclass
class Calibration:
    """Null-day quantiles of each statistic at the grid sizes, and the limits at infinite size."""

    sizes: list[int]
    quantiles: dict[str, list[float]]
    at_infinity: dict[str, float]
    #: The 3-sigma control limit of each statistic over the real days of the reference window (each
    #: day against the profile): the natural day-to-day variation, which i.i.d. row draws underestimate
    #: (a day's rows share merchants, customers and fraud episodes). Thresholds never go below it.
    day_floor: dict[str, float] = field(default_factory=dict)

    def threshold(self, statistic: str, n: float) -> float:
        floor = self.day_floor.get(statistic)
        value = self._iid_threshold(statistic, n)
        if floor is None or math.isnan(floor):
            return value
        return floor if math.isnan(value) else max(value, floor)

    def _iid_threshold(self, statistic: str, n: float) -> float:
        a = _NOISE_EXPONENT[statistic]
        values = np.asarray(self.quantiles[statistic], dtype=np.float64)
        limit = self.at_infinity[statistic]
        if not self.sizes or np.isnan(values).all():
            return math.nan
        z = max(float(n), 1.0) ** -a
        zs = np.asarray(self.sizes, dtype=np.float64) ** -a  # decreasing with size
        order = np.argsort(zs)
        zs, values = zs[order], values[order]
        if z > zs[-1]:  # a day smaller than the smallest grid size: follow the noise law
            return float(limit + (values[-1] - limit) * z / zs[-1])
        return float(np.interp(z, np.concatenate(([0.0], zs)), np.concatenate(([limit], values))))

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "quantiles": self.quantiles, "at_infinity": self.at_infinity,
                "day_floor": self.day_floor}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls([int(s) for s in data["sizes"]],
                   {k: [_float(v) for v in vals] for k, vals in data["quantiles"].items()},
                   {k: _float(v) for k, v in data["at_infinity"].items()},
                   {k: _float(v) for k, v in (data.get("day_floor") or {}).items()})


@dataclass
class FeatureProfile:
    """The reference distribution of one column (see the module docstring)."""

    name: str
    n_rows: int
    missing_rate: float
    mean: float
    std: float
    n_distinct: int
    edges: np.ndarray
    proportions: np.ndarray
    sample: np.ndarray
    calibration: Calibration

    @property
    def sample_std(self) -> float:
        """Population std of the reference sample, floored: the Wasserstein normaliser."""
        return reference_std(self.sample)

    def thresholds(self, n: int) -> dict[str, float]:
        """Calibrated thresholds of ``psi``, ``ks`` and ``wasserstein`` for a day of ``n`` rows,
        read at the effective size ``n * N / (n + N)`` (``N``: training rows; see the module docstring)."""
        n_eff = n * self.n_rows / (n + self.n_rows) if n > 0 else 0.0
        return {name: self.calibration.threshold(name, n_eff) for name in _NOISE_EXPONENT}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "n_rows": self.n_rows, "missing_rate": self.missing_rate,
            "mean": self.mean, "std": self.std, "n_distinct": self.n_distinct,
            "edges": self.edges.tolist(), "proportions": self.proportions.tolist(),
            "calibration": self.calibration.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], sample: np.ndarray) -> FeatureProfile:
        return cls(data["name"], int(data["n_rows"]), _float(data["missing_rate"]), _float(data["mean"]),
                   _float(data["std"]), int(data["n_distinct"]), np.asarray(data["edges"], dtype=np.float64),
                   np.asarray(data["proportions"], dtype=np.float64), _sorted_sample(sample),
                   Calibration.from_dict(data["calibration"]))


@dataclass
class ReferenceProfile:
    """Reference profile of one model: per-feature profiles, the score's, and the joint row sample."""

    feature_names: list[str]
    features: dict[str, FeatureProfile]
    prediction: FeatureProfile | None
    sample: dict[str, np.ndarray]  # joint row sample: column -> float64 values, NaN = missing
    n_rows: int
    seed: int
    calibration_quantile: float
    n_boot: int
    created_at: str

    def sample_frame(self, columns: list[str] | None = None) -> pl.DataFrame:
        """The joint reference sample as a frame (missing values as null), for the Evidently report."""
        names = columns or list(self.sample)
        absent = [name for name in names if name not in self.sample]
        if absent:
            raise ValueError(f"the reference sample has no columns {absent}")
        return pl.DataFrame({name: self.sample[name] for name in names}).fill_nan(None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "created_at": self.created_at,
            "n_rows": self.n_rows,
            "seed": self.seed,
            "calibration_quantile": self.calibration_quantile,
            "n_boot": self.n_boot,
            "feature_names": self.feature_names,
            "features": {name: self.features[name].to_dict() for name in self.feature_names},
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "sample": {name: [None if math.isnan(v) else v for v in values.tolist()]
                       for name, values in self.sample.items()},
        }

    def to_json(self) -> str:
        return json.dumps(_nan_to_none(self.to_dict()), separators=(",", ":"), allow_nan=False)

    def write(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (parents created) and return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, path: str | Path) -> ReferenceProfile:
        """Load a profile written by :meth:`write` (or logged to MLflow as ``reference_profile.json``)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no reference profile at {path}")
        return cls.from_json(path.read_text())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceProfile:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"unsupported reference profile schema_version {version!r} (expected {SCHEMA_VERSION})")
        sample = {name: np.array([math.nan if v is None else v for v in values], dtype=np.float64)
                  for name, values in data["sample"].items()}
        names = list(data["feature_names"])
        features = {name: FeatureProfile.from_dict(data["features"][name], sample[name]) for name in names}
        prediction = (None if data["prediction"] is None
                      else FeatureProfile.from_dict(data["prediction"], sample[PREDICTION]))
        return cls(names, features, prediction, sample, int(data["n_rows"]), int(data["seed"]),
                   float(data["calibration_quantile"]), int(data["n_boot"]), data["created_at"])

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"reference profile is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or "features" not in data:
            raise ValueError("reference profile JSON lacks 'features'")
        return cls.from_dict(data)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sorted_sample(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.sort(values[~np.isnan(values)])


def _edges(column: SortedColumn, n_bins: int) -> tuple[np.ndarray, int]:
    values = column.values
    if values.size == 0:
        return np.zeros(0), 0
    distinct = values[np.append(True, values[1:] != values[:-1])]  # values are sorted
    n_distinct = int(distinct.size)
    if n_distinct <= MAX_DISCRETE_VALUES:
        return distinct, n_distinct
    levels = np.arange(1, n_bins) / n_bins
    index = np.clip(np.ceil(levels * values.size).astype(np.int64) - 1, 0, values.size - 1)
    return np.unique(values[index]), n_distinct


def _profile_column(name: str, column: np.ndarray, sample: np.ndarray, n_bins: int) -> FeatureProfile:
    prepared = SortedColumn.of(column)
    edges, n_distinct = _edges(prepared, n_bins)
    values = prepared.values
    sorted_sample = _sorted_sample(sample)
    at_infinity = {
        "psi": 0.0,
        "ks": ks_statistic(sorted_sample, prepared),
        "wasserstein": wasserstein1(sorted_sample, prepared) / reference_std(sorted_sample),
    }
    return FeatureProfile(
        name=name,
        n_rows=prepared.n,
        missing_rate=prepared.n_missing / prepared.n,
        mean=float(values.mean()) if values.size else math.nan,
        std=float(values.std()) if values.size else math.nan,
        n_distinct=n_distinct,
        edges=edges,
        proportions=bin_proportions(edges, prepared),
        sample=sorted_sample,
        calibration=Calibration([], {k: [] for k in _NOISE_EXPONENT}, at_infinity),
    )


def _calibrate(profiles: list[FeatureProfile], columns: list[np.ndarray], sizes: tuple[int, ...],
               n_boot: int, quantile: float, seed: int) -> None:
    rng = np.random.default_rng([seed, 1])
    n_rows = columns[0].size
    draws: dict[int, list[list[dict[str, float]]]] = {}
    for size in sizes:
        per_column: list[list[dict[str, float]]] = [[] for _ in profiles]
        for _ in range(n_boot):
            rows = np.sort(rng.integers(0, n_rows, size))  # sorted: a cache-friendly gather, same multiset
            for i, (profile, column) in enumerate(zip(profiles, columns, strict=True)):
                per_column[i].append(column_statistics(profile, SortedColumn.of(column[rows]), pvalue=False))
        draws[size] = per_column
    for i, profile in enumerate(profiles):
        quantiles: dict[str, list[float]] = {}
        for statistic in _NOISE_EXPONENT:
            quantiles[statistic] = []
            for size in sizes:
                values = np.array([d[statistic] for d in draws[size][i]], dtype=np.float64)
                values = values[~np.isnan(values)]
                quantiles[statistic].append(float(np.quantile(values, quantile)) if values.size else math.nan)
        profile.calibration = Calibration(list(sizes), quantiles, profile.calibration.at_infinity)


def _control_limit(values: list[float]) -> float:
    """The upper 3-sigma control limit of a statistic over the reference days, and never below the
    largest reference day (a handful of days underestimates the tail: their maximum alone is too tight)."""
    arr = np.asarray(values, dtype=np.float64)
    limit = float(arr.mean() + 3.0 * arr.std(ddof=1)) if arr.size > 1 else float(arr[0])
    return max(limit, float(arr.max()))


def _calibrate_days(profiles: list[FeatureProfile], columns: list[np.ndarray], days: np.ndarray,
                    min_rows: int) -> list[str]:
    """Each real day of the window (with at least ``min_rows`` rows) against the profile; the largest
    value of each statistic becomes the profile's day floor. Returns the days used."""
    labels, inverse = np.unique(days, return_inverse=True)
    used = [i for i in range(labels.size) if np.count_nonzero(inverse == i) >= min_rows]
    for profile, column in zip(profiles, columns, strict=True):
        floors = {name: [] for name in _NOISE_EXPONENT}
        for i in used:
            stats = column_statistics(profile, SortedColumn.of(column[inverse == i]), pvalue=False)
            for name in _NOISE_EXPONENT:
                if not math.isnan(stats[name]):
                    floors[name].append(stats[name])
        profile.calibration.day_floor = {name: _control_limit(v) for name, v in floors.items() if v}
    return [str(labels[i]) for i in used]


def build_reference_profile(
    frame: pl.DataFrame,
    feature_names: list[str],
    scores: np.ndarray | None,
    *,
    seed: int = 0,
    max_sample: int = DEFAULT_MAX_SAMPLE,
    n_bins: int = 10,
    n_boot: int = 50,
    calibration_sizes: tuple[int, ...] = DEFAULT_CALIBRATION_SIZES,
    quantile: float = 0.99,
    days: np.ndarray | None = None,
    min_day_rows: int = 50,
) -> ReferenceProfile:
    """Profile of a model's training data (``frame``: the training window's rows with the
    ``feature_names`` columns) and its ``scores`` on those rows (``None``: no prediction profile).

    Raises ``ValueError`` on an empty frame, absent or non-numeric features, infinite values, scores
    of the wrong length or non-finite scores, or bad settings.
    """
    if frame.height == 0:
        raise ValueError("cannot profile an empty training frame")
    if not feature_names:
        raise ValueError("feature_names is empty")
    if len(set(feature_names)) != len(feature_names) or PREDICTION in feature_names:
        raise ValueError(f"feature names must be unique and not {PREDICTION!r}")
    if max_sample < 2 or n_bins < 2 or n_boot < 1 or not 0.5 <= quantile < 1:
        raise ValueError("need max_sample >= 2, n_bins >= 2, n_boot >= 1 and 0.5 <= quantile < 1")
    if not calibration_sizes or min(calibration_sizes) < 1:
        raise ValueError(f"calibration_sizes must be positive row counts, got {calibration_sizes!r}")
    columns = numeric_columns(frame, list(feature_names), "training frame")
    names = list(feature_names)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 1 or scores.size != frame.height:
            raise ValueError(f"scores must be one per training row ({frame.height}), got shape {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("training scores must be finite")
        columns.append(scores)
        names.append(PREDICTION)
    rng = np.random.default_rng(seed)
    take = min(max_sample, frame.height)
    rows = np.sort(rng.choice(frame.height, size=take, replace=False))
    sample = {name: column[rows] for name, column in zip(names, columns, strict=True)}
    profiles = [_profile_column(name, column, sample[name], n_bins)
                for name, column in zip(names, columns, strict=True)]
    _calibrate(profiles, columns, tuple(sorted(set(calibration_sizes))), n_boot, quantile, seed)
    if days is not None:
        days = np.asarray(days)
        if days.shape != (frame.height,):
            raise ValueError(f"days must be one day per training row ({frame.height}), got shape {days.shape}")
        _calibrate_days(profiles, columns, days, min_day_rows)
    by_name = dict(zip(names, profiles, strict=True))
    return ReferenceProfile(
        feature_names=list(feature_names),
        features={name: by_name[name] for name in feature_names},
        prediction=by_name.get(PREDICTION),
        sample=sample,
        n_rows=frame.height,
        seed=seed,
        calibration_quantile=quantile,
        n_boot=n_boot,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
