"""Day-level calibration of the drift thresholds: rows of a day are correlated, so a new day that
varies like the reference days did is not drift, while a shift beyond that variation still is."""

from __future__ import annotations

import numpy as np
import polars as pl

from mlp_platform.monitoring.drift import compute_drift
from mlp_platform.monitoring.profile import ReferenceProfile, build_reference_profile


def _clustered_days(rng, n_days: int, rows: int, day_sd: float, shift: float = 0.0):
    days, values, noise = [], [], []
    for d in range(n_days):
        level = rng.normal(scale=day_sd) + shift  # every day has its own level (one fraud episode, ...)
        values.append(rng.normal(loc=level, size=rows))
        noise.append(rng.normal(size=rows))
        days += [d] * rows
    return pl.DataFrame({"clustered": np.concatenate(values), "iid": np.concatenate(noise)}), np.array(days)


def test_day_floor_absorbs_natural_day_to_day_variation_but_not_a_real_shift():
    rng = np.random.default_rng(3)
    frame, days = _clustered_days(rng, 14, 400, day_sd=0.6)
    plain = build_reference_profile(frame, ["clustered", "iid"], None, n_boot=20)
    with_days = build_reference_profile(frame, ["clustered", "iid"], None, n_boot=20, days=days)
    floor = with_days.features["clustered"].calibration.day_floor
    assert floor["psi"] > plain.features["clustered"].thresholds(400)["psi"]
    # JSON keeps the floor
    again = ReferenceProfile.from_json(with_days.to_json())
    assert again.features["clustered"].calibration.day_floor == floor

    typical, _ = _clustered_days(np.random.default_rng(11), 1, 400, day_sd=0.0, shift=0.6)  # one sd day level
    assert compute_drift(plain, typical).features["clustered"]["drifted"]        # i.i.d. calibration: false alarm
    assert not compute_drift(with_days, typical).features["clustered"]["drifted"]
    assert not compute_drift(with_days, typical).features["iid"]["drifted"]

    shifted, _ = _clustered_days(np.random.default_rng(12), 1, 400, day_sd=0.0, shift=4.0)
    report = compute_drift(with_days, shifted).features["clustered"]
    assert report["drifted"] and report["severity"] == "error"
