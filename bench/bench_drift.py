"""Benchmark: one day's drift, ``compute_drift`` against Evidently 0.7 ``DataDriftPreset``, same data.

Not a test: it measures on this machine, side by side in one run,

* ``build_reference_profile`` on the reference (training) frame (once: bins, 5000-row joint
  sample, 50 bootstrap null days at 1k/10k/100k rows for the thresholds);
* ``compute_drift(profile, day, scores)``: PSI, KS (+ p-value), normalised Wasserstein, missing rates,
  thresholds and the rule for every feature and the score, on **all** of the day's rows (median of
  ``--repeats``, default 5);
* Evidently 0.7 ``Report([DataDriftPreset()]).run(current, reference)`` on the same day (pandas,
  converted outside the timer) with the profile's joint sample as reference (the information our
  statistics use; median of ``--evidently-repeats``, default 3). Evidently picks its default test
  per column: normed Wasserstein for numerical columns with more than 5 values (the same quantity
  as ours: the script prints the largest difference), Jensen-Shannon for the others;
* ``write_evidently_report`` (the HTML page, the day sampled to 20 000 rows), once.

Data: ``--rows`` (default 1,000,000) rows x 30 transaction-like features for the reference and for
the day: 10 skewed amounts (lognormal, cents), 8 zero-inflated counts (Poisson), 4 flags (0/1), 8
ratios/gaps (gamma, exponential, normal) with 5% missing, plus a score; in the day, 5 features are
shifted (two amounts, a count, a flag, a missing rate). The machine is shared and noisy: the load
average is printed with the table.

    .venv/bin/python bench/bench_drift.py [--rows 1000000] [--repeats 5] [--evidently-repeats 3]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlp_platform.monitoring import build_reference_profile, compute_drift  # noqa: E402

SHIFTED = {"amount_0": "amount x1.35", "amount_5": "amount x1.1", "count_2": "rate 0.5 -> 0.9",
           "flag_1": "rate 5% -> 9%", "ratio_3": "missing 5% -> 25%"}


def make_day(n: int, seed: int, shifted: bool) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    for i in range(10):
        shift = (0.3 if i == 0 else 0.1 if i == 5 else 0.0) if shifted else 0.0
        cols[f"amount_{i}"] = np.round(rng.lognormal(3.0 + 0.1 * i + shift, 1.0 + 0.05 * i, n), 2)
    for i in range(8):
        lam = 0.1 + 0.2 * i + (0.4 if shifted and i == 2 else 0.0)
        cols[f"count_{i}"] = rng.poisson(lam, n).astype(np.float64)
    for i in range(4):
        p = 0.02 + 0.03 * i + (0.04 if shifted and i == 1 else 0.0)
        cols[f"flag_{i}"] = (rng.random(n) < p).astype(np.float64)
    for i in range(8):
        x = rng.gamma(1.0 + i, 1.0, n) if i < 4 else rng.exponential(600.0 * i, n) if i < 6 else rng.normal(0, 1, n)
        missing = 0.25 if shifted and i == 3 else 0.05
        x[rng.random(n) < missing] = np.nan
        cols[f"ratio_{i}"] = x
    frame = pl.DataFrame(cols)
    logit = -5 + 0.5 * np.log1p(cols["amount_0"]) + 0.4 * cols["count_2"] + 1.5 * cols["flag_1"]
    scores = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.7, n))))
    return frame, scores


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def fmt(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} s ({min(times):.3f}-{max(times):.3f}, n={len(times)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--evidently-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    load_before = os.getloadavg()
    reference, ref_scores = make_day(args.rows, seed=1, shifted=False)
    day, day_scores = make_day(args.rows, seed=2, shifted=True)
    names = reference.columns

    build_times, profile = timed(lambda: build_reference_profile(reference, names, ref_scores, seed=0), 1)
    profile_json = profile.to_json()
    ours_times, report = timed(lambda: compute_drift(profile, day, day_scores), args.repeats)
    summary = report.to_dict()["summary"]

    from evidently import Report
    from evidently.presets import DataDriftPreset

    ref_pd = profile.sample_frame(names).to_pandas()
    day_pd = day.to_pandas()
    ev_times, snapshot = timed(lambda: Report([DataDriftPreset()]).run(current_data=day_pd, reference_data=ref_pd),
                               args.evidently_repeats)
    ev_values, ev_methods = {}, {}
    for metric in snapshot.dict()["metrics"]:
        if metric["metric_name"].startswith("ValueDrift("):
            ev_values[metric["config"]["column"]] = metric["value"]
            ev_methods[metric["config"]["column"]] = metric["config"].get("method")
    w_cols = [c for c in names if "Wasserstein" in str(ev_methods.get(c)) or ev_methods.get(c) == "wasserstein"]
    if not w_cols:  # method names differ across 0.7.x: infer from the value agreeing with ours
        w_cols = [c for c in names if abs(report.features[c]["wasserstein"] - ev_values[c]) < 1e-6]
    w_diff = max((abs(report.features[c]["wasserstein"] - ev_values[c]) for c in w_cols), default=float("nan"))
    import tempfile

    from mlp_platform.monitoring.evidently_report import DEFAULT_MAX_ROWS, write_evidently_report

    with tempfile.TemporaryDirectory() as tmp:
        html_times, html_path = timed(lambda: write_evidently_report(profile, day, Path(tmp) / "drift.html", names), 1)
        html_mb = Path(html_path).stat().st_size / 1e6
    load_after = os.getloadavg()

    ratio = statistics.median(ev_times) / statistics.median(ours_times)
    print(f"machine: {platform.uname().system} {platform.uname().release} {platform.machine()}, "
          f"nproc {os.cpu_count()}, python {platform.python_version()}")
    print(f"uname -a: {' '.join(platform.uname())}")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"data: {args.rows:,} rows x {len(names)} features (+ score), reference and day")
    print(f"build_reference_profile (once):         {fmt(build_times)}; JSON {len(profile_json) / 1e6:.2f} MB")
    print(f"compute_drift (all rows, + score):      {fmt(ours_times)}")
    print(f"Evidently DataDriftPreset (5000 ref):   {fmt(ev_times)}")
    print(f"ratio Evidently / ours (medians):       {ratio:.1f}x")
    print(f"write_evidently_report (day sampled to {DEFAULT_MAX_ROWS:,} rows): {fmt(html_times)}, {html_mb:.1f} MB")
    print(f"normed Wasserstein, ours vs Evidently:  max |diff| {w_diff:.2e} over {len(w_cols)} columns")
    print(f"drifted (ours): {summary['drifted_features']} (shifted: {sorted(SHIFTED)}); "
          f"prediction drifted {summary['prediction_drifted']}")
    ev_drifted = sorted(c for c in names if c in ev_values and ev_values[c] >= 0.1)
    print(f"Evidently value >= 0.1 (its default threshold for both its tests): {ev_drifted}")
    if args.json:
        args.json.write_text(json.dumps({
            "rows": args.rows, "features": len(names), "build_s": build_times, "ours_s": ours_times,
            "evidently_s": ev_times, "ratio": ratio, "html_report_s": html_times, "wasserstein_max_diff": w_diff,
            "load_before": load_before, "load_after": load_after, "drifted": summary["drifted_features"],
        }, indent=2))


if __name__ == "__main__":
    main()
