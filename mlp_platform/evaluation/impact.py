"""Decision impact of replacing the champion model by a candidate, at one operating threshold.

This module owns :func:`decision_impact`: which decisions flip (flag = score >= threshold) when the
candidate replaces the champion, split by direction -- ``newly_flagged`` (champion approved,
candidate flags) and ``newly_approved`` (champion flagged, candidate approves) -- overall and per
segment, with the frauds, the fraud amount and the total amount behind each direction. This is
what operations and customers feel, beyond any aggregate metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from mlp_platform.evaluation.metrics import DEFAULT_SEGMENTS, segment_key, to_jsonable


def _direction(mask: np.ndarray, n: int, fraud: np.ndarray | None, amount: np.ndarray | None) -> dict[str, Any]:
    count = int(mask.sum())
    return {
        "n": count,
        "share": count / n if n else None,
        "n_fraud": None if fraud is None else int((mask & fraud).sum()),
        "fraud_amount": None if fraud is None or amount is None else float(amount[mask & fraud].sum()),
        "amount": None if amount is None else float(amount[mask].sum()),
    }


def _impact(
    champion: np.ndarray, candidate: np.ndarray, fraud: np.ndarray | None, amount: np.ndarray | None
) -> dict[str, Any]:
    n = int(champion.size)
    newly_flagged = _direction(candidate & ~champion, n, fraud, amount)
    newly_approved = _direction(champion & ~candidate, n, fraud, amount)
    out: dict[str, Any] = {
        "n": n,
        "n_fraud": None if fraud is None else int(fraud.sum()),
        "flip_rate": (newly_flagged["n"] + newly_approved["n"]) / n if n else None,
        "champion_flag_rate": float(champion.mean()) if n else None,
        "candidate_flag_rate": float(candidate.mean()) if n else None,
        "newly_flagged": newly_flagged,
        "newly_approved": newly_approved,
        "both_flagged": int((champion & candidate).sum()),
        "both_approved": int((~champion & ~candidate).sum()),
        "net_frauds_caught": None,
        "net_fraud_amount_caught": None,
    }
    if fraud is not None:
        out["net_frauds_caught"] = newly_flagged["n_fraud"] - newly_approved["n_fraud"]
        if amount is not None:
            out["net_fraud_amount_caught"] = newly_flagged["fraud_amount"] - newly_approved["fraud_amount"]
    return out


def decision_impact(
    frame: pl.DataFrame,
    champion_col: str,
    candidate_col: str,
    threshold: float,
    segments: Sequence[str] = DEFAULT_SEGMENTS,
    *,
    label_col: str = "label",
    amount_col: str = "amount",
) -> dict[str, Any]:
    """Decision flips between champion and candidate at ``threshold`` (flag = score >= threshold).

    Returns a JSON-serialisable dict: ``overall`` and ``segments`` (``{segment_col: {value: ...}}``
    for the columns of ``segments`` present in the frame; keys ``str(value)``, ``"null"`` for
    missing). Each block has ``n``, ``n_fraud``, ``flip_rate`` (share of rows whose decision
    changes), ``champion_flag_rate``, ``candidate_flag_rate``, ``both_flagged``, ``both_approved``,
    ``newly_flagged`` and ``newly_approved`` -- each ``{n, share (of the block's rows), n_fraud,
    fraud_amount, amount}`` -- and ``net_frauds_caught`` / ``net_fraud_amount_caught`` (newly
    flagged minus newly approved; positive = the candidate stops more fraud). Without a label or an
    amount column the fraud or amount fields are ``None``.
    """
    for col in (champion_col, candidate_col):
        if frame[col].null_count():
            raise ValueError(f"score column {col!r} has missing scores")
    champion = (frame[champion_col] >= threshold).to_numpy()
    candidate = (frame[candidate_col] >= threshold).to_numpy()
    fraud = (frame[label_col] == 1).to_numpy() if label_col in frame.columns else None
    amount = frame[amount_col].cast(pl.Float64).fill_null(0.0).to_numpy() if amount_col in frame.columns else None

    segment_report: dict[str, Any] = {}
    for col in segments:
        if col not in frame.columns:
            continue
        values = frame[col].to_list()
        keys = np.array([segment_key(v) for v in values], dtype=object)
        groups: dict[str, Any] = {}
        for key in sorted(set(keys.tolist())):
            mask = keys == key
            groups[key] = _impact(
                champion[mask],
                candidate[mask],
                None if fraud is None else fraud[mask],
                None if amount is None else amount[mask],
            )
        segment_report[col] = groups

    return to_jsonable(
        {
            "champion_col": champion_col,
            "candidate_col": candidate_col,
            "threshold": float(threshold),
            "overall": _impact(champion, candidate, fraud, amount),
            "segments": segment_report,
        }
    )


def action_impact(champion: Sequence[str], candidate: Sequence[str], labels: Sequence[int] | None,
                  actions: Sequence[str], approve: str = "approve") -> dict[str, Any]:
    """Decision impact of a decider with several actions (approve / counter-offer / refer /
    decline): how the actions change on the same applications when the candidate replaces the
    champion. ``transitions[a][b]`` counts applications the champion gave ``a`` and the candidate
    ``b``; ``newly_approved`` / ``newly_not_approved`` (with their bads when labels are known) are
    what customers and the loss line feel."""
    champion, candidate = np.asarray(champion, dtype=object), np.asarray(candidate, dtype=object)
    if champion.shape != candidate.shape:
        raise ValueError("champion and candidate actions differ in length")
    y = None if labels is None else np.asarray(labels, dtype=np.int8)
    n = int(champion.size)

    def block(mask: np.ndarray) -> dict[str, Any]:
        return {"n": int(mask.sum()), "share": float(mask.mean()) if n else None,
                "bads": None if y is None else int((mask & (y == 1)).sum())}

    was, now = champion == approve, candidate == approve
    return {
        "n": n,
        "changed": int((champion != candidate).sum()),
        "champion": {a: float((champion == a).mean()) if n else None for a in actions},
        "candidate": {a: float((candidate == a).mean()) if n else None for a in actions},
        "transitions": {a: {b: int(((champion == a) & (candidate == b)).sum()) for b in actions} for a in actions},
        "newly_approved": block(now & ~was),
        "newly_not_approved": block(was & ~now),
        "approval_rate_change": float(now.mean() - was.mean()) if n else None,
    }


def action_impact_markdown(impact: dict[str, Any]) -> str:
    """The transition table (champion's action per row, candidate's per column) and the summary."""
    actions = list(impact["transitions"])
    lines = ["| champion \\ candidate | " + " | ".join(actions) + " |", "|" + "---|" * (len(actions) + 1)]
    for a in actions:
        lines.append(f"| {a} | " + " | ".join(str(impact["transitions"][a][b]) for b in actions) + " |")
    na, nn = impact["newly_approved"], impact["newly_not_approved"]
    bads = lambda b: "" if b["bads"] is None else f" ({b['bads']} bad)"  # noqa: E731
    lines += ["", f"{impact['changed']} of {impact['n']} decisions change; newly approved {na['n']}{bads(na)}, "
                  f"no longer approved {nn['n']}{bads(nn)}; approval rate change "
                  f"{impact['approval_rate_change']:+.3f}."]
    return "\n".join(lines)
