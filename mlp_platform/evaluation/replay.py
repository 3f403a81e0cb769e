"""Staging replay: a past day of production decisions replayed through a candidate model.

Input: the day's decisions as the service logged them (``monitoring.decisions`` and the exact feature
vectors it served, ``monitoring.served_features``, both loaded from the decision log), the offline
feature table for the same transactions (``features.transaction_features``) and a candidate version.
The candidate scores the *served* feature vectors (what it would have seen in production) and, for
comparison, the offline recomputation. The report says, against production:

* feature values: per-feature mismatch between served and offline values (training/serving skew);
* scores: candidate minus production score (mean, quantiles of the absolute change, share moved);
* decisions: the production x candidate decision matrix, flips by direction, approval and decline
  rates side by side, flips by routing arm and by degraded (fallback) decisions;
* the candidate on served vs offline features: how many of its decisions depend on the skew.

Thresholds of the candidate follow the service's rule: review at the version's operating
threshold, decline at ``max(decline threshold, review)``, the decline threshold taken from the
production decisions of that day (the service's configuration as logged in ``policy_version``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from mlp_platform.batch.scoring import DECISIONS, decide_many

_DECLINE = re.compile(r"/d=([0-9.eE+-]+)")


def decide(scores: np.ndarray, review: float, decline: float) -> np.ndarray:
    """The service's decision rule, vectorised (the batch scorer's), as decision names."""
    index = decide_many(scores, {"review": review, "decline": decline})
    return np.asarray(DECISIONS, dtype=object)[index]


def decline_threshold_of(policy_versions: list[str], default: float = 0.9) -> float:
    """The decline threshold production used (``policy/r=../d=..``), the most common one of the day."""
    values = [float(m.group(1)) for p in policy_versions if p and (m := _DECLINE.search(p))]
    if not values:
        return default
    uniq, counts = np.unique(values, return_counts=True)
    return float(uniq[np.argmax(counts)])


@dataclass
class ReplayReport:
    day: str
    candidate_version: str
    production_versions: list[str]
    decisions: int
    score_change: dict[str, float]
    decision_matrix: dict[str, dict[str, int]]
    flips: dict[str, int]
    rates: dict[str, dict[str, float]]
    flips_by_segment: dict[str, dict[str, int]]
    feature_skew: dict[str, Any]
    skew_sensitive_decisions: int
    rows: pl.DataFrame = field(repr=False, default_factory=pl.DataFrame)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "rows"}

    def markdown(self) -> str:
        lines = [f"Replay of {self.day}: {self.decisions} production decisions "
                 f"(versions {', '.join(self.production_versions)}) through candidate v{self.candidate_version}.",
                 "", "| | production | candidate |", "|---|---|---|"]
        for rate in ("approval_rate", "review_rate", "decline_rate"):
            lines.append(f"| {rate} | {self.rates['production'][rate]:.4f} | {self.rates['candidate'][rate]:.4f} |")
        lines += ["", "| production \\ candidate | " + " | ".join(DECISIONS) + " |", "|---|---|---|---|"]
        for prod in DECISIONS:
            lines.append(f"| {prod} | " + " | ".join(str(self.decision_matrix[prod][c]) for c in DECISIONS) + " |")
        sc = self.score_change
        lines += ["", f"Score change: mean {sc['mean']:+.5f}, |change| p50 {sc['abs_p50']:.5f}, "
                      f"p99 {sc['abs_p99']:.5f}, moved > 0.01: {sc['share_moved']:.2%}.",
                  f"Feature mismatches served vs offline: {self.feature_skew.get('summary', {})}; "
                  f"candidate decisions that change with the offline features: {self.skew_sensitive_decisions}."]
        return "\n".join(lines)


def replay(decisions: pl.DataFrame, served: pl.DataFrame, offline: pl.DataFrame, feature_names: list[str],
           candidate_scorer, candidate_version: str, candidate_review: float, *, day: str,
           skew: dict[str, Any] | None = None) -> ReplayReport:
    """Replay production decisions (one row per decision with ``decision_id, transaction_id, score,
    decision, arm, degraded, model_version, policy_version``) through the candidate."""
    if decisions.is_empty():
        raise ValueError(f"no production decisions logged for {day}: nothing to replay")
    missing = [c for c in ("decision_id", "transaction_id", "score", "decision", "arm", "degraded",
                           "model_version", "policy_version") if c not in decisions.columns]
    if missing:
        raise ValueError(f"decisions frame lacks column(s) {missing}")
    frame = decisions.join(served.select("decision_id", *feature_names), on="decision_id", how="inner")
    if frame.height != decisions.height:
        raise ValueError(f"{decisions.height - frame.height} decision(s) of {day} have no served feature vector")
    x_served = frame.select(feature_names).to_numpy().astype(np.float64)
    cand = np.asarray(candidate_scorer.score_matrix(x_served), dtype=np.float64)
    decline = max(decline_threshold_of(frame["policy_version"].to_list()), candidate_review)
    cand_decision = decide(cand, candidate_review, decline)
    prod_score = frame["score"].to_numpy().astype(np.float64)
    prod_decision = np.asarray(frame["decision"].to_list(), dtype=object)

    # the candidate on the offline recomputation of the same transactions
    offline_rows = frame.select("decision_id", "transaction_id").join(
        offline.select("transaction_id", *feature_names), on="transaction_id", how="left")
    x_off = offline_rows.select(feature_names).to_numpy().astype(np.float64)
    has_offline = ~np.all(np.isnan(x_off), axis=1)
    cand_off = np.full(cand.shape, np.nan)
    if has_offline.any():
        cand_off[has_offline] = candidate_scorer.score_matrix(x_off[has_offline])
    off_decision = decide(np.nan_to_num(cand_off, nan=-1.0), candidate_review, decline)
    skew_sensitive = int(np.sum(has_offline & (off_decision != cand_decision)))

    change = cand - prod_score
    matrix = {p: {c: int(np.sum((prod_decision == p) & (cand_decision == c))) for c in DECISIONS}
              for p in DECISIONS}
    flips = {f"{p}->{c}": n for p, row in matrix.items() for c, n in row.items() if p != c and n}
    n = len(cand)

    def rates(d: np.ndarray) -> dict[str, float]:
        names = {"approve": "approval_rate", "review": "review_rate", "decline": "decline_rate"}
        return {names[k]: float(np.mean(d == k)) for k in DECISIONS}

    flipped = prod_decision != cand_decision
    by_segment: dict[str, dict[str, int]] = {"arm": {}, "degraded": {}}
    for arm in sorted(set(frame["arm"].to_list())):
        by_segment["arm"][arm] = int(np.sum(flipped & (frame["arm"].to_numpy() == arm)))
    degraded = frame["degraded"].to_numpy().astype(bool)
    by_segment["degraded"] = {"true": int(np.sum(flipped & degraded)), "false": int(np.sum(flipped & ~degraded))}
    rows = frame.select("decision_id", "transaction_id", "arm", "model_version").with_columns(
        pl.lit(day).alias("day"), pl.lit(str(candidate_version)).alias("candidate_version"),
        pl.Series("production_score", prod_score), pl.Series("candidate_score", cand),
        pl.Series("candidate_score_offline_features", cand_off),
        pl.Series("production_decision", prod_decision.astype(str)),
        pl.Series("candidate_decision", cand_decision.astype(str)))
    return ReplayReport(
        day=day, candidate_version=str(candidate_version),
        production_versions=sorted({str(v) for v in frame["model_version"].to_list()}), decisions=n,
        score_change={"mean": float(change.mean()), "abs_p50": float(np.quantile(np.abs(change), 0.5)),
                      "abs_p99": float(np.quantile(np.abs(change), 0.99)),
                      "share_moved": float(np.mean(np.abs(change) > 0.01))},
        decision_matrix=matrix, flips=flips,
        rates={"production": rates(prod_decision), "candidate": rates(cand_decision)},
        flips_by_segment=by_segment, feature_skew=skew or {}, skew_sensitive_decisions=skew_sensitive, rows=rows)


