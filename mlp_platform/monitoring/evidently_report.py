"""The human-facing drift report of one day: an Evidently 0.7 ``DataDriftPreset`` HTML page.

The reference side is the profile's joint row sample (at most the profile's ``max_sample`` rows,
default 5000); the current side is the day sampled uniformly without replacement (seed ``seed``)
to at most ``max_rows`` rows (default 20 000) -- Evidently is slow on large frames (see
``docs/benchmarks.md``) and the page is for people, while the statistics that decide anything
come from :mod:`mlp_platform.monitoring.drift` on all of the day's rows. Evidently picks its own
test per column (Wasserstein normed for numerical columns with > 1000 reference rows and more than
5 values, Jensen-Shannon for the others), so its per-column verdicts can differ from ours.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl

DEFAULT_MAX_ROWS = 20_000


def _frame(data: Any, columns: list[str], what: str, max_rows: int | None, seed: int) -> pd.DataFrame:
    from mlp_platform.monitoring.profile import ReferenceProfile

    if isinstance(data, ReferenceProfile):
        data = data.sample_frame()
    if isinstance(data, pd.DataFrame):
        data = pl.from_pandas(data)
    if not isinstance(data, pl.DataFrame):
        raise TypeError(f"{what} must be a polars or pandas frame or a ReferenceProfile, got {type(data).__name__}")
    absent = [c for c in columns if c not in data.columns]
    if absent:
        raise ValueError(f"{what} lacks columns {absent}")
    if data.height == 0:
        raise ValueError(f"{what} has no rows")
    data = data.select(columns)
    if max_rows is not None and data.height > max_rows:
        data = data.sample(n=max_rows, seed=seed)
    return data.to_pandas()


def write_evidently_report(
    reference: Any,
    current: Any,
    path: str | Path,
    columns: list[str],
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
) -> Path:
    """Write the Evidently ``DataDriftPreset`` HTML report of ``current`` vs ``reference`` for
    ``columns`` to ``path`` (parent directories are created) and return the path.

    ``reference``: a :class:`~mlp_platform.monitoring.profile.ReferenceProfile` (its joint sample)
    or a polars/pandas frame; ``current``: the day's frame (sampled to ``max_rows``).
    """
    from evidently import Report
    from evidently.presets import DataDriftPreset

    if not columns:
        raise ValueError("columns is empty: nothing to report")
    ref = _frame(reference, columns, "reference", None, seed)
    cur = _frame(current, columns, "current", max_rows, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset(columns=columns)]).run(current_data=cur, reference_data=ref)
        snapshot.save_html(str(path))
    return path
