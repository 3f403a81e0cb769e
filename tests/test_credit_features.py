"""The credit decider's declaration and its request-only features: offline (a frame) and online (one
request) engines agree on generated, real and hostile applications; the declaration's policies
(monotone constraints, reason catalogue, protected attributes) are checked when the file is read."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
import yaml

from mlp_platform.data.credit_synthetic import CreditSyntheticConfig, generate_day
from mlp_platform.data.german_credit import load_german_credit
from mlp_platform.deciders.declaration import DeciderError, load_decider, parse_decider
from mlp_platform.features.request import RequestFeaturizer, feature_frame
from mlp_platform.features.spec import SpecError, default_spec, parse_spec
from mlp_platform.settings import PROJECT_ROOT, load_settings

DECIDERS = PROJECT_ROOT / "deciders"


@pytest.fixture(scope="module")
def credit():
    return load_decider(DECIDERS, "credit")


def credit_doc() -> dict:
    doc = yaml.safe_load((DECIDERS / "credit.yaml").read_text())
    doc["feature_spec"] = str(DECIDERS / "features" / "credit.yaml")
    return doc


def test_the_credit_decider_is_declared(credit):
    assert credit.model_name == "credit-origination" and credit.entity.key == "application_id"
    assert credit.policy.actions == ("approve", "counter_offer", "refer", "decline")
    assert credit.policy.max_reasons == 4 and credit.reasons.adverse_action
    spec = credit.spec
    assert spec.request == "application" and len(spec.features) == 21
    assert set(credit.reasons.catalogue) == set(spec.feature_names)
    assert not {f.column for f in spec.features} & set(credit.fairness.protected)
    # a spec over applications leaves the fraud spec's canonical form (and hash) as it was
    assert '"request"' not in default_spec().to_json() and '"request":"application"' in spec.to_json()


def _online_frame(spec, frame: pl.DataFrame) -> np.ndarray:
    featurizer = RequestFeaturizer(spec)
    return np.array([featurizer.row(r)[0] for r in frame.iter_rows(named=True)], dtype=float)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def test_offline_and_online_agree_on_generated_and_real_applications(credit):
    spec = credit.spec
    apps, _ = generate_day(CreditSyntheticConfig(days=5), dt.date(2026, 1, 2))
    paths = [apps]
    german = load_settings().german_credit_path
    if german.exists():
        paths.append(load_german_credit(german).applications)
    for frame in paths:
        offline = feature_frame(spec, frame).to_numpy().astype(float)
        assert offline.shape == (frame.height, 21)
        assert _same(offline, _online_frame(spec, frame))
    row = feature_frame(spec, apps.head(1)).row(0, named=True)
    first = apps.row(0, named=True)
    assert row["monthly_installment"] == pytest.approx(first["requested_amount"] / first["term_months"])
    assert row["income_burden"] == pytest.approx(row["monthly_installment"] / first["monthly_income"])
    assert row["checking_account_code"] == ("negative", "below_200", "above_200", "none").index(
        first["checking_account"])


def test_offline_and_online_agree_on_hostile_applications(credit):
    spec = credit.spec
    apps, _ = generate_day(CreditSyntheticConfig(days=5), dt.date(2026, 1, 2))
    base = apps.head(8)
    hostile = base.with_columns(
        pl.Series("monthly_income", [0.0, None, float("nan"), float("inf"), -1.0, 1e308, 2500.0, 3000.0]),
        pl.Series("term_months", [0, 12, None, 24, 36, 48, 60, 1], dtype=pl.Int32),
        pl.Series("checking_account", ["  NEGATIVE ", None, "<script>", "", "none", "Below_200", "above_200", "x"]),
        pl.Series("requested_amount", [1000.0, float("-inf"), 5.0, None, 1e308, 1e-300, 10.0, 20.0]),
    )
    offline = feature_frame(spec, hostile).to_numpy().astype(float)
    online = _online_frame(spec, hostile)
    assert _same(offline, online)
    names = spec.feature_names
    col = {n: offline[:, names.index(n)] for n in ("income_burden", "monthly_installment", "checking_account_code")}
    assert math.isnan(col["monthly_installment"][0])  # term 0: no division
    assert math.isnan(col["income_burden"][0])  # income 0
    assert col["checking_account_code"][0] == 0.0 and col["checking_account_code"][5] == 1.0  # stripped, lower case
    assert np.isnan(col["checking_account_code"][[1, 2, 3, 7]]).all()  # null, markup, empty, unknown
    assert np.isfinite(offline[~np.isnan(offline)]).all()  # never an infinity in the matrix
    # a request that is not even the right types is missing values, not an exception
    values, missing = RequestFeaturizer(spec).row({"requested_amount": "1000", "term_months": True,
                                                   "checking_account": 3})
    assert math.isnan(values[names.index("requested_amount")]) and "term_months" in missing
    assert "checking_account_code" in missing


@pytest.mark.parametrize("change, message", [
    (lambda d: d["model"]["monotone_constraints"].update({"age_years": 1}), "not features of the spec"),
    (lambda d: d["reasons"]["catalogue"].pop("bureau_score"), "missing: ['bureau_score']"),
    (lambda d: d["reasons"]["catalogue"]["savings_code"].update({"code": "AA01"}), "used twice"),
    (lambda d: d["reasons"]["catalogue"]["savings_code"].update({"text": "score"}), "at least 8"),
    (lambda d: d["fairness"].update({"protected": ["sex", "requested_amount"]}), "read a protected attribute"),
    (lambda d: d["fairness"].update({"protected": ["gender"]}), "not columns of the application schema"),
    (lambda d: d.update({"request": {"schema": "transaction"}}), "not a column of the transaction schema"),
])
def test_a_credit_declaration_breaking_its_policies_is_refused(change, message):
    doc = credit_doc()
    change(doc)
    with pytest.raises(DeciderError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        parse_decider(doc)


def test_a_declaration_may_allow_protected_inputs_explicitly(tmp_path):
    doc = credit_doc()
    doc["fairness"] = {"protected": ["sex", "requested_amount"], "model_may_use_protected": True}
    assert parse_decider(doc).fairness.model_may_use_protected


@pytest.mark.parametrize("view, message", [
    ({"name": "v", "entity": "application", "mode": "on_demand",
      "features": [{"kind": "level_code", "column": "requested_amount"}]}, "level_code needs a text column"),
    ({"name": "v", "entity": "application", "mode": "on_demand",
      "features": [{"kind": "request_value", "column": "purpose"}]}, "needs a numeric column"),
    ({"name": "v", "entity": "application", "mode": "on_demand",
      "features": [{"kind": "request_value", "column": "term_months"},
                   {"kind": "feature_ratio", "name": "r", "numerator": "a", "denominator": "term_months"}]},
     "numerator 'a' must be a feature defined before it"),
    ({"name": "v", "entity": "application", "mode": "streaming", "lookback": "30d",
      "features": [{"kind": "window_agg", "column": "requested_amount", "aggs": ["sum"], "windows": ["1d"]}]},
     "on-demand views only"),
    ({"name": "v", "entity": "application", "mode": "on_demand",
      "features": [{"kind": "request_value", "column": "amount"}]}, "not a canonical application column"),
])
def test_an_application_spec_is_checked(view, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({"version": 1, "request": "application", "feature_views": [view]})


def test_application_only_kinds_are_refused_in_a_transaction_spec():
    view = {"name": "v", "entity": "transaction", "mode": "on_demand",
            "features": [{"kind": "level_code", "column": "channel", "levels": ["pos", "ecom"]}]}
    with pytest.raises(SpecError, match="application requests only"):
        parse_spec({"version": 1, "feature_views": [view]})
