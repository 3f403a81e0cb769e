"""Credit decisions: a monotone-constrained model trained on generated applications, decided by the
credit decider's declared policy, with adverse-action reasons and counter-offers; and the
cross-validated backtest against the scorecard baseline."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mlp_platform.data.credit_synthetic import CreditSyntheticConfig, generate_period
from mlp_platform.deciders.declaration import load_decider
from mlp_platform.evaluation.cv_backtest import (
    CVBacktestConfig,
    backtest_table,
    credit_metrics,
    cross_validated_backtest,
    ks_statistic,
)
from mlp_platform.features.request import feature_frame
from mlp_platform.runtime.fast_scorer import FastScorer
from mlp_platform.runtime.loading import Population
from mlp_platform.serving.application import ApplicationDecider
from mlp_platform.settings import PROJECT_ROOT, load_settings
from mlp_platform.training.trainer import fit_monotone_booster

DECIDERS = PROJECT_ROOT / "deciders"


@pytest.fixture(scope="module")
def world():
    credit = load_decider(DECIDERS, "credit")
    apps, outcomes = generate_period(CreditSyntheticConfig(days=30, applications_per_day=200))
    features = feature_frame(credit.spec, apps)
    x = features.to_numpy().astype(np.float64)
    y = apps.join(outcomes, on="application_id")["label"].to_numpy()
    booster = fit_monotone_booster(x, y, credit.spec.feature_names, credit.model.monotone_constraints)
    populations = {n: Population.of(features[n].to_list()) for n in credit.spec.feature_names}
    scorer = FastScorer(booster, credit.spec.feature_names)
    decider = ApplicationDecider(credit, scorer, {k: v for k, v in populations.items() if v is not None},
                                 version="test-1")
    return credit, apps, x, booster, decider


def test_the_declared_monotone_constraints_hold_exactly(world):
    credit, _apps, x, booster, _ = world
    names = credit.spec.feature_names
    rng = np.random.default_rng(0)
    rows = x[rng.choice(len(x), 200, replace=False)]
    for name, sign in credit.model.monotone_constraints.items():
        j = names.index(name)
        grid = np.nanquantile(x[:, j], np.linspace(0, 1, 15))
        scores = []
        for value in grid:
            varied = rows.copy()
            varied[:, j] = value
            scores.append(booster.predict(varied, num_threads=1))
        steps = np.diff(np.asarray(scores), axis=0) * sign
        assert (steps >= -1e-12).all(), f"{name}: the score moved against its declared direction"


def _declined(world, n: int = 20) -> list[dict]:
    _credit, apps, _x, _booster, decider = world
    out = []
    for request in apps.iter_rows(named=True):
        if decider.decide(request).action == "decline":
            out.append(request)
            if len(out) == n:
                break
    assert len(out) == n, "the generated data should have declines"
    return out


def test_every_decline_carries_up_to_four_specific_reasons_in_the_risky_direction(world):
    credit, _apps, _x, _booster, decider = world
    catalogue = credit.reasons.catalogue
    for request in _declined(world):
        decision = decider.decide(request)
        assert decision.score >= decision.thresholds["decline"]
        assert 1 <= len(decision.reasons) <= 4 and decision.reasons_filtered
        contributions = [r.contribution for r in decision.reasons]
        assert contributions == sorted(contributions, reverse=True) and min(contributions) > 0
        for reason in decision.reasons:
            entry = catalogue[reason.feature]
            assert reason.code == entry.code and "model" not in reason.text.lower()
            sign = credit.model.monotone_constraints.get(reason.feature)
            if sign and reason.value is not None:  # the monotone direction is respected
                assert (reason.value > reason.typical) if sign > 0 else (reason.value < reason.typical), reason
            if reason.value is not None:
                assert reason.text == entry.text
            else:
                assert reason.text.startswith("No information provided: ")
        assert decider.decide(request).reasons == decision.reasons  # stable


def test_reasons_follow_the_policy_and_missing_information_is_named(world):
    _credit, apps, _x, _booster, decider = world
    approved = next(r for r in apps.iter_rows(named=True) if decider.decide(r).action == "approve")
    assert decider.decide(approved).reasons == []  # approvals carry none (not in reasons_for)
    request = dict(_declined(world, 1)[0])
    request["bureau_score"] = None
    request["monthly_income"] = None
    decision = decider.decide(request)
    assert {"bureau_score", "monthly_income", "income_burden"} <= set(decision.missing)
    named = [r for r in decision.reasons if r.value is None]
    for reason in named:
        assert reason.text.startswith("No information provided: ")


def test_the_monotone_filter_keeps_a_good_bureau_score_out_of_the_reasons(world):
    credit, _apps, x, _booster, decider = world
    names = credit.spec.feature_names
    median = float(np.nanmedian(x[:, names.index("bureau_score")]))
    explainer = decider.explainer
    values = list(np.nanmedian(x, axis=0))
    values[names.index("bureau_score")] = median + 100  # a good score...
    contributions = [0.0] * (len(names) + 1)
    contributions[names.index("bureau_score")] = 0.8  # ...with a positive contribution (an interaction)
    contributions[names.index("term_months")] = 0.1
    values[names.index("term_months")] = 72.0
    reasons, filtered = explainer.reasons(values, contributions, 4)
    # a reverted filter would say "Credit bureau score is too low" for a score 100 points above the median
    assert [r.feature for r in reasons] == ["term_months"] and filtered
    contributions[names.index("term_months")] = 0.0
    reasons, filtered = explainer.reasons(values, contributions, 4)
    assert [r.feature for r in reasons] == ["bureau_score"] and not filtered  # the documented fallback


def test_a_refused_application_gets_the_nearest_approvable_counter_offer(world):
    _credit, apps, _x, _booster, decider = world
    found = 0
    refused = [r for r in apps.head(400).iter_rows(named=True) if decider.decide(r).action != "approve"]
    assert {decider.decide(r).action for r in refused} == {"counter_offer", "refer", "decline"}
    for request in refused:
        result = decider.counter_offers(request)
        assert result.decision.action != "approve"
        assert 1 <= len(result.candidates) <= 16
        conditions = [(c.amount, c.term_months) for c in result.candidates]
        assert (float(request["requested_amount"]), request["term_months"]) not in conditions
        assert len(set(conditions)) == len(conditions)
        assert all(c.amount <= request["requested_amount"] for c in result.candidates)
        if result.offer is None:
            assert all(c.action != "approve" for c in result.candidates)
            continue
        found += 1
        assert result.offer.action == "approve" and result.offer.score < decider.thresholds["counter_offer"]
        # the offer is the first approvable candidate in nearest-first order
        assert result.offer == next(c for c in result.candidates if c.action == "approve")
        # scored in one batch call, it is what deciding the modified application alone gives
        modified = dict(request, requested_amount=result.offer.amount, term_months=result.offer.term_months)
        band = request["installment_rate_pct"]
        ratio = (result.offer.amount / result.offer.term_months) / (request["requested_amount"] / request["term_months"])
        modified["installment_rate_pct"] = int(min(4, max(1, round(band * ratio))))
        alone = decider.decide(modified)
        assert alone.action == "approve" and alone.score == pytest.approx(result.offer.score, abs=1e-12)
    assert found >= 10  # in this world mostly the counter_offer band: a deep decline has no approvable terms


def test_an_approved_or_hostile_application_gets_no_counter_offer(world):
    _credit, apps, _x, _booster, decider = world
    approved = next(r for r in apps.iter_rows(named=True) if decider.decide(r).action == "approve")
    assert decider.counter_offers(approved).candidates == []
    hostile = dict(_declined(world, 1)[0], requested_amount=float("nan"))
    result = decider.counter_offers(hostile)
    assert result.candidates == [] and result.offer is None
    assert decider.candidate_conditions(dict(hostile, requested_amount=1000.0, term_months=True)) == []


def test_ks_and_the_cost_matrix():
    y = np.array([0, 0, 1, 1])
    assert ks_statistic(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert ks_statistic(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.0  # ties cannot be cut
    m = credit_metrics(y, np.array([0.1, 0.9, 0.1, 0.9]), accept_below=0.5)
    assert m["cost_per_application"] == pytest.approx((1 + 5) / 4)  # one good refused, one bad accepted
    assert m["approval_rate"] == 0.5 and m["bad_rate_approved"] == 0.5 and m["gini"] == pytest.approx(0.0)


@pytest.mark.slow
def test_the_cross_validated_backtest_against_the_scorecard_on_german_data():
    from mlp_platform.data.german_credit import load_german_credit

    path = load_settings().german_credit_path
    if not path.exists():
        pytest.skip("shared dataset not mounted (MLP_GERMAN_CREDIT_PATH)")
    german = load_german_credit(path)
    credit = load_decider(DECIDERS, "credit")
    report = cross_validated_backtest(credit, german.applications, german.outcomes,
                                      CVBacktestConfig(n_splits=5, n_repeats=1, n_boot=100))
    assert report["rows"] == 1000 and report["bads"] == 300
    for name in ("model", "scorecard"):
        auc = report["models"][name]["roc_auc"]
        assert 0.70 < auc["value"] < 0.85 and auc["ci"][0] < auc["value"] < auc["ci"][1]
        assert report["models"][name]["gini"]["value"] == pytest.approx(2 * auc["value"] - 1)
    diff = report["differences"]["model - scorecard"]["roc_auc"]
    assert diff["ci"][0] < diff["value"] < diff["ci"][1] and diff["verdict"] in ("better", "worse", "no clear difference")
    assert set(report["fairness"]) == {"age_band", "sex"}
    assert report["fairness"]["sex"]["report"]["groups"].keys() == {"female", "male"}
    assert "| roc_auc |" in backtest_table(report)
    # German has no income and no bureau score: the scorecard leaves them out
    assert pl.Series(german.applications["monthly_income"]).null_count() == 1000
