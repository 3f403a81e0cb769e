"""Time-ordered splits, as production sees time: train, then validation, then an out-of-time test
window, with a gap between them (labels arrive late, so the newest labelled data a model can be
trained on is always some days old). No row is ever used out of its time order.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class TimeSplit:
    """Day ranges [start, end) of each part."""

    train: tuple[dt.date, dt.date]
    valid: tuple[dt.date, dt.date]
    test: tuple[dt.date, dt.date]
    gap_days: int

    def as_dict(self) -> dict[str, str]:
        return {f"{part}_{edge}": day.isoformat()
                for part, rng in (("train", self.train), ("valid", self.valid), ("test", self.test))
                for edge, day in zip(("start", "end"), rng, strict=True)} | {"gap_days": str(self.gap_days)}


def make_time_split(days: list[dt.date], valid_frac: float = 0.2, test_frac: float = 0.2,
                    gap_days: int = 7) -> TimeSplit:
    """Split the covered days into train / gap / valid / gap / test (fractions of the non-gap days)."""
    if not days:
        raise ValueError("no days to split")
    first, last = min(days), max(days)
    total = (last - first).days + 1
    usable = total - 2 * gap_days
    n_test = max(1, round(usable * test_frac))
    n_valid = max(1, round(usable * valid_frac))
    n_train = usable - n_test - n_valid
    if n_train < 3:
        raise ValueError(
            f"{total} day(s) are too few for train/valid/test with {gap_days}-day gaps; "
            "use more days or a smaller gap")
    train_end = first + dt.timedelta(days=n_train)
    valid_start = train_end + dt.timedelta(days=gap_days)
    valid_end = valid_start + dt.timedelta(days=n_valid)
    test_start = valid_end + dt.timedelta(days=gap_days)
    return TimeSplit((first, train_end), (valid_start, valid_end),
                     (test_start, last + dt.timedelta(days=1)), gap_days)


def select_days(frame: pl.DataFrame, rng: tuple[dt.date, dt.date], day_col: str = "event_date") -> pl.DataFrame:
    return frame.filter((pl.col(day_col) >= rng[0]) & (pl.col(day_col) < rng[1]))


def prequential_folds(start: dt.date, end: dt.date, n_folds: int, gap_days: int,
                      min_train_days: int = 7) -> list[tuple[tuple[dt.date, dt.date], tuple[dt.date, dt.date]]]:
    """Rolling-origin folds inside [start, end): each fold trains on everything before
    (fold start - gap) and validates on the fold's days. The test window is never passed here."""
    total = (end - start).days
    fold_days = max(1, (total - min_train_days - gap_days) // max(n_folds, 1))
    folds = []
    for i in range(n_folds):
        valid_end = end - dt.timedelta(days=i * fold_days)
        valid_start = valid_end - dt.timedelta(days=fold_days)
        train_end = valid_start - dt.timedelta(days=gap_days)
        if (train_end - start).days < min_train_days:
            break
        folds.append(((start, train_end), (valid_start, valid_end)))
    if not folds:
        raise ValueError(f"{total} day(s) leave no prequential fold with {gap_days}-day gaps")
    return list(reversed(folds))
