"""Figures of a day's drift for the Dagster asset metadata (matplotlib, Agg backend)."""

from __future__ import annotations

from typing import Any

_COLOURS = {"ok": "#4c9a2a", "warn": "#e0a100", "error": "#c0392b"}


def drift_figure(report: Any, *, psi_floor: float | None = None):
    """Horizontal bars of each feature's PSI (and the prediction's, on top), coloured by severity,
    with the PSI that counts as drift marked: the larger of the calibrated threshold for the day's
    size and the rule's practical floor (``psi_floor``, default the report's ``psi_warn``).

    ``report``: a :class:`~mlp_platform.monitoring.drift.DriftReport` or its ``to_dict()``.
    Returns the matplotlib figure (the caller closes it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = report.to_dict() if hasattr(report, "to_dict") else report
    floor = psi_floor if psi_floor is not None else data.get("summary", {}).get("rule", {}).get("psi_warn", 0.1)
    rows = sorted(data["features"].items(), key=lambda item: item[1]["psi"] or 0.0)
    if data.get("prediction"):
        rows.append(("prediction", data["prediction"]))
    names = [name for name, _ in rows]
    psi = [entry["psi"] or 0.0 for _, entry in rows]
    limits = [max(entry.get("psi_threshold") or 0.0, floor) for _, entry in rows]
    colours = [_COLOURS.get(entry.get("severity", "ok"), "grey") for _, entry in rows]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.25 * len(rows) + 1)))
    positions = range(len(rows))
    ax.barh(positions, psi, color=colours)
    ax.scatter(limits, positions, marker="|", s=120, color="black", label="drift threshold")
    ax.set_yticks(list(positions), names, fontsize=7)
    ax.set_xlabel("PSI (reference bins)")
    summary = data.get("summary", {})
    ax.set_title(f"Drift: {summary.get('n_drifted', 0)}/{summary.get('n_features', len(rows))} features, "
                 f"severity {summary.get('severity', '?')}")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig
