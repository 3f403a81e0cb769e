"""The drift statistics' exact vectorised kernels: PSI on reference bins, the two-sample KS statistic
and its p-value, the Wasserstein-1 distance, missing rates (definitions in
:mod:`mlp_platform.monitoring.drift`). Below both the reference profile (which calibrates thresholds
with them) and the day's drift report (which applies them); imports neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import polars as pl
from scipy import stats


class ColumnReference(Protocol):
    """What the statistics read of a feature's reference
    (:class:`mlp_platform.monitoring.profile.FeatureProfile`)."""

    sample: np.ndarray
    sample_std: float
    proportions: np.ndarray
    edges: np.ndarray
    missing_rate: float


#: Proportion used for an empty PSI bin (on either side).
PSI_EPSILON = 1e-4
#: Floor of the reference standard deviation that normalises the Wasserstein distance (Evidently's).
STD_FLOOR = 0.001
#: Name of the score's entry in profiles and reports.
PREDICTION = "prediction"


# ---------------------------------------------------------------------------------------------------
# Column preparation and the statistic kernels
# ---------------------------------------------------------------------------------------------------


def numeric_columns(frame: pl.DataFrame, names: list[str], what: str = "frame") -> list[np.ndarray]:
    """The named columns as float64 numpy arrays, null -> NaN. Raises on absent or non-numeric columns."""
    absent = [name for name in names if name not in frame.columns]
    if absent:
        raise ValueError(f"{what} lacks feature columns {absent}")
    bad = [name for name in names if not (frame.schema[name].is_numeric() or frame.schema[name] == pl.Boolean)]
    if bad:
        raise ValueError(
            f"{what} has non-numeric feature columns {[(n, str(frame.schema[n])) for n in bad]}")
    cast = frame.select([pl.col(name).cast(pl.Float64) for name in names])
    return [cast.to_series(i).to_numpy() for i in range(len(names))]


@dataclass(frozen=True)
class SortedColumn:
    """A column's non-missing values sorted, their prefix sums, and the number of missing values."""

    values: np.ndarray
    n_missing: int
    _prefix: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def of(cls, column: np.ndarray) -> SortedColumn:
        column = np.asarray(column, dtype=np.float64)
        if np.isinf(column).any():
            raise ValueError("infinite values cannot be profiled (use null for unknown values)")
        missing = np.isnan(column)
        n_missing = int(missing.sum())
        values = column[~missing] if n_missing else column
        return cls(np.sort(values), n_missing)

    @property
    def n(self) -> int:
        return int(self.values.size) + self.n_missing

    @property
    def prefix(self) -> np.ndarray:
        """``prefix[i]`` = sum of the ``i`` smallest values."""
        if not self._prefix:
            out = np.empty(self.values.size + 1)
            out[0] = 0.0
            np.cumsum(self.values, out=out[1:])
            self._prefix.append(out)
        return self._prefix[0]


def bin_proportions(edges: np.ndarray, column: SortedColumn) -> np.ndarray:
    """Proportions of the value bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)`` and the missing bin."""
    n = column.n
    cut = np.searchsorted(column.values, edges, side="right")
    counts = np.diff(np.concatenate(([0], cut, [column.values.size])))
    counts = np.append(counts, column.n_missing)
    return counts / n if n else np.zeros(counts.size)


