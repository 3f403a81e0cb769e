"""Promotion gates: plain functions returning a GateResult that explains itself.

* performance: non-inferiority: the paired day-block bootstrap interval of (candidate - champion)
  must exclude a loss larger than the tolerance on each primary metric (first model: absolute
  minimums);
* bias: false-positive-rate ratio and true-positive-rate difference across segments within bounds,
  with minimum group sizes and bootstrap intervals so noise does not decide;
* consistency: the registered artefact loaded through the serving scorer gives the training path's
  scores (max abs diff <= 1e-9) with the same feature order;
* latency: single-row scoring through the serving scorer within a p99 budget;
* data: the training data the candidate saw is sane (rows, frauds, spec hash, no empty feature).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import polars as pl

from mlp_platform.registry.promotion import GateResult
from mlp_platform.runtime.scorer import Scorer


@dataclass(frozen=True)
class GateConfig:
    #: Primary metrics and how much worse than the champion (absolute) the candidate may be.
    tolerances: tuple[tuple[str, float], ...] = (("average_precision", 0.02), ("alert_budget_precision", 0.02),
                                                 ("recall_at_fpr", 0.03))
    #: First model (no champion): absolute minimums on the point estimates.
    minimums: tuple[tuple[str, float], ...] = (("roc_auc", 0.75), ("average_precision", 0.05))
    #: Customer attributes judged for bias (home_country: the customer's home region). Business
    #: segments (channel, amount band) differ in risk by nature and are reported, not judged.
    bias_segments: tuple[str, ...] = ("home_country",)
    #: When the data has none of the bias segments: pass with "not evaluated" (False) or refuse (True).
    require_bias_segments: bool = False
    max_fpr_ratio: float = 1.25
    max_tpr_diff: float = 0.10
    min_group_size: int = 200
    min_group_frauds: int = 10
    consistency_tolerance: float = 1e-9
    latency_p99_budget_us: float = 2000.0
    latency_samples: int = 2000
    min_training_rows: int = 1000
    min_training_frauds: int = 20

    @classmethod
    def from_mapping(cls, doc: dict[str, Any] | None) -> GateConfig:
        """A configuration from a decider's ``gates`` section: its fields by name (absent: the default),
        ``tolerances`` and ``minimums`` as mappings of metric to number; a ValueError names a bad key."""
        doc = dict(doc or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(doc) - set(known))
        if unknown:
            raise ValueError(f"unknown gate setting(s) {unknown} (known: {', '.join(sorted(known))})")
        defaults = cls()
        values: dict[str, Any] = {}
        for name, value in doc.items():
            default = getattr(defaults, name)
            if name in ("tolerances", "minimums"):
                if not isinstance(value, dict) or not all(
                        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()):
                    raise ValueError(f"{name}: expected a mapping of metric name to number, got {value!r}")
                value = tuple((str(k), float(v)) for k, v in value.items())
            elif name == "bias_segments":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{name}: expected a list of column names, got {value!r}")
                value = tuple(value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name}: expected true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
            elif isinstance(default, int) and not float(value).is_integer():
                raise ValueError(f"{name}: expected a whole number, got {value!r}")
            else:
                value = type(default)(value)
            values[name] = value
        return cls(**values)


def consistency_gate(scorer: Scorer, golden: np.ndarray, training_scores: np.ndarray,
                     feature_names: list[str], tolerance: float = 1e-9) -> GateResult:
    if scorer.feature_names != list(feature_names):
        return GateResult("consistency", False, "the served model's feature order differs from training",
                          {"served": scorer.feature_names, "trained": list(feature_names)})
    served = np.array([scorer.score_row(row) for row in golden])
    diff = float(np.max(np.abs(served - training_scores))) if len(served) else 0.0
    passed = diff <= tolerance
    return GateResult(
        "consistency", passed,
        f"max |served - training| = {diff:.3g} on {len(served)} golden rows (limit {tolerance:g})",
        {"max_abs_diff": diff, "rows": len(served), "tolerance": tolerance})


def latency_gate(scorer: Scorer, rows: np.ndarray, budget_p99_us: float, samples: int = 2000) -> GateResult:
    if len(rows) == 0:
        return GateResult("latency", False, "no rows to time", {})
    for row in rows[: min(50, len(rows))]:  # warm-up
        scorer.score_row(row)
    timings = np.empty(samples)
    for i in range(samples):
        row = rows[i % len(rows)]
        start = time.perf_counter_ns()
        scorer.score_row(row)
        timings[i] = (time.perf_counter_ns() - start) / 1000.0
    p50, p99 = float(np.percentile(timings, 50)), float(np.percentile(timings, 99))
    passed = p99 <= budget_p99_us
    return GateResult("latency", passed,
                      f"single-row p99 {p99:.0f} us (p50 {p50:.0f} us) against a budget of {budget_p99_us:.0f} us",
                      {"p50_us": p50, "p99_us": p99, "budget_p99_us": budget_p99_us, "samples": samples})


def data_gate(training: pl.DataFrame, feature_names: list[str], spec_hash: str, config: GateConfig) -> GateResult:
    problems = []
    if training.height < config.min_training_rows:
        problems.append(f"{training.height} training rows < {config.min_training_rows}")
    frauds = int(training["label"].sum()) if "label" in training.columns else 0
    if frauds < config.min_training_frauds:
        problems.append(f"{frauds} frauds < {config.min_training_frauds}")
    hashes = training["feature_spec_hash"].unique().to_list() if "feature_spec_hash" in training.columns else []
    if hashes != [spec_hash]:
        problems.append(f"training features built with spec {hashes}, current spec is {spec_hash}")
    empty = [c for c in feature_names if c in training.columns and training[c].null_count() == training.height]
    if empty:
        problems.append(f"features entirely null: {', '.join(empty)}")
    details: dict[str, Any] = {"rows": training.height, "frauds": frauds, "spec_hashes": hashes}
    if problems:
        return GateResult("data", False, "; ".join(problems), details)
    return GateResult("data", True, f"{training.height} rows, {frauds} frauds, features from spec {spec_hash}",
                      details)


def performance_gate(backtest: dict[str, Any], config: GateConfig) -> GateResult:
    """Not worse than the champion beyond tolerance (paired intervals); first model: minimums."""
    candidate = backtest["candidate"]
    if "champion" not in backtest:
        problems, shown = [], []
        for metric, minimum in config.minimums:
            value = candidate.get(metric)
            shown.append(f"{metric} {value if value is None else round(value, 4)} (min {minimum})")
            if value is None or value < minimum:
                problems.append(metric)
        return GateResult("performance", not problems,
                          ("first model: " + ", ".join(shown) + (" - below minimum: " + ", ".join(problems)
                                                                   if problems else " - all minimums met")),
                          {"mode": "absolute", "minimums": dict(config.minimums)})
    paired = backtest.get("paired", {})
    worse, shown = [], []
    for metric, tolerance in config.tolerances:
        entry = paired.get(metric)
        if not entry or entry.get("low") is None:
            worse.append(f"{metric}: no paired interval, cannot show the candidate is not worse")
            continue
        shown.append(f"{metric} diff {entry['diff']:+.4f} [{entry['low']:+.4f}, {entry['high']:+.4f}]")
        if entry["low"] < -tolerance:  # non-inferiority: the interval must exclude a loss beyond tolerance
            worse.append(f"{metric} may be worse than the champion by more than {tolerance}")
    summary = ("candidate vs champion (paired 95% interval of the difference): " + "; ".join(shown) +
               (" - REFUSED: " + "; ".join(worse) if worse else " - not worse beyond tolerance"))
    return GateResult("performance", not worse, summary,
                      {"mode": "versus_champion", "paired": paired, "tolerances": dict(config.tolerances)})


def bias_gate(window: pl.DataFrame, scores: np.ndarray, threshold: float, config: GateConfig,
              seed: int = 0) -> GateResult:
    from mlp_platform.evaluation.fairness import fairness_report, judge_fairness

    frame = window.with_columns(pl.Series("score", scores, dtype=pl.Float64))
    judged, failures = {}, []
    for segment in config.bias_segments:
        if segment not in frame.columns or frame[segment].n_unique() < 2:
            continue
        report = fairness_report(frame, "score", threshold, segment, min_group_size=config.min_group_size,
                                 min_group_frauds=config.min_group_frauds, seed=seed)
        verdict = judge_fairness(report, config.max_fpr_ratio, config.max_tpr_diff)
        judged[segment] = {"report": report, "verdict": verdict}
        if not verdict["passed"]:
            failures.append(verdict["explanation"])
    if not judged:
        return GateResult("bias", not config.require_bias_segments,
                          f"NOT EVALUATED: the data has none of the bias segments {list(config.bias_segments)} "
                          "with two or more groups; this is not evidence of fairness"
                          + (" (refused: bias segments are required)" if config.require_bias_segments else ""),
                          {"segments": {}, "evaluated": False})
    summary = ("; ".join(failures) if failures else
               f"FPR ratio within {config.max_fpr_ratio} and TPR difference within {config.max_tpr_diff} "
               f"for {', '.join(judged)} (groups below {config.min_group_size} rows or "
               f"{config.min_group_frauds} frauds not judged)")
    return GateResult("bias", not failures, summary, {"segments": judged})
