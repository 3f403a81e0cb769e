import datetime as dt

import polars as pl
import pytest

from conftest import HANDBOOK
from mlp_platform.data.contracts import validate_labels, validate_transactions
from mlp_platform.data.handbook import load_handbook
from mlp_platform.data.schema import LABEL_SCHEMA, TRANSACTION_SCHEMA

pytestmark = pytest.mark.skipif(not HANDBOOK.exists(), reason="shared dataset not mounted")
DAY = dt.date(2018, 5, 3)


def test_maps_one_day_onto_the_canonical_schema():
    txs, labels = load_handbook(HANDBOOK, DAY, DAY + dt.timedelta(days=1), label_delay_days=7)
    raw = pl.read_parquet(HANDBOOK).filter(pl.col("TX_DATETIME").dt.date() == DAY)
    assert txs.schema == pl.Schema(TRANSACTION_SCHEMA) and labels.schema == pl.Schema(LABEL_SCHEMA)
    assert txs.height == raw.height
    assert labels.height == int(raw["TX_FRAUD"].sum())
    assert "fraud_scenario" not in txs.columns and not any("SCENARIO" in c.upper() for c in txs.columns)
    first = raw.sort("TRANSACTION_ID").row(0, named=True)
    mapped = txs.filter(pl.col("transaction_id") == str(first["TRANSACTION_ID"])).row(0, named=True)
    assert mapped["customer_id"] == str(first["CUSTOMER_ID"]) and mapped["merchant_id"] == str(first["TERMINAL_ID"])
    assert mapped["amount"] == first["TX_AMOUNT"] and mapped["channel"] == "unknown" and mapped["device_id"] is None
    # the data passes the contract as it is
    validated, report = validate_transactions(txs)
    validate_labels(labels, validated)
    assert report.defaulted_rows == 0


def test_label_time_assumption_is_configurable():
    _, three = load_handbook(HANDBOOK, DAY, DAY + dt.timedelta(days=1), label_delay_days=3)
    txs, ten = load_handbook(HANDBOOK, DAY, DAY + dt.timedelta(days=1), label_delay_days=10)
    joined = ten.join(txs, on="transaction_id").join(three, on="transaction_id", suffix="_3")
    assert (joined["label_time"] - joined["event_time"] == dt.timedelta(days=10)).all()
    assert (joined["label_time_3"] - joined["event_time"] == dt.timedelta(days=3)).all()
    assert set(ten["fraud_scenario"].unique()) <= {"1", "2", "3"}


def test_missing_or_foreign_file_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MLP_HANDBOOK_PATH"):
        load_handbook(tmp_path / "nope.parquet", DAY, DAY, 7)
    other = tmp_path / "other.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(other)
    with pytest.raises(ValueError, match="not the handbook dataset"):
        load_handbook(other, DAY, DAY, 7)
