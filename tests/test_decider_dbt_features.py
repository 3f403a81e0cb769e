"""An application decider's offline feature table is a dbt model generated from its feature spec
(``dbt_project/models/deciders/<name>_features.sql``). Here: the generated files are in sync with
the declarations (and stale ones are found and removed); the real dbt model over a DuckDB
warehouse, the in-process engine (polars) and the online engine (one request at a time) give the
same values on real (German), generated and hostile applications; and the same SQL runs in the
Snowflake dialect (parsed by sqlglot, executed through fakesnow) with the same values.

A reverted semantic (for instance the SQL trimming only spaces, or a ratio without its zero guard)
makes the three-engine comparison name the feature and the applications that differ."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
import sqlglot
from featurelib import DBT_PROJECT_DIR, read_table, run_dbt

from mlp_platform.data.credit_synthetic import CreditSyntheticConfig, generate_day
from mlp_platform.data.german_credit import load_german_credit
from mlp_platform.data.warehouse import DuckDBWarehouse
from mlp_platform.deciders.declaration import load_decider, load_deciders, write_variant
from mlp_platform.features.dbt_codegen import (
    DECIDER_MODELS,
    decider_models_out_of_date,
    render_decider_model,
    request_feature_sql,
    write_decider_models,
)
from mlp_platform.features.request import RequestFeaturizer, aligned_features, feature_frame
from mlp_platform.settings import PROJECT_ROOT, load_settings

DECIDERS = PROJECT_ROOT / "deciders"


@pytest.fixture(scope="module")
def credit():
    return load_decider(DECIDERS, "credit")


def hostile_applications() -> pl.DataFrame:
    """Generated applications with values an attacker (or a broken upstream) could send: zero and
    missing denominators, NaN and infinities, huge and tiny numbers, levels with odd whitespace,
    case, quotes, markup, SQL and look-alike characters."""
    apps, _ = generate_day(CreditSyntheticConfig(days=5), dt.date(2026, 1, 2))
    n = 16
    base = apps.head(n)
    levels = ["  NEGATIVE ", None, "<script>alert(1)</script>", "", "none", "Below_200", "above_200", "x",
              "\tnegative\n", "\u00a0none", "none\u2003", "'; drop table raw.credit_applications; --",
              "NONE\x0b", "\u212aone", "below_200'", "\r\nabove_200\x0c"]
    return base.with_columns(
        pl.Series("application_id", [f"hostile-{i}" for i in range(n)]),
        pl.Series("monthly_income", [0.0, None, float("nan"), float("inf"), -1.0, 1e308, 2500.0, 3000.0,
                                     -0.0, 1e-308, float("-inf"), 5e-324, 1.0, 2.0, 3.0, 4.0]),
        pl.Series("term_months", [0, 12, None, 24, 36, 48, 60, 1, 2**31 - 1, -12, 0, 6, 12, 24, 36, 48],
                  dtype=pl.Int32),
        pl.Series("checking_account", levels),
        pl.Series("savings", [v.replace("none", "below_100") if v else v for v in levels]),
        pl.Series("requested_amount", [1000.0, float("-inf"), 5.0, None, 1e308, 1e-300, 10.0, 20.0,
                                       float("nan"), -5.0, 0.0, 1e308, 1.0, 2.0, 3.0, 4.0]),
    )


def _online(spec, frame: pl.DataFrame) -> np.ndarray:
    featurizer = RequestFeaturizer(spec)
    return np.array([featurizer.row(r)[0] for r in frame.iter_rows(named=True)], dtype=float)


def _differences(spec, keys: list[str], a: np.ndarray, b: np.ndarray) -> list[str]:
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return [f"{name}: {[keys[i] for i in np.flatnonzero(~same[:, j])][:5]}"
            for j, name in enumerate(spec.feature_names) if not same[:, j].all()]


def test_the_generated_models_are_in_sync_with_the_declarations():
    problems = decider_models_out_of_date(DBT_PROJECT_DIR, load_deciders(DECIDERS).values())
    assert problems == [], f"run `mlp spec compile`: {problems}"


def test_a_changed_added_or_removed_decider_is_found_and_regenerated(tmp_path, credit):
    project = tmp_path / "dbt_project"
    (project / DECIDER_MODELS).mkdir(parents=True)
    deciders = tmp_path / "deciders"
    write_variant(credit, deciders, {})
    write_variant(credit, deciders, {"model": {"registered_name": "credit-b"}}, as_name="credit_b")
    hand_written = project / DECIDER_MODELS / "notes.yml"
    hand_written.write_text("version: 2\n")
    current = load_deciders(deciders).values()
    assert decider_models_out_of_date(project, current) == [
        f"{DECIDER_MODELS}/credit_features.sql: missing", f"{DECIDER_MODELS}/credit.yml: missing",
        f"{DECIDER_MODELS}/credit_b_features.sql: missing", f"{DECIDER_MODELS}/credit_b.yml: missing"]
    write_decider_models(project, current)
    assert decider_models_out_of_date(project, current) == []
    (project / DECIDER_MODELS / "credit_features.sql").write_text("select 1")
    assert decider_models_out_of_date(project, current) == [f"{DECIDER_MODELS}/credit_features.sql: out of date"]
    (deciders / "credit_b.yaml").unlink()
    remaining = load_deciders(deciders).values()
    assert f"{DECIDER_MODELS}/credit_b.yml: no such decider" in decider_models_out_of_date(project, remaining)
    write_decider_models(project, remaining)
    assert sorted(p.name for p in (project / DECIDER_MODELS).iterdir()) == [
        "credit.yml", "credit_features.sql", "notes.yml"]  # the hand-written file is kept
    assert decider_models_out_of_date(project, remaining) == []


@pytest.mark.slow
def test_dbt_polars_and_online_engines_agree(tmp_path, credit):
    spec, key = credit.spec, credit.entity.key
    frames = [generate_day(CreditSyntheticConfig(days=5), dt.date(2026, 1, 2))[0], hostile_applications()]
    german = load_settings().german_credit_path
    if german.exists():
        frames.append(load_german_credit(german).applications)
    apps = pl.concat(frames, how="vertical_relaxed")
    db = tmp_path / "warehouse.duckdb"
    DuckDBWarehouse(db).replace_table("credit_applications", apps)
    run_dbt(db, tmp_path / "dbt", "build", "--select", "credit_features")
    table = read_table(db, "features.credit_features")
    assert table.height == apps.height and table.columns == [key, "event_time", *spec.feature_names]
    warehouse = aligned_features(spec, apps, key, table).to_numpy().astype(float)
    in_process = feature_frame(spec, apps).to_numpy().astype(float)
    online = _online(spec, apps)
    keys = apps[key].to_list()
    assert _differences(spec, keys, warehouse, in_process) == []
    assert _differences(spec, keys, in_process, online) == []
    assert np.isfinite(warehouse[~np.isnan(warehouse)]).all()  # never an infinity in the table
    # the hostile rows decide what they should, in all three
    names = spec.feature_names
    hostile = {k: i for i, k in enumerate(keys) if k.startswith("hostile-")}
    code = warehouse[:, names.index("checking_account_code")]
    assert [code[hostile[f"hostile-{i}"]] for i in (0, 4, 5, 8, 12, 15)] == [0.0, 3.0, 1.0, 0.0, 3.0, 2.0]
    # not ASCII whitespace (no-break space, em space), markup, SQL, a look-alike Kelvin sign: missing
    assert all(math.isnan(code[hostile[f"hostile-{i}"]]) for i in (1, 2, 3, 7, 9, 10, 11, 13, 14))
    ratio = warehouse[:, names.index("monthly_installment")]
    assert math.isnan(ratio[hostile["hostile-0"]]) and math.isnan(ratio[hostile["hostile-10"]])  # term 0


def test_a_feature_table_missing_rows_or_columns_is_refused(credit):
    spec, key = credit.spec, credit.entity.key
    apps = hostile_applications()
    table = feature_frame(spec, apps, keep=(key,))
    assert aligned_features(spec, apps.reverse(), key, table).equals(feature_frame(spec, apps.reverse()))
    with pytest.raises(ValueError, match="1 of 16 application"):
        aligned_features(spec, apps, key, table.tail(15))
    with pytest.raises(ValueError, match="lacks column"):
        aligned_features(spec, apps, key, table.drop("income_burden"))
    with pytest.raises(ValueError, match="duplicated"):
        aligned_features(spec, apps, key, pl.concat([table, table.head(1)]))


def test_the_generated_sql_runs_in_the_snowflake_dialect(credit, fakesnow_warehouse):
    """Snowflake cannot be reached here: the model's SELECT is parsed in sqlglot's Snowflake dialect
    and executed through fakesnow over the raw table the production writer creates."""
    spec, key = credit.spec, credit.entity.key
    body = render_decider_model(credit).split("\n", 2)[2]  # the header comment and config() go
    sql = body.replace("{{ source('credit', 'applications') }}", "raw.credit_applications")
    parsed = sqlglot.parse_one(sql, read="snowflake")
    assert [e.alias_or_name for e in parsed.expressions] == [key, "event_time", *spec.feature_names]
    assert len(request_feature_sql(spec)) == len(spec.feature_names)
    apps = hostile_applications().drop("event_time")  # fakesnow's pandas writer and naive timestamps
    warehouse = fakesnow_warehouse
    warehouse.replace_table("credit_applications", apps)
    warehouse.replace_table("credit_applications", apps)  # replaced whole, not appended
    out = warehouse.query(sql.replace("  event_time,\n", ""))
    assert out.height == apps.height
    got = aligned_features(spec, apps, key, out).to_numpy().astype(float)
    want = feature_frame(spec, apps).to_numpy().astype(float)
    assert _differences(spec, apps[key].to_list(), got, want) == []


def test_a_raw_table_name_outside_the_deciders_is_refused(tmp_path):
    warehouse = DuckDBWarehouse(tmp_path / "w.duckdb")
    for name in ("transactions", "credit_applications; drop table x", "Credit_applications", "credit"):
        with pytest.raises(ValueError, match="a decider's raw tables"):
            warehouse.replace_table(name, pl.DataFrame({"a": [1]}))

