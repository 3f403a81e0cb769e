"""The Evidently HTML report of a day and the drift figure."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mlp_platform.monitoring import build_reference_profile, compute_drift
from mlp_platform.monitoring.evidently_report import write_evidently_report
from mlp_platform.monitoring.plots import drift_figure


def days(n_ref: int = 6000, n_cur: int = 30_000):
    rng = np.random.default_rng(0)
    reference = pl.DataFrame({"steady_amount": rng.lognormal(3, 1, n_ref),
                              "shifted_velocity": rng.normal(0, 1, n_ref)})
    current = pl.DataFrame({"steady_amount": rng.lognormal(3, 1, n_cur),
                            "shifted_velocity": rng.normal(1.5, 1, n_cur)})
    return reference, current


def test_evidently_report_written_and_names_the_drifted_column(tmp_path):
    reference, current = days()
    profile = build_reference_profile(reference, reference.columns, None, n_boot=3, calibration_sizes=(1000,))
    path = write_evidently_report(profile, current, tmp_path / "reports" / "drift.html",
                                  ["steady_amount", "shifted_velocity"], max_rows=5000)
    html = path.read_text()
    assert path.exists() and path.stat().st_size > 10_000
    assert "shifted_velocity" in html and "steady_amount" in html
    with pytest.raises(ValueError, match="reference lacks columns \\[.nope.\\]"):
        write_evidently_report(reference, current, tmp_path / "x.html", ["nope"])


def test_drift_figure_has_one_bar_per_feature_and_prediction():
    reference, current = days(n_cur=5000)
    rng = np.random.default_rng(1)
    profile = build_reference_profile(reference, reference.columns, rng.random(reference.height), n_boot=3,
                                      calibration_sizes=(1000,))
    report = compute_drift(profile, current, rng.random(current.height))
    fig = drift_figure(report)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "prediction" and set(labels[:-1]) == {"steady_amount", "shifted_velocity"}
    widths = {label: patch.get_width() for label, patch in zip(labels, ax.patches, strict=True)}
    assert widths["shifted_velocity"] == pytest.approx(report.features["shifted_velocity"]["psi"])
    assert "1/2 features" in ax.get_title()
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(drift_figure(report.to_dict()))
