import datetime as dt

import polars as pl
import pytest

from mlp_platform.data.contracts import ContractViolation, validate_labels, validate_transactions
from mlp_platform.data.schema import DEFAULT_CHANNEL, DEFAULT_COUNTRY, TRANSACTION_SCHEMA

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def txs(**overrides) -> pl.DataFrame:
    base = {
        "transaction_id": ["t1", "t2", "t3"],
        "event_time": [T0, T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=2)],
        "customer_id": ["c1", "c1", "c2"],
        "merchant_id": ["m1", "m2", "m1"],
        "amount": [10.0, 20.5, 3.0],
        "currency": ["EUR", "EUR", "USD"],
        "channel": ["pos", "ecom", "atm"],
        "country": ["DE", "FR", "DE"],
        "merchant_category": ["5411", "5812", "6011"],
        "device_id": [None, "d1", None],
    }
    base.update(overrides)
    return pl.DataFrame(base)


def test_valid_batch_passes_unchanged():
    out, report = validate_transactions(txs())
    assert out.schema == pl.Schema(TRANSACTION_SCHEMA)
    assert report.critical == [] and report.defaults == []
    assert out["amount"].to_list() == [10.0, 20.5, 3.0]


@pytest.mark.parametrize(
    ("overrides", "rule", "named"),
    [
        ({"transaction_id": ["t1", None, "t3"]}, "missing.transaction_id", "row 1"),
        ({"event_time": [T0, None, T0]}, "missing.event_time", "row 1"),
        ({"amount": [10.0, -1.0, 3.0]}, "negative_amount", "id=t2"),
        ({"transaction_id": ["t1", "t1", "t3"]}, "duplicate.transaction_id", "id=t1"),
        ({"amount": ["10", "abc", "3"]}, "wrong_type.amount", "id=t2"),
        ({"event_time": ["2026-01-01 12:00:00", "yesterday", "2026-01-01 12:02:00"]}, "wrong_type.event_time",
         "id=t2"),
    ],
)
def test_critical_violation_refuses_batch_and_names_rows(overrides, rule, named):
    with pytest.raises(ContractViolation) as err:
        validate_transactions(txs(**overrides))
    rules = {i.rule for i in err.value.report.critical}
    assert rule in rules
    assert named in str(err.value)
    assert rule in str(err.value)


def test_missing_required_column_is_critical():
    with pytest.raises(ContractViolation, match="missing_column"):
        validate_transactions(txs().drop("amount"))


def test_non_critical_values_get_documented_defaults_and_are_counted():
    out, report = validate_transactions(txs(channel=["pos", "carrier-pigeon", None], country=["DE", None, "Germany"]))
    assert out["channel"].to_list() == ["pos", DEFAULT_CHANNEL, DEFAULT_CHANNEL]
    assert out["country"].to_list() == ["DE", DEFAULT_COUNTRY, DEFAULT_COUNTRY]
    counts = {i.rule: i.rows for i in report.defaults}
    assert counts == {"unknown_channel": 2, "missing_country": 2}
    assert report.defaulted_rows == 4
    meta = report.as_metadata()
    assert meta["defaulted.unknown_channel"] == 2 and "id=t2" in meta["examples.unknown_channel"]


def test_absent_optional_columns_are_defaulted_not_refused():
    out, report = validate_transactions(txs().drop("currency", "device_id"))
    assert out["currency"].to_list() == ["EUR"] * 3
    assert out["device_id"].null_count() == 3
    assert {i.rule for i in report.defaults} == {"missing_currency"}


def labels(**overrides) -> pl.DataFrame:
    base = {"transaction_id": ["t2"], "label": [1], "label_time": [T0 + dt.timedelta(days=3)],
            "fraud_scenario": ["stolen_card"]}
    base.update(overrides)
    return pl.DataFrame(base)


def test_valid_labels_pass():
    tx, _ = validate_transactions(txs())
    out, report = validate_labels(labels(), tx)
    assert out.height == 1 and report.critical == []


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        ({"transaction_id": ["nope"]}, "unknown_transaction"),
        ({"label": [2]}, "label_not_0_or_1"),
        ({"label_time": [T0 - dt.timedelta(days=1)]}, "label_before_transaction"),
        ({"label_time": [None]}, "missing.label_time"),
    ],
)
def test_label_critical_violations(overrides, rule):
    tx, _ = validate_transactions(txs())
    with pytest.raises(ContractViolation) as err:
        validate_labels(labels(**overrides), tx)
    assert rule in {i.rule for i in err.value.report.critical}