def psi(reference: np.ndarray, current: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two proportion vectors; empty bins count as ``epsilon``."""
    r = np.where(reference > 0, reference, epsilon)
    c = np.where(current > 0, current, epsilon)
    return float(np.sum((r - c) * np.log(r / c)))


def ks_statistic(sample: np.ndarray, column: SortedColumn) -> float:
    """``sup |F_sample - F_column|`` over non-missing values (``sample`` sorted); ``nan`` if either is empty.

    Both ECDFs are right-continuous steps, so the sup is reached at a data point; between two
    distinct sample values the difference is monotone in the day's ECDF, so it suffices to evaluate
    at each distinct sample value ``u_k`` (``F_day(u_k)``) and just below it (``F_day(u_k-)``).
    """
    x = column.values
    m, n = sample.size, x.size
    if m == 0 or n == 0:
        return math.nan
    last = np.flatnonzero(np.append(sample[1:] != sample[:-1], True))
    u = sample[last]
    c = (last + 1) / m
    c_prev = np.concatenate(([0.0], c[:-1]))
    le = np.searchsorted(x, u, side="right") / n
    lt = np.searchsorted(x, u, side="left") / n
    return float(max(np.max(np.abs(c - le)), np.max(np.abs(c_prev - lt))))


def ks_pvalue(statistic: float, m: int, n: int) -> float:
    """Asymptotic two-sided p-value of the two-sample KS statistic (scipy's ``method="asymp"``)."""
    if not m or not n or math.isnan(statistic):
        return math.nan
    big, small = max(m, n), min(m, n)
    en = float(big) * float(small) / (big + small)
    return float(np.clip(stats.kstwo.sf(statistic, np.round(en)), 0.0, 1.0))


def wasserstein1(sample: np.ndarray, column: SortedColumn) -> float:
    """``integral |F_sample(t) - F_column(t)| dt`` (W1) exactly; ``nan`` if either side is empty.

    Breakpoints: the distinct sample values (where ``F_sample`` steps), the day's quantiles at the
    sample's ECDF levels (where ``F_day - F_sample`` can change sign) and the day's extremes. On
    each segment between breakpoints ``F_sample`` is a constant ``c`` and ``F_day - c`` has one
    sign, so the segment's integral is ``|integral F_day - c * width|``, with the integral of the
    day's ECDF from its prefix sums.
    """
    x = column.values
    m, n = sample.size, x.size
    if m == 0 or n == 0:
        return math.nan
    last = np.flatnonzero(np.append(sample[1:] != sample[:-1], True))
    u = sample[last]
    cum = (last + 1).astype(np.int64)
    rank = (cum * n + m - 1) // m  # ceil(n * F_sample(u_k)): the day's order statistic reaching that level
    crossing = x[np.clip(rank, 1, n) - 1]
    points = np.unique(np.concatenate((u, crossing, x[:1], x[-1:])))
    if points.size < 2:
        return 0.0
    f_ref = np.searchsorted(sample, points[:-1], side="right") / m
    cnt = np.searchsorted(x, points, side="right")
    prefix = column.prefix
    width = np.diff(points)
    right = points[1:]
    inside = cnt[1:] - cnt[:-1]
    # n * integral of F_day over [b_j, b_j+1): points at or below b_j contribute the full width,
    # points inside (b_j, b_j+1] contribute b_j+1 - x.
    area = cnt[:-1] * width + (inside * right - (prefix[cnt[1:]] - prefix[cnt[:-1]]))
    return float(np.sum(np.abs(area / n - f_ref * width)))


def reference_std(sample: np.ndarray) -> float:
    """The Wasserstein normaliser: population std of the reference sample, floored at :data:`STD_FLOOR`."""
    return max(float(np.std(sample)), STD_FLOOR) if sample.size else STD_FLOOR


def column_statistics(profile: ColumnReference, column: SortedColumn, *, pvalue: bool = True) -> dict[str, float]:
    """PSI, KS (and p-value), normalised and raw W1, missing rates of one prepared column."""
    sample = profile.sample
    w_raw = wasserstein1(sample, column)
    ks = ks_statistic(sample, column)
    n = column.n
    out = {
        "psi": psi(profile.proportions, bin_proportions(profile.edges, column)),
        "ks": ks,
        "wasserstein": w_raw / profile.sample_std,
        "wasserstein_raw": w_raw,
        "missing_rate_reference": profile.missing_rate,
        "missing_rate_current": column.n_missing / n if n else math.nan,
    }
    if pvalue:
        out["ks_pvalue"] = ks_pvalue(ks, sample.size, column.values.size)
    return out
