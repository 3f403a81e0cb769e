"""Error-rate parity across segments, judged with confidence intervals so noise does not decide.

This module owns :func:`fairness_report` (per-group false-positive and true-positive rates at the
operating threshold, compared with a reference group, with bootstrap CIs) and
:func:`judge_fairness` (pass/fail per group against a maximum FPR ratio and a maximum TPR
difference, failing a group only when its whole CI is beyond the bound).

Why these two rates: at a fixed threshold, the FPR is the share of a group's genuine customers
whose transactions are declined or reviewed (the customer harm), the TPR the share of its fraud
that is stopped (the protection each group gets).

Bootstrap: resampling is stratified by (group, label) -- each group's legitimate and fraudulent
transactions are resampled with replacement within themselves. The resampled count of flagged
transactions is then exactly ``Binomial(n, observed rate)``, which is what is drawn (vectorised,
fast). A group with no flagged legitimate transactions therefore has a degenerate FPR interval
[0, 0]; the minimum group sizes keep such cases rare.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from mlp_platform.evaluation.metrics import percentile_interval, segment_key, to_jsonable


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio with 0/0 = 1 (equal rates) and x/0 = inf."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.inf)
    np.divide(num, den, out=out, where=den > 0)
    out[(den == 0) & (num == 0)] = 1.0
    return out


def _interval(values: np.ndarray, alpha: float) -> list[float] | None:
    low, high = percentile_interval(values, alpha)
    return None if math.isnan(low) else [low, high]


def fairness_report(
    frame: pl.DataFrame,
    score_col: str,
    threshold: float,
    segment_col: str,
    min_group_size: int = 200,
    min_group_frauds: int = 10,
    n_boot: int = 200,
    seed: int = 0,
    reference: Any = None,
    *,
    alpha: float = 0.05,
    label_col: str = "label",
) -> dict[str, Any]:
    """Per-group FPR and TPR at ``threshold`` (flag = score >= threshold) with bootstrap CIs, and each
    group's FPR ratio (group / reference) and TPR difference (group - reference) with CIs.

    A group is ``"insufficient"`` (reported, never judged) when it has fewer than
    ``min_group_size`` transactions, fewer than ``min_group_frauds`` frauds, or no legitimate
    transaction. The reference is ``reference`` (a segment value) or, by default, the largest
    sufficient group (ties: smallest key); it must be sufficient. Group keys are ``str(value)``,
    ``"null"`` for missing values.

    Ratios: 0/0 = 1 (both groups flag no genuine customer), x/0 = ``inf``. Rates undefined for a
    group (TPR without frauds) are ``None``. The result is a plain dict (``inf`` may appear in
    ratios; everything else is JSON-safe).
    """
    if segment_col not in frame.columns:
        raise ValueError(f"segment column {segment_col!r} not in the frame")
    stats = (
        frame.select(
            pl.col(segment_col).alias("group"),
            (pl.col(label_col) == 1).alias("fraud"),
            (pl.col(score_col) >= threshold).alias("flagged"),
        )
        .group_by("group")
        .agg(
            pl.len().alias("n"),
            pl.col("fraud").sum().alias("n_fraud"),
            (pl.col("flagged") & pl.col("fraud")).sum().alias("tp"),
            (pl.col("flagged") & ~pl.col("fraud")).sum().alias("fp"),
        )
    )
    groups: dict[str, dict[str, Any]] = {}
    for row in stats.iter_rows(named=True):
        n, n_fraud = int(row["n"]), int(row["n_fraud"])
        n_legit = n - n_fraud
        reasons = []
        if n < min_group_size:
            reasons.append(f"{n} transactions < {min_group_size}")
        if n_fraud < min_group_frauds:
            reasons.append(f"{n_fraud} frauds < {min_group_frauds}")
        if n_legit == 0:
            reasons.append("no legitimate transactions")
        groups[segment_key(row["group"])] = {
            "n": n,
            "n_fraud": n_fraud,
            "n_legit": n_legit,
            "tp": int(row["tp"]),
            "fp": int(row["fp"]),
            "sufficient": not reasons,
            "reason": "; ".join(reasons) or None,
        }
    keys = sorted(groups)
    sufficient = [key for key in keys if groups[key]["sufficient"]]
    if reference is None:
        ref_key = min(sufficient, key=lambda key: (-groups[key]["n"], key)) if sufficient else None
    else:
        ref_key = segment_key(reference)
        if ref_key not in groups:
            raise ValueError(f"reference group {ref_key!r} not found in {segment_col!r} (groups: {keys})")
        if not groups[ref_key]["sufficient"]:
            raise ValueError(f"reference group {ref_key!r} is too small: {groups[ref_key]['reason']}")

    rng = np.random.default_rng(seed)
    draws: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key in keys:  # sorted order: deterministic draws
        g = groups[key]
        fpr = g["fp"] / g["n_legit"] if g["n_legit"] else math.nan
        tpr = g["tp"] / g["n_fraud"] if g["n_fraud"] else math.nan
        g["fpr"], g["tpr"] = fpr, tpr
        fpr_b = rng.binomial(g["n_legit"], fpr, n_boot) / g["n_legit"] if g["n_legit"] else np.full(n_boot, np.nan)
        tpr_b = rng.binomial(g["n_fraud"], tpr, n_boot) / g["n_fraud"] if g["n_fraud"] else np.full(n_boot, np.nan)
        draws[key] = (fpr_b, tpr_b)

    out_groups: dict[str, Any] = {}
    for key in keys:
        g = groups[key]
        fpr_b, tpr_b = draws[key]
        entry: dict[str, Any] = {
            "status": "reference" if key == ref_key else ("judged" if g["sufficient"] else "insufficient"),
            "reason": g["reason"],
            "n": g["n"],
            "n_fraud": g["n_fraud"],
            "n_legit": g["n_legit"],
            "fpr": g["fpr"],
            "fpr_ci": _interval(fpr_b, alpha),
            "tpr": g["tpr"],
            "tpr_ci": _interval(tpr_b, alpha),
            "fpr_ratio": None,
            "fpr_ratio_ci": None,
            "tpr_diff": None,
            "tpr_diff_ci": None,
        }
        if ref_key is not None and g["n_legit"]:
            ref = groups[ref_key]
            ref_fpr_b, ref_tpr_b = draws[ref_key]
            entry["fpr_ratio"] = float(_ratio(np.array(g["fpr"]), np.array(ref["fpr"])))
            entry["fpr_ratio_ci"] = _interval(_ratio(fpr_b, ref_fpr_b), alpha)
            if g["n_fraud"]:
                entry["tpr_diff"] = g["tpr"] - ref["tpr"]
                entry["tpr_diff_ci"] = _interval(tpr_b - ref_tpr_b, alpha)
        out_groups[key] = entry

    report = {
        "segment_col": segment_col,
        "score_col": score_col,
        "threshold": float(threshold),
        "reference": ref_key,
        "min_group_size": int(min_group_size),
        "min_group_frauds": int(min_group_frauds),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "alpha": float(alpha),
        "groups": out_groups,
    }
    # to_jsonable would turn an infinite ratio into None: keep ratios as floats, clean the rest.
    cleaned = to_jsonable({**report, "groups": {}})
    cleaned["groups"] = {
        key: {
            name: (value if name.startswith("fpr_ratio") else to_jsonable(value))
            for name, value in entry.items()
        }
        for key, entry in out_groups.items()
    }
    return cleaned


def _fmt_ci(ci: list[float] | None, fmt: str) -> str:
    return "n/a" if ci is None else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def judge_fairness(
    report: dict[str, Any], max_fpr_ratio: float = 1.25, max_tpr_diff: float = 0.10
) -> dict[str, Any]:
    """Judge a :func:`fairness_report`: a group fails only when its CI is entirely beyond a bound.

    * FPR: fails when the whole ratio CI is outside ``[1 / max_fpr_ratio, max_fpr_ratio]`` (lower
      bound > max, or upper bound < 1 / max) -- too many *or* too few genuine customers flagged
      relative to the reference.
    * TPR: fails when the whole difference CI is outside ``[-max_tpr_diff, max_tpr_diff]``.

    Statuses per group: ``"fail"``; ``"inconclusive"`` (a point estimate is beyond a bound but the
    CI reaches back inside: not failed, worth watching); ``"pass"``; ``"insufficient"`` (too small,
    not judged); ``"reference"``. Returns ``passed`` (no group failed), ``failed`` (keys),
    ``groups`` (``{key: {"status", "explanation"}}``) and a one-paragraph ``explanation``.
    """
    if max_fpr_ratio < 1.0:
        raise ValueError(f"max_fpr_ratio must be >= 1, got {max_fpr_ratio}")
    level = f"{100 * (1 - report.get('alpha', 0.05)):g}% CI"
    low_ratio = 1.0 / max_fpr_ratio
    ref = report.get("reference")
    verdicts: dict[str, Any] = {}
    for key, g in report["groups"].items():
        if g["status"] == "reference":
            verdicts[key] = {"status": "reference", "explanation": f"{key}: reference group."}
            continue
        if g["status"] == "insufficient":
            verdicts[key] = {
                "status": "insufficient",
                "explanation": f"{key}: not judged, too little data ({g['reason']}).",
            }
            continue
        failures, warnings, notes = [], [], []
        ratio, ratio_ci = g["fpr_ratio"], g["fpr_ratio_ci"]
        if ratio is None or ratio_ci is None:
            notes.append("FPR ratio undefined")
        else:
            text = (
                f"FPR {g['fpr']:.2%} vs {ref}: ratio {ratio:.2f}, {level} {_fmt_ci(ratio_ci, '.2f')}, "
                f"allowed [{low_ratio:.2f}, {max_fpr_ratio:.2f}]"
            )
            if ratio_ci[0] > max_fpr_ratio or ratio_ci[1] < low_ratio:
                failures.append(text)
            elif ratio > max_fpr_ratio or ratio < low_ratio:
                warnings.append(text + " (point estimate outside, CI overlaps)")
            else:
                notes.append(text)
        diff, diff_ci = g["tpr_diff"], g["tpr_diff_ci"]
        if diff is None or diff_ci is None:
            notes.append("TPR difference undefined")
        else:
            text = (
                f"TPR {g['tpr']:.2%} vs {ref}: difference {diff:+.3f}, {level} {_fmt_ci(diff_ci, '+.3f')}, "
                f"allowed +/-{max_tpr_diff:.3f}"
            )
            if diff_ci[0] > max_tpr_diff or diff_ci[1] < -max_tpr_diff:
                failures.append(text)
            elif abs(diff) > max_tpr_diff:
                warnings.append(text + " (point estimate outside, CI overlaps)")
            else:
                notes.append(text)
        if failures:
            status = "fail"
            explanation = f"{key}: FAIL, whole CI beyond the bound: " + "; ".join(failures)
            if warnings or notes:
                explanation += ". Also: " + "; ".join(warnings + notes)
        elif warnings:
            status = "inconclusive"
            explanation = f"{key}: not failed (noise cannot be ruled out): " + "; ".join(warnings + notes)
        else:
            status = "pass"
            explanation = f"{key}: pass: " + "; ".join(notes)
        verdicts[key] = {"status": status, "explanation": explanation + "."}

    failed = [key for key, v in verdicts.items() if v["status"] == "fail"]
    counts = {status: sum(v["status"] == status for v in verdicts.values())
              for status in ("pass", "inconclusive", "fail", "insufficient")}
    summary = (
        f"{report['segment_col']} at threshold {report['threshold']:g}, reference {ref}: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + (f". Failed: {', '.join(failed)}." if failed else ". No group failed.")
    )
    return {
        "passed": not failed,
        "failed": failed,
        "max_fpr_ratio": float(max_fpr_ratio),
        "max_tpr_diff": float(max_tpr_diff),
        "groups": verdicts,
        "explanation": summary,
    }
