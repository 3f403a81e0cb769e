"""Backtest: the candidate and the current champion scored on the same out-of-time window, with
headline and segment metrics (bootstrap intervals), daily metrics (rolling by day), paired
differences with day-block intervals, and the decision impact of replacing the champion."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from mlp_platform.evaluation.impact import decision_impact
from mlp_platform.evaluation.metrics import (
    add_amount_band,
    add_customer_tenure,
    alert_budget_precision,
    average_precision,
    evaluate,
    percentile_interval,
    recall_at_fpr,
    resample_indices,
    to_jsonable,
)

SEGMENTS = ("channel", "country", "amount_band", "customer_tenure")
CANDIDATE, CHAMPION = "score_candidate", "score_champion"


def prepare_window(window: pl.DataFrame, history: pl.DataFrame | None = None) -> pl.DataFrame:
    """Add segment columns to the evaluation window: amount band, new vs established card, and the
    customer's home region (the country of most of their transactions in ``history``), the
    customer attribute the bias gate judges."""
    history = window if history is None else history
    first_seen = history.group_by("customer_id").agg(pl.col("event_time").min().alias("first_seen"))
    out = add_customer_tenure(add_amount_band(window), first_seen)
    if "country" in history.columns:
        home = (history.group_by("customer_id", "country").len()
                .sort(["customer_id", "len", "country"], descending=[False, True, False])
                .group_by("customer_id", maintain_order=True).first()
                .select("customer_id", pl.col("country").alias("home_country")))
        out = out.join(home, on="customer_id", how="left")
    return out


def _per_day(frame: pl.DataFrame, score_col: str, threshold: float, k: int) -> pl.DataFrame:
    days = frame["event_date"].unique().sort().to_list()
    budget = alert_budget_precision(frame, score_col, k=k).per_day
    rows = []
    for day in days:
        part = frame.filter(pl.col("event_date") == day)
        y, s = part["label"].to_numpy(), part[score_col].to_numpy()
        rows.append({
            "day": day, "rows": part.height, "frauds": int(y.sum()),
            "average_precision": average_precision(y, s) if y.sum() else float("nan"),
            "approval_rate": float((s < threshold).mean()),
            "flagged_frauds": int(((s >= threshold) & (y == 1)).sum()),
        })
    out = pl.DataFrame(rows)
    return out.join(budget.select(pl.col("day"), pl.col("precision").alias("alert_budget_precision")),
                    on="day", how="left")


def _paired(frame: pl.DataFrame, threshold_candidate: float, threshold_champion: float, k: int,
            max_fpr: float, n_boot: int, seed: int) -> dict[str, Any]:
    """Candidate minus champion, with day-block bootstrap intervals (same days for both)."""
    days = frame["event_date"].to_numpy()
    _, codes = np.unique(days, return_inverse=True)
    y = frame["label"].to_numpy()
    sc, sh = frame[CANDIDATE].to_numpy(), frame[CHAMPION].to_numpy()

    def diffs(idx: np.ndarray) -> dict[str, float]:
        yy = y[idx]
        if yy.min() == yy.max():
            return {}
        return {
            "average_precision": average_precision(yy, sc[idx]) - average_precision(yy, sh[idx]),
            "recall_at_fpr": recall_at_fpr(yy, sc[idx], max_fpr) - recall_at_fpr(yy, sh[idx], max_fpr),
        }

    point = diffs(np.arange(len(y)))
    samples: dict[str, list[float]] = {m: [] for m in point}
    blocks = codes if len(set(codes.tolist())) >= 5 else None
    for idx in resample_indices(len(y), n_boot, seed, blocks):
        for m, v in diffs(idx).items():
            if v == v:
                samples[m].append(v)
    out: dict[str, Any] = {}
    for m, v in point.items():
        low, high = percentile_interval(samples[m]) if samples[m] else (float("nan"), float("nan"))
        out[m] = {"diff": v, "low": low, "high": high}
    # alert-budget precision is a mean over days: resample the per-day differences
    cand_days = alert_budget_precision(frame, CANDIDATE, k=k).per_day
    champ_days = alert_budget_precision(frame, CHAMPION, k=k).per_day
    per_day = (cand_days.join(champ_days, on="day", suffix="_ch")
               .select((pl.col("precision") - pl.col("precision_ch")).alias("d"))["d"].to_numpy())
    if len(per_day):
        rng = np.random.default_rng(seed)
        means = [per_day[rng.integers(0, len(per_day), len(per_day))].mean() for _ in range(n_boot)]
        low, high = percentile_interval(means) if len(per_day) > 1 else (float("nan"), float("nan"))
        out["alert_budget_precision"] = {"diff": float(per_day.mean()), "low": low, "high": high}
    return out


def run_backtest(window: pl.DataFrame, candidate_scores: np.ndarray, threshold_candidate: float,
                 champion_scores: np.ndarray | None = None, threshold_champion: float | None = None,
                 *, k: int = 100, max_fpr: float = 0.01, n_boot: int = 200, seed: int = 0,
                 segments: tuple[str, ...] = SEGMENTS) -> dict[str, Any]:
    """The backtest report (JSON-serialisable). ``window`` must hold label, amount, customer_id,
    event_time, event_date and the segment columns (see :func:`prepare_window`)."""
    frame = window.with_columns(pl.Series(CANDIDATE, candidate_scores, dtype=pl.Float64))
    has_champion = champion_scores is not None
    if has_champion:
        frame = frame.with_columns(pl.Series(CHAMPION, champion_scores, dtype=pl.Float64))
    present = tuple(s for s in segments if s in frame.columns)
    report: dict[str, Any] = {
        "window": {"first_day": str(frame["event_date"].min()), "last_day": str(frame["event_date"].max()),
                   "rows": frame.height, "frauds": int(frame["label"].sum()),
                   "fraud_amount": float(frame.filter(pl.col("label") == 1)["amount"].sum())},
        "settings": {"k": k, "max_fpr": max_fpr, "n_boot": n_boot, "seed": seed},
        "thresholds": {"candidate": threshold_candidate, "champion": threshold_champion},
        "candidate": evaluate(frame, CANDIDATE, threshold_candidate, k=k, max_fpr=max_fpr, n_boot=n_boot,
                              seed=seed, segments=present),
        "daily": {"candidate": _per_day(frame, CANDIDATE, threshold_candidate, k).to_dicts()},
    }
    if has_champion:
        report["champion"] = evaluate(frame, CHAMPION, threshold_champion, k=k, max_fpr=max_fpr,
                                      n_boot=n_boot, seed=seed, segments=present)
        report["daily"]["champion"] = _per_day(frame, CHAMPION, threshold_champion, k).to_dicts()
        report["paired"] = _paired(frame, threshold_candidate, threshold_champion, k, max_fpr, n_boot, seed)
        decisions = frame.with_columns(
            (pl.col(CHAMPION) >= threshold_champion).cast(pl.Float64).alias("flag_champion"),
            (pl.col(CANDIDATE) >= threshold_candidate).cast(pl.Float64).alias("flag_candidate"))
        report["impact"] = decision_impact(decisions, "flag_champion", "flag_candidate", 0.5, segments=present)
    return to_jsonable(report)
