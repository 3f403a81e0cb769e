"""Features computed from the request alone (a loan application), from the decider's feature spec: the
offline engine over a frame (training sets, batch scoring, backtests) and the online engine over one
request (the scoring service). Both read the same resolved :class:`~mlp_platform.features.spec.Feature`
list; their parity is tested on generated, real and hostile applications.

Semantics shared by both engines (any input the rule does not cover is missing, NaN in the matrix):

* ``request_value``: the column's number; null, NaN or infinite is missing.
* ``level_code``: the position of the column's level (stripped of ASCII whitespace, lower case) in
  the declared levels; an unknown level or null is missing. Only the ASCII set is stripped (space,
  tab, newline, vertical tab, form feed, carriage return) because that is what the warehouses' TRIM
  strips in the generated dbt model too (``dbt_codegen.request_feature_sql``).
* ``feature_ratio``: numerator / denominator (two earlier features); missing if either is missing or
  the denominator is 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import polars as pl

from mlp_platform.features.spec import REQUEST_ONLY_KINDS, FeatureSpec, SpecError

#: Stripped around a level by every engine (Python, polars, the warehouses' SQL).
LEVEL_WHITESPACE = " \t\n\x0b\x0c\r"


def _request_features(spec: FeatureSpec):
    features = spec.features
    unsupported = sorted({f.kind for f in features if f.kind not in REQUEST_ONLY_KINDS})
    if unsupported:
        raise SpecError(f"kinds {unsupported} need the transaction engines (online store, dbt), "
                        f"not the request-only one (allowed: {sorted(REQUEST_ONLY_KINDS)})")
    return features


def feature_frame(spec: FeatureSpec, frame: pl.DataFrame, keep: tuple[str, ...] = ()) -> pl.DataFrame:
    """The spec's features of every row of ``frame`` (columns of the spec's request schema), in the
    spec's order, Float64 with nulls for missing values; ``keep`` columns of ``frame`` first."""
    exprs: dict[str, pl.Expr] = {}
    for f in _request_features(spec):
        if f.kind == "request_value":
            value = pl.col(f.column).cast(pl.Float64)
            expr = pl.when(value.is_finite()).then(value)
        elif f.kind == "level_code":
            expr = (pl.col(f.column).str.strip_chars(LEVEL_WHITESPACE).str.to_lowercase()
                    .replace_strict(f.params, default=None, return_dtype=pl.Float64))
        else:  # feature_ratio
            num, den = exprs[f.numerator], exprs[f.denominator]
            expr = pl.when(den.is_not_null() & (den != 0) & num.is_not_null()).then(num / den)
            expr = pl.when(expr.is_finite()).then(expr)
        exprs[f.name] = expr.cast(pl.Float64)
    missing = sorted({f.column for f in spec.features if f.column} - set(frame.columns))
    if missing:
        raise ValueError(f"the frame lacks request column(s) {', '.join(missing)}")
    return frame.select(*keep, *[e.alias(n) for n, e in exprs.items()])


class RequestFeaturizer:
    """The online engine: one request (a mapping of the request schema's fields) to the feature row in
    the spec's order (NaN for missing) and the names of the missing features."""

    def __init__(self, spec: FeatureSpec) -> None:
        features = _request_features(spec)
        index = {f.name: i for i, f in enumerate(features)}
        self.feature_names = [f.name for f in features]
        self._plan = [(f.kind, f.column, dict(f.params), index.get(f.numerator or ""), index.get(f.denominator or ""))
                      for f in features]

    def row(self, request: Mapping[str, Any]) -> tuple[list[float], list[str]]:
        out: list[float] = []
        nan = math.nan
        for kind, column, params, num, den in self._plan:
            if kind == "request_value":
                value = _number(request.get(column))
            elif kind == "level_code":
                raw = request.get(column)
                code = params.get(raw.strip(LEVEL_WHITESPACE).lower()) if isinstance(raw, str) else None
                value = nan if code is None else float(code)
            else:
                a, b = out[num], out[den]
                value = a / b if b == b and a == a and b != 0 else nan
                value = value if math.isfinite(value) else nan
            out.append(value)
        return out, [n for n, v in zip(self.feature_names, out, strict=True) if v != v]


def _number(value: Any) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def aligned_features(spec: FeatureSpec, rows: pl.DataFrame, key: str, table: pl.DataFrame | None = None
                     ) -> pl.DataFrame:
    """The spec's features of every row of ``rows``, row for row: looked up by ``key`` in ``table``
    (a keyed feature table: the decider's dbt model in the warehouse) when one is given, else
    computed from ``rows`` (:func:`feature_frame`). A table that lacks a column or a row, or holds a
    key twice, is an error: training never silently falls back to another engine."""
    if table is None:
        return feature_frame(spec, rows)
    names = spec.feature_names
    absent_columns = [c for c in (key, *names) if c not in table.columns]
    if absent_columns:
        raise ValueError(f"the feature table lacks column(s) {', '.join(absent_columns)} "
                         "(out of date with the feature spec? run `mlp prepare`)")
    if table[key].is_duplicated().any():
        raise ValueError(f"the feature table holds {int(table[key].is_duplicated().sum())} duplicated {key} row(s)")
    found = table.select(key, *names).with_columns(pl.lit(True).alias("__found"))
    out = rows.select(key).join(found, on=key, how="left", maintain_order="left")
    absent = out["__found"].null_count()
    if absent:
        raise ValueError(f"{absent} of {rows.height} application(s) have no row in the feature table "
                         "(built before these applications were loaded?)")
    return out.select(pl.col(n).cast(pl.Float64) for n in names)
