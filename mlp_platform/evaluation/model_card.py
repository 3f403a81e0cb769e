"""Model cards, generated only from recorded evidence (registry tags, training record, backtest,
gate results, audit trail): Markdown and HTML. No number is typed by hand."""

from __future__ import annotations

import html
from typing import Any

from markdown_it import MarkdownIt

INTENDED_USE = (
    "Scoring card transactions in real time for fraud risk, to approve, send to review or decline "
    "them under the decision policy of the calling decision engine, with a human able to review "
    "and overturn a decision.")
OUT_OF_SCOPE = (
    "Credit decisions, identity verification, or any decision about a person other than the risk of "
    "a single card transaction; use on traffic from channels, countries or merchant types absent "
    "from the training data without a new backtest.")
HEADLINE = ("roc_auc", "average_precision", "recall_at_fpr", "alert_budget_precision", "fraud_amount_caught",
            "approval_rate")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(report: dict[str, Any], metric: str) -> str:
    ci = (report.get("ci") or {}).get(metric)
    return f"[{_fmt(ci['low'])}, {_fmt(ci['high'])}]" if ci else "n/a"


def _limitations(evidence: dict[str, Any]) -> list[str]:
    out = []
    backtest = evidence.get("backtest") or {}
    window = backtest.get("window", {})
    if window.get("frauds", 0) < 100:
        out.append(f"The out-of-time window holds only {window.get('frauds', 0)} frauds: intervals are wide.")
    absent = evidence.get("absent_fields")
    if absent:
        out.append(f"The training source lacks {absent}; features and segments using them carry defaults.")
    bias = next((g for g in evidence.get("gates", []) if g["name"] == "bias"), None)
    if bias and bias.get("details", {}).get("evaluated") is False:
        out.append("Fairness was not evaluated: the data has no attribute of the configured bias segments.")
    if bias:
        for segment, judged in bias.get("details", {}).get("segments", {}).items():
            small = [k for k, v in judged["verdict"]["groups"].items() if v.get("status") == "insufficient"]
            if small:
                out.append(f"Fairness by {segment} not judged for small groups: {', '.join(small)}.")
    out.append(f"Labels are taken as known after {evidence.get('label_maturity_days', '?')} days; frauds "
               "reported later count as genuine in training and evaluation.")
    out.append("Performance was measured on past data; drift monitoring decides whether it still holds.")
    return out


