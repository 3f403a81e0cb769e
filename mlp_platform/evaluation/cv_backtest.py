"""Cross-validated backtest of a credit decider's model against the scorecard baseline, for data with
no application dates (the German credit data): repeated stratified K-fold, the same folds for both
models, out-of-fold scores only.

Reported per model, each with a percentile bootstrap interval (rows resampled, the same resamples
for both models, each replicate the mean over the repeats): ROC AUC, Gini (2 AUC - 1), the KS
statistic (the largest gap between the bad and good score distributions), and the cost per
application under the data's cost matrix when the policy accepts below its first band's bound
(a bad accepted costs 5, a good refused 1), with the approval rate and the bad rate among the
approved; and the paired difference (model - scorecard) of each, so "better" is judged with its
noise. The fairness of the model's refusals (a score at or above the acceptance bound) is judged
over the decider's declared segments (age band, sex) with the platform's fairness report: the
"false-positive rate" there is the share of good applicants refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from mlp_platform.data.german_credit import COST_BAD_ACCEPTED, COST_GOOD_REFUSED
from mlp_platform.deciders.declaration import DeciderDeclaration
from mlp_platform.evaluation.fairness import fairness_report, judge_fairness
from mlp_platform.evaluation.metrics import percentile_interval, resample_indices, roc_auc
from mlp_platform.evaluation.scorecard import fit_scorecard
from mlp_platform.features.request import aligned_features
from mlp_platform.training.trainer import fit_monotone_booster

METRICS = ("roc_auc", "gini", "ks", "cost_per_application", "approval_rate", "bad_rate_approved")
#: Lower is better for these; higher for the rest; the approval rate is a consequence, reported only.
LOWER_IS_BETTER = frozenset({"cost_per_application", "bad_rate_approved"})
REPORTED_ONLY = frozenset({"approval_rate"})
AGE_BANDS = ((0, 25, "under_25"), (25, 35, "25_34"), (35, 50, "35_49"), (50, 200, "50_plus"))


@dataclass(frozen=True)
class CVBacktestConfig:
    n_splits: int = 5
    n_repeats: int = 5
    seed: int = 7
    n_boot: int = 500
    alpha: float = 0.05


def ks_statistic(y: np.ndarray, s: np.ndarray) -> float:
    """max |F_bad(t) - F_good(t)| over thresholds t (ties handled: only distinct scores are cut)."""
    y = np.asarray(y, dtype=np.int8)
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = np.asarray(s)[order], y[order]
    bad, good = np.cumsum(y_sorted == 1), np.cumsum(y_sorted == 0)
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]  # the last index of each distinct score
    n_bad, n_good = bad[-1], good[-1]
    if n_bad == 0 or n_good == 0:
        return float("nan")
    return float(np.max(np.abs(bad[last] / n_bad - good[last] / n_good)))


def credit_metrics(y: np.ndarray, s: np.ndarray, accept_below: float) -> dict[str, float]:
    y = np.asarray(y, dtype=np.int8)
    s = np.asarray(s, dtype=float)
    accepted = s < accept_below
    auc = roc_auc(y, s) if 0 < y.sum() < y.size else float("nan")
    cost = COST_BAD_ACCEPTED * ((y == 1) & accepted) + COST_GOOD_REFUSED * ((y == 0) & ~accepted)
    return {
        "roc_auc": auc, "gini": 2 * auc - 1, "ks": ks_statistic(y, s),
        "cost_per_application": float(cost.mean()), "approval_rate": float(accepted.mean()),
        "bad_rate_approved": float(y[accepted].mean()) if accepted.any() else float("nan"),
    }


def add_age_band(frame: pl.DataFrame, column: str = "age_years") -> pl.DataFrame:
    expr = pl.lit(None, dtype=pl.String)
    for lo, hi, label in reversed(AGE_BANDS):
        expr = pl.when((pl.col(column) >= lo) & (pl.col(column) < hi)).then(pl.lit(label)).otherwise(expr)
    return frame.with_columns(expr.alias("age_band"))


def _folds(y: np.ndarray, config: CVBacktestConfig):
    from sklearn.model_selection import RepeatedStratifiedKFold

    splitter = RepeatedStratifiedKFold(n_splits=config.n_splits, n_repeats=config.n_repeats,
                                       random_state=config.seed)
    for i, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        yield i // config.n_splits, train, test


def out_of_fold_scores(decider: DeciderDeclaration, applications: pl.DataFrame, y: np.ndarray,
                       config: CVBacktestConfig, table: pl.DataFrame | None = None) -> dict[str, np.ndarray]:
    """(n_repeats, n) out-of-fold scores of the decider's model and of the scorecard, same folds
    (features from ``table``, the decider's feature table, when given; see aligned_features)."""
    spec = decider.spec
    features = aligned_features(spec, applications, decider.entity.key, table)
    x = features.to_numpy().astype(np.float64)
    x_pd = features.to_pandas()
    names = spec.feature_names
    out = {name: np.full((config.n_repeats, len(y)), np.nan) for name in ("model", "scorecard")}
    for repeat, train, test in _folds(y, config):
        booster = fit_monotone_booster(x[train], y[train], names, decider.model.monotone_constraints,
                                       seed=config.seed + repeat)
        out["model"][repeat, test] = booster.predict(x[test], num_threads=1)
        card = fit_scorecard(x_pd.iloc[train], y[train], spec, seed=config.seed)
        out["scorecard"][repeat, test] = card.predict_proba(x_pd.iloc[test])
    return out


def compare(y: np.ndarray, scores: dict[str, np.ndarray], accept_below: float, config: CVBacktestConfig,
            baseline: str = "scorecard") -> dict[str, Any]:
    """Each model's metrics (mean over repeats) with bootstrap intervals, and the paired differences
    against ``baseline`` with theirs."""
    def mean_metrics(idx: np.ndarray | None) -> dict[str, dict[str, float]]:
        out = {}
        for name, s in scores.items():
            per_repeat = [credit_metrics(y if idx is None else y[idx], r if idx is None else r[idx], accept_below)
                          for r in s]
            out[name] = {m: float(np.nanmean([p[m] for p in per_repeat])) for m in METRICS}
        return out

    point = mean_metrics(None)
    replicates = [mean_metrics(idx) for idx in resample_indices(len(y), config.n_boot, config.seed)]
    report: dict[str, Any] = {"models": {}, "differences": {}}
    for name in scores:
        report["models"][name] = {
            m: {"value": point[name][m], "ci": list(percentile_interval([r[name][m] for r in replicates], config.alpha))}
            for m in METRICS}
    for name in scores:
        if name == baseline:
            continue
        diffs = {}
        for m in METRICS:
            ci = percentile_interval([r[name][m] - r[baseline][m] for r in replicates], config.alpha)
            better = ci[1] < 0 if m in LOWER_IS_BETTER else ci[0] > 0
            worse = ci[0] > 0 if m in LOWER_IS_BETTER else ci[1] < 0
            verdict = "better" if better else "worse" if worse else "no clear difference"
            diffs[m] = {"value": point[name][m] - point[baseline][m], "ci": list(ci),
                        "verdict": "reported" if m in REPORTED_ONLY else verdict}
        report["differences"][f"{name} - {baseline}"] = diffs
    return report


def cross_validated_backtest(decider: DeciderDeclaration, applications: pl.DataFrame, outcomes: pl.DataFrame,
                             config: CVBacktestConfig | None = None, table: pl.DataFrame | None = None
                             ) -> dict[str, Any]:
    """The backtest report (a JSON-safe dict) of ``decider`` on undated applications and outcomes
    (their features from ``table`` when given: the decider's feature table)."""
    config = config or CVBacktestConfig()
    joined = applications.join(outcomes.select("application_id", "label"), on="application_id", how="inner",
                               maintain_order="left")
    if joined.height != applications.height:
        raise ValueError(f"{applications.height - joined.height} application(s) have no outcome")
    y = joined["label"].to_numpy().astype(np.int8)
    accept_below = decider.policy.thresholds(0.5)[decider.policy.bands[0].action]
    scores = out_of_fold_scores(decider, joined, y, config, table)
    report = compare(y, scores, accept_below, config)
    fairness = fairness_judgements(decider, joined, scores["model"][0], accept_below, config)
    return {
        "decider": decider.name, "rows": int(y.size), "bads": int(y.sum()),
        "split": f"repeated stratified {config.n_splits}-fold cross-validation, {config.n_repeats} repeats, "
                 f"seed {config.seed} (no application dates: out-of-time is not possible)",
        "accept_below": accept_below, "config": asdict(config), **report, "fairness": fairness,
    }


def fairness_judgements(decider: DeciderDeclaration, applications: pl.DataFrame, scores: np.ndarray,
                        accept_below: float, config: CVBacktestConfig) -> dict[str, Any]:
    """The fairness report and judgement of ``scores``' refusals over each declared bias segment
    (``applications`` carry the labels, row for row with ``scores``)."""
    gates = decider.gates
    frame = add_age_band(applications).with_columns(pl.Series("score", np.asarray(scores, dtype=np.float64)))
    fairness = {}
    for segment in gates.get("bias_segments", ["age_band", "sex"]):
        if segment not in frame.columns:
            raise ValueError(f"bias segment {segment!r} is neither a request column nor age_band")
        fr = fairness_report(frame, "score", accept_below, segment,
                             min_group_size=int(gates.get("min_group_size", 50)),
                             min_group_frauds=int(gates.get("min_group_frauds", 10)),
                             n_boot=config.n_boot, seed=config.seed, alpha=config.alpha)
        fairness[segment] = {"report": fr, "judgement": judge_fairness(
            fr, float(gates.get("max_fpr_ratio", 1.25)), float(gates.get("max_tpr_diff", 0.10)))}
    return fairness


def holdout_mask(keys: Sequence[str], share: float) -> np.ndarray:
    """True for the keys in the platform's holdout: the first 8 bytes of sha256(key) as a fraction
    of 2**64 below ``share`` (the same keys every time, whatever the order or the other rows)."""
    return np.fromiter((int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:8], "big") < share * 2**64
                        for k in keys), dtype=bool, count=len(keys))


