"""Streaming label ingest for real: label events published on a real nats-server's JetStream go to the
warehouse (DuckDB) and the online store's label risk (an embedded store on disk), bad messages to the
dead-letter table and stream, counted and kept; redeliveries count once."""

from __future__ import annotations

import asyncio
import json

import duckdb
import pytest

from mlp_platform.serving.batch_push import read_entity_values
from mlp_platform.streaming.decision_stream import StreamConfig, connect
from mlp_platform.streaming.label_stream import (
    CUSTOMER_LABEL_RISK,
    DEAD_LETTER_STREAM,
    MERCHANT_LABEL_RISK,
    ensure_label_streams,
    ingest_labels,
)


@pytest.fixture
def settings(platform_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MLP_FEATURE_STORE_URL", f"embedded://{tmp_path / 'store'}")
    s = platform_env()
    s.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    return s


def _publish(config: StreamConfig, messages: list[tuple[str, bytes]]) -> None:
    async def go():
        nc = await connect(config, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            await ensure_label_streams(js, config)
            for subject, data in messages:
                await js.publish(subject, data)
        finally:
            await nc.close()
    asyncio.run(go())


def _event(event_id: str, kind: str = "chargeback", label: int = 1, **extra) -> dict:
    base = {"event_id": event_id, "kind": kind, "label": label, "label_time": "2026-03-01T12:00:00Z",
            "transaction_id": f"T-{event_id}", "customer_id": "C1", "merchant_id": "M1", "source": "acquirer"}
    base.update(extra)
    return base


def _msg(event: dict, subject: str | None = None) -> tuple[str, bytes]:
    return subject or f"mlp.labels.{event['kind']}", json.dumps(event).encode()


def _rows(settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        return con.execute(sql).fetchall()


HOSTILE = [
    (("mlp.labels.chargeback", b"{not json"), "not JSON"),
    (_msg(_event("x1", label=0)), "a chargeback is a fraud label"),
    (_msg(_event("x2", label=2)), "label"),
    (_msg(_event("x3", label=True)), "label"),
    (_msg(_event("x4", label="1")), "label"),
    (_msg(_event("x5", unexpected="field")), "unexpected"),
    (_msg(_event("x6", label_time="2026-03-01T12:00:00")), "time zone"),
    (_msg(_event("x7", label_time="2999-01-01T00:00:00Z")), "future"),
    (_msg(_event("<script>alert(1)</script>")), "event_id"),
    (_msg(_event("x8", customer_id="C1'; drop table raw.label_events; --")), "customer_id"),
    (_msg(_event("x9"), subject="mlp.labels.analyst_outcome"), "arrived on"),
    (_msg(_event("x10", kind="loan_performance", application_id="A1")), "application_id"),
    (("mlp.labels.chargeback", json.dumps(_event("x11", source="s" * 20_000)).encode()), "larger than"),
    (("mlp.labels.chargeback", b"[1, 2]"), "not a JSON object"),
]


def test_valid_labels_reach_the_warehouse_and_the_online_store_and_bad_ones_the_dead_letters(nats, settings):
    config = StreamConfig(url=nats.url)
    good = [_event("e1"), _event("e2", transaction_id="T-e2", merchant_id="M2"),
            _event("e3", kind="analyst_outcome", label=0, customer_id="C2", merchant_id="M2"),
            _event("e4", kind="loan_performance", decider="credit", application_id="A-7", transaction_id=None,
                   customer_id=None, merchant_id=None)]
    _publish(config, [_msg(e) for e in good] + [m for m, _ in HOSTILE])
    result = asyncio.run(ingest_labels(settings, config, batch=7))
    assert result.received == len(good) + len(HOSTILE)
    assert result.stored == len(good) and result.dead_letters == len(HOSTILE) and result.duplicates == 0
    stored = _rows(settings, "select event_id, kind, label, decider from raw.label_events order by event_id")
    assert stored == [("e1", "chargeback", 1, "fraud"), ("e2", "chargeback", 1, "fraud"),
                      ("e3", "analyst_outcome", 0, "fraud"), ("e4", "loan_performance", 1, "credit")]
    # every bad message kept with its reason, as received, in the table and on the dead-letter stream
    dead = _rows(settings, "select payload, reason from monitoring.label_dead_letters order by stream_seq")
    assert len(dead) == len(HOSTILE)
    for (payload, reason), ((_, sent), why) in zip(dead, HOSTILE, strict=True):
        assert bytes(payload) == sent and why in reason, (reason, why)

    async def dead_letters() -> int:
        nc = await connect(config, max_reconnect_attempts=1)
        try:
            return int((await nc.jetstream().stream_info(DEAD_LETTER_STREAM)).state.messages)
        finally:
            await nc.close()
    assert asyncio.run(dead_letters()) == len(HOSTILE)
    assert _rows(settings, "select count(*) from raw.label_events where customer_id like '%drop%'") == [(0,)]

    # the chargebacks raised the customer's and the merchants' risk in the online store at once
    url = settings.feature_store_url
    customer = read_entity_values(url, CUSTOMER_LABEL_RISK, "C1")
    assert list(customer.values())[-1]["confirmed_fraud_count"] == 2.0
    merchants = {m: list(read_entity_values(url, MERCHANT_LABEL_RISK, m).values())[-1]["confirmed_fraud_count"]
                 for m in ("M1", "M2")}
    assert merchants == {"M1": 1.0, "M2": 1.0}  # the analyst's "not fraud" of e3 raises nothing


def test_redelivered_and_resent_labels_count_once_and_a_later_not_fraud_reverses_a_chargeback(nats, settings):
    config = StreamConfig(url=nats.url)
    _publish(config, [_msg(_event("e1")), _msg(_event("e2", transaction_id="T-e2"))])
    asyncio.run(ingest_labels(settings, config))
    # the producer retries e1 (a new message, same event id): stored once, the count stays 2
    _publish(config, [_msg(_event("e1"))])
    again = asyncio.run(ingest_labels(settings, config))
    assert again.received == 1 and again.stored == 0 and again.duplicates == 1
    url = settings.feature_store_url
    assert list(read_entity_values(url, CUSTOMER_LABEL_RISK, "C1").values())[-1]["confirmed_fraud_count"] == 2.0
    # an analyst reverses e1's chargeback after it: the customer's count goes down to 1 (a recount,
    # not an increment: an incrementing store would be at 3 by now)
    _publish(config, [_msg(_event("r1", kind="analyst_outcome", label=0, transaction_id="T-e1",
                                  label_time="2026-03-02T09:00:00Z"))])
    asyncio.run(ingest_labels(settings, config))
    assert list(read_entity_values(url, CUSTOMER_LABEL_RISK, "C1").values())[-1]["confirmed_fraud_count"] == 1.0


def test_a_failure_before_the_ack_redelivers_the_batch_and_it_is_stored_once(nats, settings, monkeypatch,
                                                                          tmp_path):
    config = StreamConfig(url=nats.url)
    _publish(config, [_msg(_event("e1")), _msg(_event("e2", transaction_id="T-e2"))])
    # the online store cannot be written (a store URL without persistence): the warehouse step has
    # committed, the batch is not acknowledged (nak: redelivered at once)
    broken = settings.__class__(**{**settings.__dict__, "online_store_url": "memory://"})
    with pytest.raises(ValueError, match="persistent store"):
        asyncio.run(ingest_labels(broken, config))
    assert _rows(settings, "select count(*) from raw.label_events") == [(2,)]
    retried = asyncio.run(ingest_labels(settings, config))
    assert retried.received == 2 and retried.stored == 0 and retried.duplicates == 2
    assert _rows(settings, "select count(*) from raw.label_events") == [(2,)]
    assert list(read_entity_values(settings.feature_store_url, CUSTOMER_LABEL_RISK, "C1").values())[-1][
        "confirmed_fraud_count"] == 2.0


def test_a_fetch_that_misses_its_deadline_is_not_an_error_and_loses_nothing(nats, settings):
    """A busy host makes a fetch miss its deadline while messages wait (seen in CI: nats-py raised
    asyncio's TimeoutError, not its own, and the ingest let it out). The messages the server sends
    after the deadline wait in the subscription. Reverted (stop at the first empty fetch), the round
    ends with them undelivered to the code and both rounds here store nothing: they come back only
    after the 60 s ack wait."""
    config = StreamConfig(url=nats.url)
    _publish(config, [_msg(_event(f"e{i}", transaction_id=f"T-{i}")) for i in range(3)])
    # a deadline no round trip meets: every fetch times out, the round ends without an error
    missed = asyncio.run(ingest_labels(settings, config, fetch_timeout_s=0.0001))
    rest = asyncio.run(ingest_labels(settings, config))
    assert missed.stored + rest.stored == 3 and missed.received + rest.received == 3
    assert _rows(settings, "select count(*) from raw.label_events") == [(3,)]


def test_the_label_ingest_deployments_command_ingests_exports_its_counts_and_stops_on_sigterm(nats, settings,
                                                                                          tmp_path):
    """deploy/platform/label-ingest.yaml's command, run as a process from this repository on one
    kept connection: a valid and a bad message arrive, /metrics counts them, SIGTERM stops it cleanly."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx
    import yaml

    from mlp_platform.settings import PROJECT_ROOT
    from tests.natslib import free_port

    deployment = yaml.safe_load((PROJECT_ROOT / "deploy" / "platform" / "label-ingest.yaml").read_text())
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    port = free_port()
    command = [str(Path(sys.executable).with_name(command[0])), *command[1:]]
    command[command.index("--metrics-port") + 1] = str(port)
    env = {**os.environ, "MLP_DATA_DIR": str(settings.data_dir), "MLP_DECISION_STREAM_URL": nats.url,
           "MLP_FEATURE_STORE_URL": settings.feature_store_url}
    config = StreamConfig(url=nats.url)
    _publish(config, [])  # the streams exist before the process starts
    proc = subprocess.Popen(command, env=env, stdout=(tmp_path / "ingest.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        _publish(config, [_msg(_event("d1")), ("mlp.labels.chargeback", b"{not json")])

        def metric(name: str) -> float:
            for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text.splitlines():
                if line.startswith(name + " ") or line.startswith(name + "_total "):
                    return float(line.split()[-1])
            return -1.0

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if metric("mlp_label_events_stored") == 1.0:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "ingest.log").read_text()
            time.sleep(0.3)
        assert metric("mlp_label_events_stored") == 1.0 and metric("mlp_label_events_received") == 2.0
        assert "mlp_label_dead_letters_total{reason=" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _rows(settings, "select event_id from raw.label_events") == [("d1",)]
