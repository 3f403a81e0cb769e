"""Training/serving skew: the features the online service logged vs the same transactions' features
recomputed offline (the training path), per feature.

Rows are matched on ``key`` (default ``transaction_id``); each side must have unique keys. For each
feature and each matched row:

* null (or NaN) on both sides matches;
* null on one side and a value on the other is a mismatch (``n_null_mismatch``);
* two values mismatch when ``|served - offline| > atol + rtol * |offline|`` (``numpy.isclose``
  semantics with the offline value as the reference; defaults ``rtol=1e-9``, ``atol=1e-12``: the
  two paths are meant to compute the same number, so only float noise is tolerated).

Per feature: ``mismatch_rate`` (mismatches / matched rows), ``n_mismatch``, ``n_null_mismatch``,
the mean and max absolute and relative size of the value mismatches (relative to ``|offline|``;
a mismatch against an offline 0 has no relative size and is left out of the relative figures;
``None`` when there are none), and up to ``n_examples`` example keys (largest absolute difference
first, null mismatches after). Rows on one side only are counted in the summary (``only_served``,
``only_offline``, with example keys) and are not part of any mismatch rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from mlp_platform.evaluation.metrics import to_jsonable
from mlp_platform.monitoring.statistics import numeric_columns


@dataclass
class SkewReport:
    """Per-feature skew of one day and its summary (see :meth:`to_dict`)."""

    features: dict[str, dict[str, Any]]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """``{name: {"mismatch_rate", ...}, ..., "summary": {...}}``, JSON-safe."""
        return to_jsonable({**self.features, "summary": self.summary})

    @property
    def mismatched_features(self) -> list[str]:
        return [name for name, entry in self.features.items() if entry["n_mismatch"]]


def _check(frame: pl.DataFrame, key: str, what: str) -> None:
    if key not in frame.columns:
        raise ValueError(f"{what} frame lacks the key column {key!r}")
    if frame[key].null_count():
        raise ValueError(f"{what} frame has {frame[key].null_count()} rows with a null {key!r}")
    duplicated = frame.height - frame[key].n_unique()
    if duplicated:
        examples = frame.filter(pl.col(key).is_duplicated())[key].unique().sort().head(5).to_list()
        raise ValueError(f"{what} frame has {duplicated} duplicated {key!r} values, e.g. {examples}")


def _examples(frame: pl.DataFrame, key: str, n: int) -> list[Any]:
    return frame[key].sort().head(n).to_list()


def skew_report(
    served: pl.DataFrame,
    offline: pl.DataFrame,
    feature_names: list[str],
    key: str = "transaction_id",
    rtol: float = 1e-9,
    atol: float = 1e-12,
    *,
    n_examples: int = 5,
) -> SkewReport:
    """Compare ``served`` (features logged by the service) with ``offline`` (recomputed offline).

    Raises ``ValueError`` when a frame lacks the key or a feature, has null or duplicated keys, or a
    feature is not numeric.
    """
    if rtol < 0 or atol < 0:
        raise ValueError("rtol and atol must be >= 0")
    _check(served, key, "served")
    _check(offline, key, "offline")
    names = list(feature_names)
    numeric_columns(served.head(0), names, "served")
    numeric_columns(offline.head(0), names, "offline")
    left = served.select([pl.col(key)] + [pl.col(n).cast(pl.Float64) for n in names])
    right = offline.select([pl.col(key)] + [pl.col(n).cast(pl.Float64).alias(f"{n}__offline") for n in names])
    only_served = left.join(right.select(key), on=key, how="anti")
    only_offline = right.select(key).join(left.select(key), on=key, how="anti")
    both = left.join(right, on=key, how="inner").sort(key)
    keys = both[key]
    n_both = both.height
    features: dict[str, dict[str, Any]] = {}
    for name in names:
        a = both[name].fill_nan(None).to_numpy().astype(np.float64)
        b = both[f"{name}__offline"].fill_nan(None).to_numpy().astype(np.float64)
        a_missing, b_missing = np.isnan(a), np.isnan(b)
        null_mismatch = a_missing != b_missing
        valued = ~a_missing & ~b_missing
        diff = np.where(valued, np.abs(a - b), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            value_mismatch = valued & (diff > atol + rtol * np.abs(b))
            rel = np.where(b != 0, diff / np.abs(b), np.inf)
        mismatch = value_mismatch | null_mismatch
        n_value = int(value_mismatch.sum())
        order = np.flatnonzero(value_mismatch)
        order = order[np.argsort(-diff[order], kind="stable")]
        example_rows = np.concatenate((order, np.flatnonzero(null_mismatch)))[:n_examples]
        finite_rel = rel[value_mismatch & np.isfinite(rel)]
        features[name] = {
            "mismatch_rate": float(mismatch.sum() / n_both) if n_both else math.nan,
            "n_mismatch": int(mismatch.sum()),
            "n_value_mismatch": n_value,
            "n_null_mismatch": int(null_mismatch.sum()),
            "n_compared": n_both,
            "mean_abs_diff": float(diff[value_mismatch].mean()) if n_value else None,
            "max_abs_diff": float(diff[value_mismatch].max()) if n_value else None,
            "mean_rel_diff": float(finite_rel.mean()) if finite_rel.size else None,
            "max_rel_diff": float(finite_rel.max()) if finite_rel.size else None,
            "example_ids": keys.gather(example_rows).to_list() if example_rows.size else [],
        }
    rates = [entry["mismatch_rate"] for entry in features.values() if not math.isnan(entry["mismatch_rate"])]
    summary = {
        "key": key,
        "n_served": served.height,
        "n_offline": offline.height,
        "n_matched": n_both,
        "only_served": only_served.height,
        "only_offline": only_offline.height,
        "only_served_examples": _examples(only_served, key, n_examples),
        "only_offline_examples": _examples(only_offline, key, n_examples),
        "n_features": len(names),
        "n_features_mismatched": sum(entry["n_mismatch"] > 0 for entry in features.values()),
        "max_mismatch_rate": max(rates) if rates else None,
        "rtol": rtol,
        "atol": atol,
    }
    return SkewReport(features, summary)
