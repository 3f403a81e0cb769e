"""An independent, deliberately plain computation of every feature of the feature specification.

Written from the semantics in the header of ``mlp_platform/features/feature_spec.yaml`` only (not
from the dbt SQL), so the dbt models can be compared with it value for value:

* Events of an entity are ordered by (event_time, transaction_id).
* A window ``w`` of a transaction at time t holds the entity's events e with e.time > t - w that
  come at or before the transaction in that order (it includes the transaction itself; a tie at
  the same instant counts only if its transaction_id is not greater).
* Label-delayed (batch) features are computed as of A = the start (00:00) of the transaction's
  day, from the transactions of the ``w`` whole days ending ``label_delay_days`` before that day
  (A - delay - w <= event_time < A - delay) and labels with label_time <= A.

Conventions the spec leaves open, chosen here and documented (the tests report any difference):

* ``seconds_since_previous``: seconds from the entity's previous event (in the order above) when
  that event lies inside the view's lookback (e.time > t - lookback), else null. A tie gives 0.
* ``first_time`` of a column: 1 when no earlier event of the entity inside the lookback has the same
  value; 0 when it has; 0 when the value itself is null (no device is never a "new device").
* ``ratio_to_feature``: column / denominator feature, null when the denominator is 0 or null.
* ``label_rate`` over window ``w``: among the entity's transactions with
  A - delay - w <= event_time < A - delay, the share with a label=1 row whose label_time <= A
  (a transaction counts once however many label rows it has); 0 when there is none.
* ``is_night``: start_hour <= hour or hour < end_hour when the night wraps midnight
  (start > end), else start_hour <= hour < end_hour.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections import defaultdict

import polars as pl

from mlp_platform.features.spec import Feature, FeatureSpec

US = 1_000_000
DAY_US = 86_400 * US
_EPOCH = dt.date(1970, 1, 1)


class UnknownFeatureKind(NotImplementedError):
    """The oracle has no implementation for this kind of feature."""


def _day_start_us(day: dt.date) -> int:
    return (day - _EPOCH).days * DAY_US


def _ordered_events(transactions: pl.DataFrame) -> list[dict]:
    """Transactions as dicts (with integer microseconds ``_t``) in (event_time, transaction_id) order."""
    frame = transactions.with_columns(pl.col("event_time").dt.epoch("us").alias("_t"))
    rows = frame.to_dicts()
    rows.sort(key=lambda r: (r["_t"], r["transaction_id"]))
    return rows


def _by_entity(rows: list[dict], key: str) -> dict[object, list[dict]]:
    groups: dict[object, list[dict]] = defaultdict(list)
    for row in rows:  # rows are in order, so every group is in order too
        if row[key] is not None:
            groups[row[key]].append(row)
    return groups


# --- streaming features ------------------------------------------------------------------------


def _window_start(times: list[int], i: int, window_us: int) -> int:
    """Index of the first event j <= i with times[j] > times[i] - window_us."""
    return bisect.bisect_right(times, times[i] - window_us, 0, i + 1)


def _window_agg(f: Feature, window: list[dict]) -> float | int | None:
    if f.agg == "count":
        return len(window)
    values = [e[f.column] for e in window if e[f.column] is not None]
    if not values:
        return None
    if f.agg == "sum":
        return math.fsum(values)
    if f.agg == "mean":
        return math.fsum(values) / len(values)
    if f.agg == "max":
        return max(values)
    raise UnknownFeatureKind(f"{f.name}: aggregation {f.agg!r}")


def _streaming_view(view, key: str, rows: list[dict], out: dict[str, dict[str, object]]) -> None:
    lookback_us = view.lookback_seconds * US
    for events in _by_entity(rows, key).values():
        times = [e["_t"] for e in events]
        last_seen: dict[str, dict[object, int]] = defaultdict(dict)  # column -> value -> time
        for i, event in enumerate(events):
            t = times[i]
            values = out[event["transaction_id"]]
            for f in view.features:
                if f.kind == "window_agg":
                    window = events[_window_start(times, i, f.window_seconds * US) : i + 1]
                    values[f.name] = _window_agg(f, window)
                elif f.kind == "window_distinct":
                    window = events[_window_start(times, i, f.window_seconds * US) : i + 1]
                    values[f.name] = len({e[f.column] for e in window if e[f.column] is not None})
                elif f.kind == "seconds_since_previous":
                    previous = times[i - 1] if i > 0 else None
                    inside = previous is not None and previous > t - lookback_us
                    values[f.name] = (t - previous) / US if inside else None
                elif f.kind == "first_time":
                    value = event[f.column]
                    if value is None:
                        values[f.name] = 0
                    else:
                        seen = last_seen[f.column].get(value)
                        values[f.name] = 0 if seen is not None and seen > t - lookback_us else 1
                elif f.kind == "ratio_to_feature":
                    numerator, denominator = event[f.column], values[f.denominator]
                    values[f.name] = (
                        None
                        if numerator is None or denominator is None or denominator == 0
                        else numerator / denominator
                    )
                else:
                    raise UnknownFeatureKind(f"{f.name}: kind {f.kind!r} in streaming view {view.name}")
            # Remember values after all features of this event, so they only see earlier events.
            for f in view.features:
                if f.kind == "first_time" and event[f.column] is not None:
                    last_seen[f.column][event[f.column]] = t


# --- batch (label-delayed) features ------------------------------------------------------------


def _first_fraud_label_time(labels: pl.DataFrame) -> dict[str, int]:
    """transaction_id -> earliest label_time (us) of its label=1 rows."""
    frauds = labels.filter(pl.col("label") == 1).with_columns(
        pl.col("label_time").dt.epoch("us").alias("_lt")
    )
    first: dict[str, int] = {}
    for tid, lt in frauds.select("transaction_id", "_lt").iter_rows():
        first[tid] = min(lt, first.get(tid, lt))
    return first


def _batch_view(
    view, key: str, rows: list[dict], labels: pl.DataFrame, delay_days: int, out: dict[str, dict[str, object]]
) -> None:
    fraud_known_at = _first_fraud_label_time(labels)
    delay_us = delay_days * DAY_US
    groups = _by_entity(rows, key)
    for events in groups.values():
        times = [e["_t"] for e in events]
        frauds = [
            (e["_t"], fraud_known_at[e["transaction_id"]])
            for e in events
            if e["transaction_id"] in fraud_known_at
        ]
        cache: dict[tuple[dt.date, str], float] = {}
        for event in events:
            day = event["event_time"].date()
            as_of = _day_start_us(day)
            for f in view.features:
                if f.kind != "label_rate":
                    raise UnknownFeatureKind(f"{f.name}: kind {f.kind!r} in batch view {view.name}")
                if (day, f.name) not in cache:
                    newest = as_of - delay_us  # exclusive: the w whole days ending `delay` days before
                    oldest = newest - f.window_seconds * US  # inclusive
                    n_tx = bisect.bisect_left(times, newest) - bisect.bisect_left(times, oldest)
                    n_fraud = sum(1 for t, known in frauds if oldest <= t < newest and known <= as_of)
                    cache[(day, f.name)] = n_fraud / n_tx if n_tx else 0.0
                out[event["transaction_id"]][f.name] = cache[(day, f.name)]


# --- on-demand features ------------------------------------------------------------------------


def _on_demand(f: Feature, event: dict) -> float | int | None:
    ts: dt.datetime = event["event_time"]
    if f.kind == "request_value":
        value = event[f.column]
        return None if value is None else float(value)
    if f.kind == "hour_of_day":
        return ts.hour
    if f.kind == "is_night":
        start, end = f.params["start_hour"], f.params["end_hour"]
        night = (ts.hour >= start or ts.hour < end) if start > end else (start <= ts.hour < end)
        return int(night)
    if f.kind == "is_weekend":
        return int(ts.weekday() >= 5)  # Saturday, Sunday
    raise UnknownFeatureKind(f"{f.name}: on-demand kind {f.kind!r}")


# --- public API --------------------------------------------------------------------------------


def compute_features(
    transactions: pl.DataFrame, labels: pl.DataFrame, spec: FeatureSpec, label_delay_days: int
) -> pl.DataFrame:
    """transaction_id and every feature of ``spec`` (in ``spec.feature_names`` order) per transaction."""
    rows = _ordered_events(transactions)
    out: dict[str, dict[str, object]] = {r["transaction_id"]: {} for r in rows}
    for view in spec.views:
        if view.mode == "streaming":
            _streaming_view(view, spec.entities[view.entity].key, rows, out)
        elif view.mode == "batch":
            _batch_view(view, spec.entities[view.entity].key, rows, labels, label_delay_days, out)
        elif view.mode == "on_demand":
            for row in rows:
                for f in view.features:
                    out[row["transaction_id"]][f.name] = _on_demand(f, row)
        else:
            raise UnknownFeatureKind(f"view {view.name}: mode {view.mode!r}")
    schema = {"transaction_id": pl.String()}
    schema.update({f.name: pl.Int64() if f.dtype == "int" else pl.Float64() for f in spec.features})
    data = {name: [] for name in schema}
    for tid, values in out.items():
        data["transaction_id"].append(tid)
        for f in spec.features:
            data[f.name].append(values[f.name])
    return pl.DataFrame(data, schema=schema)


def expected_training_set(
    transactions: pl.DataFrame, labels: pl.DataFrame, maturity_days: int, as_of: dt.datetime
) -> pl.DataFrame:
    """transaction_id, label: transactions with event_time + maturity <= as_of, label 1 iff a
    label=1 row with label_time <= event_time + maturity exists."""
    maturity = dt.timedelta(days=maturity_days)
    fraud_times: dict[str, list[dt.datetime]] = defaultdict(list)
    for tid, label, label_time in labels.select("transaction_id", "label", "label_time").iter_rows():
        if label == 1:
            fraud_times[tid].append(label_time)
    ids, out_labels = [], []
    for tid, event_time in transactions.select("transaction_id", "event_time").iter_rows():
        mature = event_time + maturity
        if mature <= as_of:
            ids.append(tid)
            out_labels.append(int(any(lt <= mature for lt in fraud_times.get(tid, []))))
    return pl.DataFrame(
        {"transaction_id": ids, "label": out_labels},
        schema={"transaction_id": pl.String(), "label": pl.Int64()},
    )