def render_markdown(evidence: dict[str, Any]) -> str:
    """``evidence``: name, version, tags, training (record), backtest, gates, audit, status."""
    name, version = evidence["name"], evidence["version"]
    tags = evidence.get("tags", {})
    training = evidence.get("training") or {}
    fp = training.get("data_fingerprint", {})
    backtest = evidence.get("backtest") or {}
    cand = backtest.get("candidate", {})
    champ = backtest.get("champion")
    lines = [f"# Model card: {name} v{version}", "",
             f"**Status:** {evidence.get('status', 'registered')}  ", f"**Training run:** `{tags.get('run_id', '?')}`",
             "", "## Intended use", "", INTENDED_USE, "", "## Out of scope", "", OUT_OF_SCOPE, "",
             "## Data", "",
             f"- Training data: {fp.get('rows', '?')} transactions, {fp.get('frauds', '?')} frauds, "
             f"{fp.get('first_day', '?')} to {fp.get('last_day', '?')}",
             f"- Splits (time-ordered, {training.get('split', {}).get('gap_days', '?')}-day gaps): "
             + ", ".join(f"{k} {v}" for k, v in training.get("split", {}).items() if k != "gap_days"),
             f"- Out-of-time backtest window: {backtest.get('window', {}).get('first_day', '?')} to "
             f"{backtest.get('window', {}).get('last_day', '?')}, {backtest.get('window', {}).get('rows', '?')} "
             f"transactions, {backtest.get('window', {}).get('frauds', '?')} frauds", "",
             "## Features", "",
             f"{len(evidence.get('features', []))} features from feature specification "
             f"`{tags.get('feature_spec_hash', '?')}`: " + ", ".join(f"`{f}`" for f in evidence.get("features", [])),
             "", "## Metrics (out-of-time window, 95% bootstrap intervals)", "",
             "| metric | candidate | interval |" + (" champion | interval | paired difference |" if champ else ""),
             "|---|---|---|" + ("---|---|---|" if champ else "")]
    for metric in HEADLINE:
        row = f"| {metric} | {_fmt(cand.get(metric))} | {_ci(cand, metric)} |"
        if champ:
            paired = (backtest.get("paired") or {}).get(metric)
            diff = (f"{_fmt(paired['diff'])} [{_fmt(paired['low'])}, {_fmt(paired['high'])}]"
                    if paired else "n/a")
            row += f" {_fmt(champ.get(metric))} | {_ci(champ, metric)} | {diff} |"
        lines.append(row)
    thresholds = backtest.get("thresholds", {})
    lines += ["", f"Operating threshold: {_fmt(thresholds.get('candidate'))} (chosen on the validation window "
              f"for a false-positive rate of at most {backtest.get('settings', {}).get('max_fpr', '?')}); "
              f"alert budget k = {backtest.get('settings', {}).get('k', '?')} cards a day.", "",
              "## Segments", ""]
    for segment, groups in (cand.get("segments") or {}).items():
        lines.append(f"**{segment}**: " + "; ".join(
            f"{g}: n={v.get('n')}, frauds={v.get('n_fraud')}, AP={_fmt(v.get('average_precision'), 3)}, "
            f"recall@FPR={_fmt(v.get('recall_at_fpr'), 3)}" for g, v in groups.items()))
        lines.append("")
    lines += ["## Fairness", ""]
    bias = next((g for g in evidence.get("gates", []) if g["name"] == "bias"), None)
    if bias:
        for judged in bias.get("details", {}).get("segments", {}).values():
            lines.append(f"- {judged['verdict']['explanation']}")
        if not bias.get("details", {}).get("segments"):
            lines.append(f"- {bias['summary']}")
    else:
        lines.append("- not evaluated")
    lines += ["", "## Decision impact versus the champion", ""]
    impact = backtest.get("impact")
    if impact:
        o = impact["overall"]
        lines.append(f"- Flip rate {_fmt(o.get('flip_rate'))}: newly flagged {o['newly_flagged']['n']} "
                     f"({o['newly_flagged'].get('frauds')} frauds), newly approved {o['newly_approved']['n']} "
                     f"({o['newly_approved'].get('frauds')} frauds); net frauds caught "
                     f"{o.get('net_frauds_caught')}, net fraud amount {_fmt(o.get('net_fraud_amount_caught'), 2)}")
    else:
        lines.append("- first model: no champion to compare with")
    lines += ["", "## Gates", "", "| gate | result | explanation |", "|---|---|---|"]
    for gate in evidence.get("gates", []):
        lines.append(f"| {gate['name']} | {'PASS' if gate['passed'] else 'FAIL'} | "
                     f"{gate['summary'].replace('|', '/')} |")
    lines += ["", "## Limitations", ""] + [f"- {item}" for item in _limitations(evidence)]
    lines += ["", "## Lineage", "",
              f"- Data fingerprint: `{fp.get('content_sha256', '?')}` ({fp.get('hash_method', '')})",
              f"- Feature specification: `{tags.get('feature_spec_hash', '?')}`",
              f"- Code version: `{tags.get('code_version', '?')}`",
              "", "## Promotion and approval trail", ""]
    trail = evidence.get("audit", [])
    if trail:
        lines += [f"- {r['time']} {r['event']} v{r.get('version')} by {r.get('actor')} (run {r.get('by_run')}): "
                  f"{r.get('reason', '')}" for r in trail]
    else:
        lines.append("- no promotion decision recorded yet")
    return "\n".join(lines) + "\n"


def render_html(markdown: str, title: str) -> str:
    body = MarkdownIt("commonmark").enable("table").render(markdown)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.4}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}</style>"
            f"</head><body>{body}</body></html>")
