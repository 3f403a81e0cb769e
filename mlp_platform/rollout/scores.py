"""Score distributions of a rollout arm on fixed bins, and the population stability index (PSI)
that compares the candidate's with the champion's.

Fixed bins (not quantiles of either arm) so two samples taken at different times are comparable
and can be accumulated as plain counts. Fraud scores pile up near 0, so the edges are fine there
and coarse above: ``SCORE_BIN_EDGES`` = 0, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35,
0.5, 0.7, 0.9, 1 (13 bins, each ``[lo, hi)``; the last includes 1; scores outside [0, 1] are
clipped into the end bins).

PSI = sum over bins of (a - e) * ln(a / e), where e and a are the reference (champion) and
candidate shares of each bin, each floored at ``PSI_FLOOR`` (1e-4) so an empty bin counts as a
large but finite shift. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
Sampling noise alone gives two samples of one distribution a PSI of about (bins - 1) * (1/n1 + 1/n2)
(0.024 for 500 vs 10 000 scores): keep a stage's minimum observations well above 12 / limit.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

SCORE_BIN_EDGES: tuple[float, ...] = (0.0, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7,
                                      0.9, 1.0)
N_BINS = len(SCORE_BIN_EDGES) - 1
PSI_FLOOR = 1e-4
DECISIONS = ("approve", "review", "decline")


def score_bin(score: float) -> int:
    """Index of the fixed bin holding ``score`` (NaN is refused)."""
    if score != score:
        raise ValueError("a NaN score cannot be binned")
    return min(max(bisect.bisect_right(SCORE_BIN_EDGES, score) - 1, 0), N_BINS - 1)


def psi(expected: list[int] | tuple[int, ...], actual: list[int] | tuple[int, ...]) -> float:
    """Population stability index of ``actual`` bin counts against ``expected`` bin counts."""
    if len(expected) != len(actual):
        raise ValueError(f"PSI needs the same bins on both sides ({len(expected)} vs {len(actual)})")
    n_e, n_a = sum(expected), sum(actual)
    if n_e <= 0 or n_a <= 0:
        raise ValueError("PSI of an empty sample is undefined")
    total = 0.0
    for e_count, a_count in zip(expected, actual, strict=True):
        e = max(e_count / n_e, PSI_FLOOR)
        a = max(a_count / n_a, PSI_FLOOR)
        total += (a - e) * math.log(a / e)
    return total


@dataclass
class ScoreSample:
    """Binned scores and decision counts of one arm over a window (mergeable, JSON-able)."""

    counts: list[int] = field(default_factory=lambda: [0] * N_BINS)
    decisions: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return sum(self.counts)

    def add(self, score: float, decision: str | None) -> None:
        self.counts[score_bin(score)] += 1
        if decision:
            self.decisions[decision] = self.decisions.get(decision, 0) + 1

    def merged(self, other: ScoreSample | None) -> ScoreSample:
        if other is None:
            return ScoreSample(list(self.counts), dict(self.decisions))
        keys = set(self.decisions) | set(other.decisions)
        return ScoreSample([a + b for a, b in zip(self.counts, other.counts, strict=True)],
                           {k: self.decisions.get(k, 0) + other.decisions.get(k, 0) for k in keys})

    def rate(self, decision: str) -> float | None:
        total = sum(self.decisions.values())
        return self.decisions.get(decision, 0) / total if total else None

    def to_dict(self) -> dict[str, Any]:
        return {"bin_edges": list(SCORE_BIN_EDGES), "counts": list(self.counts), "decisions": dict(self.decisions)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any] | None) -> ScoreSample | None:
        if not doc:
            return None
        if list(doc.get("bin_edges", SCORE_BIN_EDGES)) != list(SCORE_BIN_EDGES):
            raise ValueError("a score sample binned on other edges than SCORE_BIN_EDGES")
        counts = [int(c) for c in doc["counts"]]
        if len(counts) != N_BINS:
            raise ValueError(f"a score sample with {len(counts)} bins, expected {N_BINS}")
        return cls(counts, {str(k): int(v) for k, v in (doc.get("decisions") or {}).items()})
