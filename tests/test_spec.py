import copy

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
