import copy
import json

import pytest
import yaml

from mlp_platform.features.dbt_codegen import render_spec_macro, spec_macro_in_sync
from mlp_platform.features.spec import SPEC_PATH, SpecError, default_spec, parse_duration, parse_spec
from mlp_platform.settings import PROJECT_ROOT


def raw_spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def test_spec_expands_required_features():
    names = set(default_spec().feature_names)
    required = {
        *(f"customer_txn_count_{w}" for w in ("1h", "1d", "7d", "30d")),
        *(f"customer_amount_{a}_{w}" for a in ("sum", "mean", "max") for w in ("1h", "1d", "7d", "30d")),
        "customer_amount_to_mean_30d", "customer_seconds_since_previous",
        "customer_distinct_merchant_count_1d", "customer_distinct_merchant_count_7d",
        "customer_first_time_merchant", "customer_first_time_device",
        *(f"merchant_txn_count_{w}" for w in ("1d", "7d", "30d")),
        *(f"merchant_fraud_rate_{w}" for w in ("1d", "7d", "30d")),
        "hour_of_day", "is_night", "is_weekend", "amount",
    }
    assert required <= names


def test_no_feature_reads_label_metadata():
    for f in default_spec().features:
        assert f.column not in {"label", "label_time", "fraud_scenario"}


@pytest.mark.parametrize("column", ["fraud_scenario", "label", "label_time"])
def test_spec_refuses_label_metadata_as_input(column):
    doc = raw_spec()
    doc["feature_views"][0]["features"].append({"kind": "window_distinct", "column": column, "windows": ["1d"]})
    with pytest.raises(SpecError, match="label metadata"):
        parse_spec(doc)


def test_spec_refuses_duplicate_names_and_bad_windows():
    doc = raw_spec()
    doc["feature_views"][0]["features"].append(copy.deepcopy(doc["feature_views"][0]["features"][0]))
    with pytest.raises(SpecError, match="defined twice"):
        parse_spec(doc)
    doc = raw_spec()
    doc["feature_views"][0]["features"][0]["windows"] = ["90d"]
    with pytest.raises(SpecError, match="longer than the view's lookback"):
        parse_spec(doc)
    doc = raw_spec()
    doc["feature_views"][0]["features"][0]["kind"] = "label_rate"
    with pytest.raises(SpecError, match="not allowed in a streaming view"):
        parse_spec(doc)


def test_durations():
    assert parse_duration("1h") == 3600 and parse_duration("30d") == 30 * 86400
    with pytest.raises(SpecError):
        parse_duration("1 week")


def test_dbt_macro_is_in_sync_with_the_spec():
    """The generated macro is derived: editing the YAML without `mlp spec compile` fails here."""
    assert spec_macro_in_sync(PROJECT_ROOT / "dbt_project", default_spec()), "run `mlp spec compile`"


def test_spec_hash_changes_with_the_spec():
    doc = raw_spec()
    doc["feature_views"][1]["features"][0]["windows"] = ["1d", "7d"]
    changed = parse_spec(doc)
    assert changed.spec_hash != default_spec().spec_hash
    assert render_spec_macro(changed) != render_spec_macro(default_spec())


def test_spec_refuses_bad_night_hours_and_cross_view_ratios():
    doc = raw_spec()
    context = next(v for v in doc["feature_views"] if v["name"] == "transaction_context")
    next(f for f in context["features"] if f["kind"] == "is_night")["start_hour"] = 6
    with pytest.raises(SpecError, match="is_night needs two different hours"):
        parse_spec(doc)
    doc = raw_spec()
    ratio = next(f for f in doc["feature_views"][0]["features"] if f["kind"] == "ratio_to_feature")
    ratio["denominator"] = "merchant_txn_count_7d"
    with pytest.raises(SpecError, match="same view"):
        parse_spec(doc)


@pytest.mark.parametrize(("start", "end", "night_hours"), [(22, 6, {22, 23, 0, 1, 2, 3, 4, 5}), (1, 5, {1, 2, 3, 4})])
def test_dbt_is_night_handles_both_wrapping_and_plain_ranges(tmp_path, start, end, night_hours):
    from featurelib import run_dbt

    feature = repr({"kind": "is_night", "params": {"start_hour": start, "end_hour": end}})  # a Jinja literal
    sql = ("select h, {{ on_demand_feature(" + feature + ") }} as night from (select range as h, "
           "timestamp '2024-01-01' + to_hours(range) as event_time from range(0, 24)) t order by h")
    out = run_dbt(tmp_path / "w.duckdb", tmp_path, "show", "--inline", sql, "--limit", "24", "--output", "json")
    rows = json.loads(out[out.index("{"):out.rindex("}") + 1])["show"]
    assert {r["h"] for r in rows if r["night"] == 1} == night_hours