def holdout_backtest(decider: DeciderDeclaration, applications: pl.DataFrame, outcomes: pl.DataFrame,
                     all_scores: np.ndarray, holdout: np.ndarray, config: CVBacktestConfig | None = None,
                     table: pl.DataFrame | None = None) -> dict[str, Any]:
    """The backtest report of a model trained elsewhere (a submission): ``all_scores`` (its scores of
    every application, in order) judged on the holdout rows against the scorecard fitted on the
    other rows, with the same metrics, intervals and paired differences as
    :func:`cross_validated_backtest` (one "repeat"); its fairness over every application."""
    config = config or CVBacktestConfig()
    joined = applications.join(outcomes.select("application_id", "label"), on="application_id", how="inner",
                               maintain_order="left")
    if joined.height != applications.height:
        raise ValueError(f"{applications.height - joined.height} application(s) have no outcome")
    y = joined["label"].to_numpy().astype(np.int8)
    spec = decider.spec
    x_pd = aligned_features(spec, joined, decider.entity.key, table).to_pandas()
    card = fit_scorecard(x_pd[~holdout], y[~holdout], spec, seed=config.seed)
    scorecard = card.predict_proba(x_pd[holdout])
    y_h = y[holdout]
    accept_below = decider.policy.thresholds(0.5)[decider.policy.bands[0].action]
    all_scores = np.asarray(all_scores, dtype=np.float64)
    scores = {"model": all_scores[holdout][None, :], "scorecard": scorecard[None, :]}
    report = compare(y_h, scores, accept_below, config)
    # fairness over every application (the holdout's groups are too small to judge: 50 rows and 10
    # bads per group at least): it judges who the model refuses, little changed by a row's having
    # been trained on
    fairness = fairness_judgements(decider, joined, all_scores, accept_below, config)
    share = decider.submission.holdout_share
    return {
        "decider": decider.name, "rows": int(y_h.size), "bads": int(y_h.sum()),
        "split": f"platform holdout: {int(y_h.size)} of {int(y.size)} applications ({share:.0%} by a hash of "
                 f"{decider.entity.key}), never in `mlp deciders export`; the scorecard fitted on the other "
                 f"{int((~holdout).sum())}; fairness over all {int(y.size)}",
        "accept_below": accept_below, "config": asdict(config), **report, "fairness": fairness,
    }


def backtest_table(report: dict[str, Any]) -> str:
    """The report's metrics as a Markdown table (value and interval per model, then the difference)."""
    names = list(report["models"])
    diff_key = next(iter(report["differences"]), None)
    head = "| metric | " + " | ".join(names) + (f" | {diff_key} |" if diff_key else " |")
    lines = [head, "|" + "---|" * (len(names) + 1 + bool(diff_key))]
    for m in METRICS:
        cells = []
        for name in names:
            v = report["models"][name][m]
            cells.append(f"{v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]")
        if diff_key:
            d = report["differences"][diff_key][m]
            cells.append(f"{d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] {d['verdict']}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
