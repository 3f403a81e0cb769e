"""Evaluation metrics for fraud scores: ranking quality, decisions at a threshold, alert budgets.

This module owns

* the threshold-free metrics (:func:`roc_auc`, :func:`average_precision`) and the
  operating-point metrics (:func:`recall_at_fpr`, :func:`threshold_for_fpr`, :func:`approval_rate`,
  :func:`fraud_amount_caught`, :func:`fraud_amount_summary`);
* the daily alert-budget precision counted per card (:func:`alert_budget_precision`, the "card
  precision top-k" of the Fraud Detection Handbook);
* bootstrap confidence intervals, row or block (day) resampling (:func:`bootstrap_ci`);
* segment helpers (:func:`add_amount_band`, :func:`add_customer_tenure`);
* the one-call, JSON-serialisable evaluation report (:func:`evaluate`).

Conventions used throughout:

* A score ``s`` is in [0, 1], higher = more likely fraud. A transaction is **flagged** when
  ``s >= threshold`` and **approved** when ``s < threshold``.
* Labels are 0/1 (1 = fraud). Scores must be finite.
* Metrics that are undefined for the data given (e.g. ROC AUC with one class) return ``nan`` from the
  functions here and ``None`` in the :func:`evaluate` report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import polars as pl

#: Segment columns :func:`evaluate` reports on when they are present in the frame.
DEFAULT_SEGMENTS: tuple[str, ...] = ("channel", "country", "amount_band", "customer_tenure")

#: Amount bands of :func:`add_amount_band`: ``(label, lower bound inclusive, upper bound exclusive)``.
#: Amounts below 0 (refunds, reversals) fall in the first band; a null amount gets a null band.
AMOUNT_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<10", -math.inf, 10.0),
    ("10-50", 10.0, 50.0),
    ("50-200", 50.0, 200.0),
    ("200-1000", 200.0, 1000.0),
    (">=1000", 1000.0, math.inf),
)

#: A card is "new" while its first transaction is less than this many days before the transaction.
NEW_CUSTOMER_DAYS = 30

#: :func:`evaluate` uses the day-block bootstrap when the frame spans at least this many days, and a
#: row bootstrap otherwise (with fewer days the block bootstrap has too few distinct resamples).
MIN_DAYS_FOR_BLOCK_BOOTSTRAP = 5

_EVAL_CI_METRICS: tuple[str, ...] = (
    "roc_auc",
    "average_precision",
    "recall_at_fpr",
    "alert_budget_precision",
    "fraud_amount_caught",
    "approval_rate",
    "recall_at_threshold",
    "fpr_at_threshold",
    "precision_at_threshold",
)


# ---------------------------------------------------------------------------------------------------
# Input handling and the shared ranking curve
# ---------------------------------------------------------------------------------------------------


def _labels(y: Any) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("labels must be 0/1 (1 = fraud)")
    return arr.astype(np.int64)


def _scores(s: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(s, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {arr.shape}")
    if n is not None and arr.size != n:
        raise ValueError(f"labels and scores differ in length ({n} vs {arr.size})")
    if not np.isfinite(arr).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    return arr


@dataclass(frozen=True)
class _Curve:
    """Cumulative counts at each distinct score, highest score first.

    ``tps[i]`` / ``fps[i]`` count the positives / negatives with ``s >= thresholds[i]``: all tied
    scores are on the same side of any threshold, so ties never split.
    """

    thresholds: np.ndarray
    tps: np.ndarray
    fps: np.ndarray
    n_pos: int
    n_neg: int


def _curve(y: np.ndarray, s: np.ndarray) -> _Curve:
    n = s.size
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Curve(np.zeros(0), empty, empty, 0, 0)
    order = np.argsort(s)[::-1]
    s_sorted = s[order]
    ends = np.append(np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), n - 1)
    tps = np.cumsum(y[order])[ends]
    fps = ends + 1 - tps
    n_pos = int(tps[-1])
    return _Curve(s_sorted[ends], tps, fps, n_pos, n - n_pos)


def _auc_from_curve(c: _Curve) -> float:
    if c.n_pos == 0 or c.n_neg == 0:
        return math.nan
    tpr = np.concatenate(([0.0], c.tps / c.n_pos))
    fpr = np.concatenate(([0.0], c.fps / c.n_neg))
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def _ap_from_curve(c: _Curve) -> float:
    if c.n_pos == 0:
        return math.nan
    recall = c.tps / c.n_pos
    precision = c.tps / (c.tps + c.fps)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _operating_point(c: _Curve, max_fpr: float) -> tuple[float, float]:
    """(threshold, recall) of the lowest threshold whose FPR is <= max_fpr (see recall_at_fpr)."""
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr}")
    if c.n_neg == 0:
        return math.nan, math.nan
    allowed_fp = math.floor(max_fpr * c.n_neg + 1e-9)
    valid = np.flatnonzero(c.fps <= allowed_fp)  # fps is non-decreasing: valid is a prefix
    if valid.size == 0:
        return math.inf, (0.0 if c.n_pos else math.nan)
    last = int(valid[-1])
    recall = float(c.tps[last] / c.n_pos) if c.n_pos else math.nan
    return float(c.thresholds[last]), recall


# ---------------------------------------------------------------------------------------------------
# Threshold-free and operating-point metrics
# ---------------------------------------------------------------------------------------------------


def roc_auc(y: Any, s: Any) -> float:
    """Area under the ROC curve (ties count one half); ``nan`` unless both classes are present.

    Identical to ``sklearn.metrics.roc_auc_score``; computed from one sort so bootstraps stay fast.
    """
    yy = _labels(y)
    return _auc_from_curve(_curve(yy, _scores(s, yy.size)))


def average_precision(y: Any, s: Any) -> float:
    """Average precision, ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds; ``nan`` without fraud.

    Identical to ``sklearn.metrics.average_precision_score`` (no interpolation; tied scores form one
    step).
    """
    yy = _labels(y)
    return _ap_from_curve(_curve(yy, _scores(s, yy.size)))


def recall_at_fpr(y: Any, s: Any, max_fpr: float = 0.01) -> float:
    """The best recall achievable by a threshold on ``s`` whose false-positive rate is <= ``max_fpr``.

    Candidate thresholds are the distinct observed scores (plus "flag nothing"); flagging is
    ``s >= t``, so **tied scores are flagged or approved together** -- a tie that would push the FPR
    over budget cannot be split to take only its frauds. FPR <= max_fpr is checked on counts:
    ``false positives <= floor(max_fpr * n_legit)``. If even the highest score breaks the budget
    the answer is 0 (flag nothing). ``nan`` unless both classes are present.
    """
    yy = _labels(y)
    c = _curve(yy, _scores(s, yy.size))
    if c.n_pos == 0 or c.n_neg == 0:
        return math.nan
    return _operating_point(c, max_fpr)[1]


def threshold_for_fpr(y: Any, s: Any, max_fpr: float) -> float:
    """The threshold achieving :func:`recall_at_fpr`: the lowest observed score ``t`` such that
    flagging ``s >= t`` keeps the FPR <= ``max_fpr``.

    The lowest such ``t`` maximises recall (recall and FPR both fall as the threshold rises) and
    depends on the legitimate transactions only. ``inf`` when no observed score is admissible
    (flag nothing); ``nan`` when there are no legitimate transactions.
    """
    yy = _labels(y)
    return _operating_point(_curve(yy, _scores(s, yy.size)), max_fpr)[0]


def approval_rate(s: Any, threshold: float) -> float:
    """Share of transactions approved, i.e. with ``s < threshold``; ``nan`` when empty."""
    ss = _scores(s)
    return float(np.mean(ss < threshold)) if ss.size else math.nan


def fraud_amount_summary(y: Any, s: Any, amount: Any, threshold: float) -> dict[str, float | int]:
    """Fraud caught by flagging ``s >= threshold``, in counts and in amount.

    Returns ``n_fraud``, ``n_fraud_caught``, ``fraud_amount_total``, ``fraud_amount_caught`` (absolute),
    ``fraud_amount_missed`` and ``share_caught`` (caught / total fraud amount; ``nan`` when the
    total is 0).
    """
    yy = _labels(y)
    ss = _scores(s, yy.size)
    amt = np.asarray(amount, dtype=np.float64)
    if amt.shape != yy.shape:
        raise ValueError(f"labels and amounts differ in length ({yy.size} vs {amt.size})")
    fraud = yy == 1
    caught = fraud & (ss >= threshold)
    total = float(amt[fraud].sum())
    caught_amount = float(amt[caught].sum())
    return {
        "n_fraud": int(fraud.sum()),
        "n_fraud_caught": int(caught.sum()),
        "fraud_amount_total": total,
        "fraud_amount_caught": caught_amount,
        "fraud_amount_missed": total - caught_amount,
        "share_caught": caught_amount / total if total != 0 else math.nan,
    }


def fraud_amount_caught(y: Any, s: Any, amount: Any, threshold: float) -> float:
    """Share of the fraud amount flagged (``s >= threshold``); ``nan`` when there is no fraud amount.

    See :func:`fraud_amount_summary` for the absolute amounts.
    """
    return float(fraud_amount_summary(y, s, amount, threshold)["share_caught"])


def _threshold_metrics(
    y: np.ndarray, s: np.ndarray, amount: np.ndarray | None, threshold: float
) -> dict[str, float]:
    flagged = s >= threshold
    fraud = y == 1
    n_pos = int(fraud.sum())
    n_neg = y.size - n_pos
    tp = int((flagged & fraud).sum())
    fp = int(flagged.sum()) - tp
    out = {
        "approval_rate": float(1.0 - flagged.mean()) if y.size else math.nan,
        "recall_at_threshold": tp / n_pos if n_pos else math.nan,
        "fpr_at_threshold": fp / n_neg if n_neg else math.nan,
        "precision_at_threshold": tp / (tp + fp) if tp + fp else math.nan,
    }
    if amount is None:
        out["fraud_amount_caught"] = math.nan
    else:
        total = float(amount[fraud].sum())
        out["fraud_amount_caught"] = float(amount[flagged & fraud].sum()) / total if total else math.nan
    return out


def _score_metrics(
    y: np.ndarray, s: np.ndarray, amount: np.ndarray | None, threshold: float, max_fpr: float
) -> dict[str, float]:
    c = _curve(y, s)
    both = c.n_pos > 0 and c.n_neg > 0
    out = {
        "roc_auc": _auc_from_curve(c),
        "average_precision": _ap_from_curve(c),
        "recall_at_fpr": _operating_point(c, max_fpr)[1] if both else math.nan,
    }
    out.update(_threshold_metrics(y, s, amount, threshold))
    return out


# ---------------------------------------------------------------------------------------------------
# Alert budget: card precision top-k
# ---------------------------------------------------------------------------------------------------


class AlertBudgetPrecision(NamedTuple):
    """Result of :func:`alert_budget_precision`: the mean over days and the per-day table.

    ``per_day`` has one row per day present in the frame, in day order, with columns ``day``,
    ``precision`` (detected / k), ``n_cards`` (cards eligible that day, i.e. not already caught),
    ``n_compromised`` (eligible cards with at least one fraud that day) and ``n_detected``
    (compromised cards among the day's top k).
    """

    mean: float
    per_day: pl.DataFrame


def _day_expr(frame: pl.DataFrame, time_col: str) -> pl.Expr:
    """Calendar day of a datetime column; a date (or any other day key, e.g. a day index) as is."""
    dtype = frame.schema[time_col]
    if isinstance(dtype, pl.Datetime):
        return pl.col(time_col).dt.date()
    return pl.col(time_col)


def alert_budget_precision(
    frame: pl.DataFrame,
    score_col: str,
    k: int = 100,
    card_col: str = "customer_id",
    time_col: str = "event_time",
    label_col: str = "label",
    exclude_caught: bool = True,
) -> AlertBudgetPrecision:
    """Daily alert-budget precision counted per card (the Handbook's "card precision top-k").

    Investigators can review ``k`` cards a day. For each calendar day of ``time_col`` (a datetime
    gives its date; a date or integer day index is used as is):

    1. each card's day score is the max score of its transactions that day, and the card is
       *compromised* that day when at least one of its transactions that day is fraud;
    2. cards already **caught** are removed (when ``exclude_caught``): a card is caught once it was
       in the top ``k`` of an earlier day on which it was compromised (a card in the top k without
       fraud that day stays eligible; a compromised card missed that day stays eligible too);
    3. cards are ranked by day score, highest first; **ties are broken by card id ascending**, so
       the result is deterministic;
    4. precision of the day = compromised cards among the top ``k`` / ``k``. The denominator is
       always ``k``, also when fewer than ``k`` cards are eligible (an unused alert slot counts as
       a wasted one, as in the Handbook); a day whose cards were all caught before scores 0.

    Returns the mean over days (``nan`` for an empty frame) and the per-day table.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cards = (
        frame.select(
            _day_expr(frame, time_col).alias("day"),
            pl.col(card_col).alias("card"),
            pl.col(score_col).cast(pl.Float64).alias("score"),
            (pl.col(label_col) == 1).cast(pl.Int8).alias("fraud"),
        )
        .group_by("day", "card")
        .agg(pl.col("score").max(), pl.col("fraud").max())
    )
    codes = cards.select("card").unique().sort("card").with_row_index("code")
    cards = cards.join(codes, on="card", how="left").sort(
        ["day", "score", "card"], descending=[False, True, False], nulls_last=True
    )
    per_day_schema = {
        "day": cards.schema["day"],
        "precision": pl.Float64(),
        "n_cards": pl.Int64(),
        "n_compromised": pl.Int64(),
        "n_detected": pl.Int64(),
    }
    if cards.height == 0:
        return AlertBudgetPrecision(math.nan, pl.DataFrame(schema=per_day_schema))

    code = cards["code"].to_numpy().astype(np.int64)
    fraud = cards["fraud"].to_numpy().astype(np.int64)
    day_id = cards.select(pl.col("day").rank("dense")).to_series().to_numpy()
    starts = np.concatenate(([0], np.flatnonzero(np.diff(day_id)) + 1))
    stops = np.append(starts[1:], code.size)
    caught = np.zeros(codes.height, dtype=bool)
    rows: dict[str, list[Any]] = {name: [] for name in per_day_schema}
    day_values = cards["day"]
    for start, stop in zip(starts, stops, strict=True):
        day_codes = code[start:stop]
        day_fraud = fraud[start:stop]
        if exclude_caught:
            keep = ~caught[day_codes]
            day_codes, day_fraud = day_codes[keep], day_fraud[keep]
        top_codes, top_fraud = day_codes[:k], day_fraud[:k]
        detected = int(top_fraud.sum())
        caught[top_codes[top_fraud == 1]] = True
        rows["day"].append(day_values[int(start)])
        rows["precision"].append(detected / k)
        rows["n_cards"].append(int(day_codes.size))
        rows["n_compromised"].append(int(day_fraud.sum()))
        rows["n_detected"].append(detected)
    per_day = pl.DataFrame(rows, schema=per_day_schema)
    return AlertBudgetPrecision(float(np.mean(rows["precision"])), per_day)


# ---------------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------------


def percentile_interval(values: Any, alpha: float = 0.05) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) percentiles of bootstrap replicates, ignoring ``nan`` replicates.

    ``(nan, nan)`` when no replicate is defined. Infinite replicates are allowed (no interpolation
    is then done, the nearest replicate is taken).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    method = "linear" if np.isfinite(arr).all() else "inverted_cdf"
    low, high = np.quantile(arr, [alpha / 2.0, 1.0 - alpha / 2.0], method=method)
    return float(low), float(high)


def _block_codes(values: pl.Series) -> np.ndarray:
    """0-based dense codes of a column's values (null is a value of its own)."""
    ranked = values.rank("dense").fill_null(0).cast(pl.Int64).to_numpy()
    return np.unique(ranked, return_inverse=True)[1].astype(np.int64)


def resample_indices(
    n: int, n_boot: int, seed: int, block_codes: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Yield ``n_boot`` bootstrap row-index arrays for ``n`` rows, deterministic by ``seed``.

    Without ``block_codes`` rows are drawn with replacement (``n`` per resample). With
    ``block_codes`` (one integer code per row, 0..B-1) whole blocks are drawn: B blocks with
    replacement, each contributing all of its rows (so a resample has about ``n`` rows).
    """
    rng = np.random.default_rng(seed)
    if block_codes is None:
        for _ in range(n_boot):
            yield rng.integers(0, n, size=n) if n else np.zeros(0, dtype=np.int64)
        return
    codes = np.asarray(block_codes, dtype=np.int64)
    if codes.size != n:
        raise ValueError(f"block_codes has {codes.size} entries for {n} rows")
    if n == 0:
        for _ in range(n_boot):
            yield np.zeros(0, dtype=np.int64)
        return
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    n_blocks = counts.size
    for _ in range(n_boot):
        drawn = rng.integers(0, n_blocks, size=n_blocks)
        lengths = counts[drawn]
        total = int(lengths.sum())
        offsets = np.cumsum(lengths) - lengths
        pos = np.arange(total) - np.repeat(offsets, lengths) + np.repeat(starts[drawn], lengths)
        yield order[pos]


def bootstrap_ci(
    frame: pl.DataFrame,
    metric_fn: Callable[[pl.DataFrame], float],
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    block_col: str | None = None,
) -> tuple[float, float, float]:
    """Percentile bootstrap CI of ``metric_fn(frame)``: returns ``(point, low, high)``.

    ``point`` is the metric on the full frame; ``low``/``high`` are the alpha/2 and 1 - alpha/2
    percentiles over ``n_boot`` resamples (resamples where the metric is ``nan``, e.g. one class
    only, are dropped; all ``nan`` gives ``(point, nan, nan)``). Deterministic by ``seed``.

    With ``block_col`` (e.g. a day column; what to use for time series) whole blocks are resampled
    with replacement instead of rows, keeping within-day dependence. A block drawn twice appears
    as duplicated rows with its original ``block_col`` value, so a metric that groups by that
    column (such as a per-day mean) sees it once; bootstrap such per-day series directly
    (:func:`evaluate` does this for the alert-budget precision).
    """
    point = float(metric_fn(frame))
    codes = _block_codes(frame[block_col]) if block_col is not None else None
    values = np.fromiter(
        (float(metric_fn(frame[idx])) for idx in resample_indices(frame.height, n_boot, seed, codes)),
        dtype=np.float64,
        count=n_boot,
    )
    low, high = percentile_interval(values, alpha)
    return point, low, high


# ---------------------------------------------------------------------------------------------------
# Segment helpers
# ---------------------------------------------------------------------------------------------------


def add_amount_band(
    frame: pl.DataFrame, amount_col: str = "amount", out_col: str = "amount_band"
) -> pl.DataFrame:
    """Add the amount band (see :data:`AMOUNT_BANDS`): ``<10``, ``10-50``, ``50-200``, ``200-1000``,
    ``>=1000``; each band includes its lower bound (10.0 is ``10-50``). Null amount -> null band."""
    amount = pl.col(amount_col)
    expr: Any = None
    for label, _low, high in reversed(AMOUNT_BANDS):
        expr = pl.lit(label) if expr is None else pl.when(amount < high).then(pl.lit(label)).otherwise(expr)
    expr = pl.when(amount.is_null()).then(pl.lit(None, dtype=pl.String)).otherwise(expr)
    return frame.with_columns(expr.cast(pl.String).alias(out_col))


def add_customer_tenure(
    frame: pl.DataFrame,
    first_seen: pl.DataFrame | None = None,
    card_col: str = "customer_id",
    time_col: str = "event_time",
    new_days: int = NEW_CUSTOMER_DAYS,
    out_col: str = "customer_tenure",
) -> pl.DataFrame:
    """Add ``"new"`` / ``"established"``: a transaction is ``"new"`` when the card's first
    transaction is less than ``new_days`` (default 30) days before it, ``"established"`` otherwise.

    ``first_seen`` (columns ``card_col`` and ``first_seen``) gives each card's first transaction
    time from the full history; pass it when the frame is an evaluation window, otherwise every card
    looks new at the start of the window. A card's first-seen time is the earlier of ``first_seen``
    and its first transaction in the frame. Row order is preserved.
    """
    in_frame = frame.group_by(card_col).agg(pl.col(time_col).min().alias("_first_seen"))
    if first_seen is not None:
        history = first_seen.select(
            pl.col(card_col),
            pl.col("first_seen").cast(frame.schema[time_col]).alias("_first_seen_history"),
        ).unique(card_col, keep="first")
        in_frame = (
            in_frame.join(history, on=card_col, how="left")
            .with_columns(pl.min_horizontal("_first_seen", "_first_seen_history").alias("_first_seen"))
            .drop("_first_seen_history")
        )
    tenure = (
        pl.when(pl.col(time_col) - pl.col("_first_seen") < pl.duration(days=new_days))
        .then(pl.lit("new"))
        .otherwise(pl.lit("established"))
    )
    return (
        frame.join(in_frame, on=card_col, how="left", maintain_order="left")
        .with_columns(tenure.alias(out_col))
        .drop("_first_seen")
    )


# ---------------------------------------------------------------------------------------------------
# The evaluation report
# ---------------------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: ``nan``/``inf`` -> ``None``, numpy scalars -> Python, keys -> ``str``."""
    if isinstance(value, dict):
        return {("null" if key is None else str(key)): to_jsonable(val) for key, val in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def segment_key(value: Any) -> str:
    """The report key of a segment value: ``str(value)``, ``"null"`` for a missing value."""
    return "null" if value is None else str(value)


def evaluate(
    frame: pl.DataFrame,
    score_col: str,
    threshold: float,
    k: int = 100,
    max_fpr: float = 0.01,
    n_boot: int = 200,
    seed: int = 0,
    segments: Sequence[str] = DEFAULT_SEGMENTS,
    *,
    alpha: float = 0.05,
    label_col: str = "label",
    amount_col: str = "amount",
    card_col: str = "customer_id",
    time_col: str = "event_time",
) -> dict[str, Any]:
    """Evaluate one score column: headline metrics, their bootstrap CIs and per-segment metrics.

    Returns a JSON-serialisable dict (undefined metrics are ``None``):

    * headline: ``roc_auc``, ``average_precision``, ``recall_at_fpr`` (and ``threshold_at_fpr``,
      ``None`` when no threshold meets ``max_fpr``), ``alert_budget_precision`` (card precision top-k,
      mean over days; ``alert_budget_per_day`` lists the days), ``fraud_amount_caught`` (share;
      ``fraud_amount_caught_abs`` and ``fraud_amount_total`` in currency), ``approval_rate``,
      ``recall_at_threshold``, ``fpr_at_threshold``, ``precision_at_threshold``, ``n``, ``n_fraud``;
    * ``ci``: ``{metric: {"low", "high"}}`` for the rate metrics, ``ci_method`` says how: a
      day-block bootstrap when the frame spans >= :data:`MIN_DAYS_FOR_BLOCK_BOOTSTRAP` days, a row
      bootstrap otherwise. The alert-budget precision is a mean of per-day values, so its CI always
      resamples days (``None`` with a single day);
    * ``segments``: ``{segment_col: {value: {metrics..., n, n_fraud}}}`` for each column of
      ``segments`` present in the frame (absent ones are skipped; see :func:`add_amount_band` and
      :func:`add_customer_tenure` to derive two of them). Segment metrics are computed within the
      segment: ``recall_at_fpr`` uses the segment's own legitimate traffic for the FPR budget.
      No alert-budget precision per segment (the budget is a bank-wide one).
    """
    y = _labels(frame[label_col].to_numpy())
    s = _scores(frame[score_col].to_numpy(), y.size)
    amount = frame[amount_col].to_numpy().astype(np.float64) if amount_col in frame.columns else None

    headline: dict[str, Any] = {"n": int(y.size), "n_fraud": int(y.sum())}
    headline.update(_score_metrics(y, s, amount, threshold, max_fpr))
    c = _curve(y, s)
    headline["threshold_at_fpr"] = _operating_point(c, max_fpr)[0] if c.n_pos and c.n_neg else math.nan
    if amount is not None:
        summary = fraud_amount_summary(y, s, amount, threshold)
        headline["fraud_amount_caught_abs"] = summary["fraud_amount_caught"]
        headline["fraud_amount_total"] = summary["fraud_amount_total"]
    else:
        headline["fraud_amount_caught_abs"] = headline["fraud_amount_total"] = math.nan

    has_time = time_col in frame.columns
    per_day_rows: list[dict[str, Any]] = []
    day_precision = np.zeros(0)
    if has_time and card_col in frame.columns:
        abp = alert_budget_precision(frame, score_col, k, card_col, time_col, label_col)
        headline["alert_budget_precision"] = abp.mean
        day_precision = abp.per_day["precision"].to_numpy()
        per_day_rows = [
            {**row, "day": str(row["day"])} for row in abp.per_day.iter_rows(named=True)
        ]
    else:
        headline["alert_budget_precision"] = math.nan

    # Bootstrap: one set of resamples for every row-level metric.
    day_codes = _block_codes(frame.select(_day_expr(frame, time_col)).to_series()) if has_time else None
    n_days = int(day_codes.max()) + 1 if day_codes is not None and day_codes.size else 0
    block = day_codes is not None and n_days >= MIN_DAYS_FOR_BLOCK_BOOTSTRAP
    replicates: dict[str, list[float]] = {name: [] for name in _EVAL_CI_METRICS}
    for idx in resample_indices(y.size, n_boot, seed, day_codes if block else None):
        values = _score_metrics(y[idx], s[idx], None if amount is None else amount[idx], threshold, max_fpr)
        for name, value in values.items():
            replicates[name].append(value)
    # Alert budget: a mean of per-day values, so resample the days themselves.
    if day_precision.size >= 2:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, day_precision.size, size=(n_boot, day_precision.size))
        replicates["alert_budget_precision"] = list(day_precision[draws].mean(axis=1))
    ci: dict[str, Any] = {}
    for name in _EVAL_CI_METRICS:
        if name == "alert_budget_precision" and day_precision.size < 2:
            ci[name] = None
            continue
        low, high = percentile_interval(replicates[name], alpha) if n_boot else (math.nan, math.nan)
        ci[name] = None if math.isnan(low) else {"low": low, "high": high}

    segment_report: dict[str, Any] = {}
    for col in segments:
        if col not in frame.columns:
            continue
        groups: dict[str, Any] = {}
        codes = _block_codes(frame[col])
        values = frame[col]
        first_row = np.unique(codes, return_index=True)[1]
        keyed = sorted((segment_key(values[int(i)]), int(codes[i])) for i in first_row)
        for key, code in keyed:
            mask = codes == code
            ys = y[mask]
            metrics: dict[str, Any] = {"n": int(ys.size), "n_fraud": int(ys.sum())}
            metrics.update(_score_metrics(ys, s[mask], None if amount is None else amount[mask], threshold, max_fpr))
            groups[key] = metrics
        segment_report[col] = groups

    report: dict[str, Any] = {
        "score_col": score_col,
        "threshold": float(threshold),
        "k": int(k),
        "max_fpr": float(max_fpr),
        **headline,
        "alert_budget_per_day": per_day_rows,
        "ci": ci,
        "ci_method": {
            "method": "day_block" if block else "row",
            "n_blocks": n_days if block else int(y.size),
            "n_days": n_days,
            "n_boot": int(n_boot),
            "alpha": float(alpha),
            "seed": int(seed),
        },
        "segments": segment_report,
    }
    return to_jsonable(report)
