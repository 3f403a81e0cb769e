"""The credit field's baseline: a scorecard (optimal binning of every attribute into weight-of-evidence
bins, then a logistic regression on the bins), built with optbinning, the maintained library for it.

It scores the same request features as the decider's model (level codes as categorical
attributes, numeric ones binned with a monotone-or-peaked WoE trend chosen per attribute), so a
backtest compares two models on the same inputs and the same folds. Attributes missing in every
row of the training data (the German data has no income or bureau score) are left out and listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlp_platform.features.spec import FeatureSpec


@dataclass
class ScorecardModel:
    scorecard: object
    variables: list[str]
    dropped: list[str] = field(default_factory=list)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Probability of a bad outcome per row."""
        return np.asarray(self.scorecard.predict_proba(frame[self.variables]))[:, 1]

    def points(self, frame: pd.DataFrame) -> np.ndarray:
        """Scorecard points (300..850, higher is better), the form a credit officer reads."""
        return np.asarray(self.scorecard.score(frame[self.variables]))

    def table(self) -> pd.DataFrame:
        """Points per attribute bin."""
        return self.scorecard.table(style="summary")


def fit_scorecard(frame: pd.DataFrame, y: np.ndarray, spec: FeatureSpec, *, seed: int = 7) -> ScorecardModel:
    """A scorecard on ``frame`` (the spec's feature columns) and outcomes ``y`` (1 = bad)."""
    from optbinning import BinningProcess, Scorecard
    from sklearn.linear_model import LogisticRegression

    names = [n for n in spec.feature_names if n in frame.columns]
    variables = [n for n in names if frame[n].notna().any()]
    dropped = [n for n in spec.feature_names if n not in variables]
    categorical = [f.name for f in spec.features if f.kind == "level_code" and f.name in variables]
    x = frame[variables].copy()
    for name in categorical:  # codes as whole numbers: optbinning bins categorical values by identity
        x[name] = x[name].astype("float64")
    process = BinningProcess(variables, categorical_variables=categorical)
    model = Scorecard(binning_process=process,
                      estimator=LogisticRegression(max_iter=2000, random_state=seed),
                      scaling_method="min_max", scaling_method_params={"min": 300, "max": 850})
    model.fit(x, np.asarray(y, dtype=np.int8))
    return ScorecardModel(model, variables, dropped)
