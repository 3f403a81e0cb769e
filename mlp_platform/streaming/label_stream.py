"""Streaming label ingest: chargebacks, analyst outcomes and loan performance arriving on NATS
JetStream subjects update the warehouse and the online store as they arrive, with a contract and
dead-letter handling for bad messages.

Subjects ``mlp.labels.<kind>`` (stream ``MLP_LABELS``, file storage). One message is one JSON label
event (:class:`LabelEvent`: unknown fields, a label outside {0, 1}, a chargeback that is not fraud,
a time in the future or without a zone, an id that is missing or too long are all refused). A
durable consumer (``mlp-label-ingest``, explicit acks) takes a batch, and for it:

1. every valid event is inserted into ``raw.label_events`` unless its ``event_id`` is there already
   (a redelivery, a producer's retry); every invalid message goes to ``monitoring.label_dead_letters``
   (the payload as received, the subject, the stream sequence and why it was refused) and is
   published to ``mlp.deadletter.labels`` (stream ``MLP_LABELS_DEAD``, kept a year) -- counted,
   kept, never silently dropped. Both tables are written in one transaction;
2. the online store's label risk of every customer and merchant a fraud label names
   (:data:`CUSTOMER_LABEL_RISK`, :data:`MERCHANT_LABEL_RISK`: confirmed frauds, the last one's time)
   is recomputed from the warehouse -- a recount, not an increment, so a batch delivered twice does
   not count twice -- and written as of the newest label time: a chargeback raises the customer's
   and merchant's risk seconds after it arrives, not at the next nightly batch;
3. only then are the messages acknowledged. A failure before that (the warehouse, the store) leaves
   them unacknowledged: the stream redelivers them and the steps above are idempotent.

The label risk values are entity values next to the batch features (like
:data:`mlp_platform.serving.batch_push.CUSTOMER_BATCH_RISK`): not model inputs, read by the
decision engine or a rule through :func:`mlp_platform.serving.batch_push.read_entity_values`.

Warehouse: the one the settings select (DuckDB locally, Snowflake in production), through the
warehouse sessions (:mod:`mlp_platform.data.warehouse`), as the decision loader.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from mlp_platform.serving.online_store import BatchPlan
from mlp_platform.streaming.decision_stream import StreamConfig, connect, ensure_stream

log = logging.getLogger(__name__)

LABEL_STREAM = "MLP_LABELS"
LABEL_SUBJECTS = "mlp.labels.>"
DEAD_LETTER_STREAM = "MLP_LABELS_DEAD"
DEAD_LETTER_SUBJECT = "mlp.deadletter.labels"
CONSUMER = "mlp-label-ingest"
MAX_MESSAGE_BYTES = 16 * 1024
CLOCK_SKEW = dt.timedelta(minutes=5)

EVENTS_TABLE = "raw.label_events"
DEAD_TABLE = "monitoring.label_dead_letters"

CUSTOMER_LABEL_RISK = BatchPlan(name="customer_label_risk", key="customer_id",
                                features=("confirmed_fraud_count", "last_confirmed_fraud_epoch_s"), out_index=())
MERCHANT_LABEL_RISK = BatchPlan(name="merchant_label_risk", key="merchant_id",
                                features=("confirmed_fraud_count", "last_confirmed_fraud_epoch_s"), out_index=())

#: An id: 1-128 characters of letters, digits and _ . : - (no markup, no spaces, no SQL).
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]


class LabelEvent(BaseModel):
    """One label as it arrives: a chargeback or an analyst's outcome of a transaction, or a loan's
    performance (defaulted or not) of an application."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Identifier
    kind: Literal["chargeback", "analyst_outcome", "loan_performance"]
    label: StrictInt = Field(ge=0, le=1)  # 0 or 1, not true, 1.0 or "1"
    label_time: dt.datetime
    transaction_id: Identifier | None = None
    application_id: Identifier | None = None
    customer_id: Identifier | None = None
    merchant_id: Identifier | None = None
    decider: str = Field(default="fraud", min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
    source: str = Field(default="", max_length=64)

    @field_validator("label_time")
    @classmethod
    def _aware_and_not_future(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            raise ValueError("label_time needs a time zone (e.g. 2026-03-01T12:00:00Z)")
        if value - dt.datetime.now(dt.UTC) > CLOCK_SKEW:
            raise ValueError("label_time is in the future")
        return value.astimezone(dt.UTC)

    @model_validator(mode="after")
    def _subject_of_the_label(self) -> LabelEvent:
        if self.kind == "loan_performance":
            if not self.application_id or self.transaction_id:
                raise ValueError("a loan_performance label names an application_id (and no transaction_id)")
            if self.decider == "fraud":
                raise ValueError("a loan_performance label names its (credit) decider")
        elif not self.transaction_id or self.application_id:
            raise ValueError(f"a {self.kind} label names a transaction_id (and no application_id)")
        if self.kind == "chargeback" and self.label != 1:
            raise ValueError("a chargeback is a fraud label (label 1); a reversed one is an analyst_outcome 0")
        return self


def parse_label(subject: str, data: bytes) -> LabelEvent:
    """The event of one message, or ValueError naming what is wrong (the dead letter's reason)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {len(data)} bytes is larger than {MAX_MESSAGE_BYTES}")
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    try:
        event = LabelEvent.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from None
    expected = f"mlp.labels.{event.kind}"
    if subject != expected:
        raise ValueError(f"a {event.kind} event arrived on {subject} (expected {expected})")
    return event


@dataclass
class IngestResult:
    received: int = 0
    stored: int = 0  # new label events in the warehouse
    duplicates: int = 0  # already stored (redelivered or re-sent)
    dead_letters: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    entities_updated: int = 0

    def as_metadata(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ddl() -> list[str]:
    return [
        "create schema if not exists raw",
        "create schema if not exists monitoring",
        f"""create table if not exists {EVENTS_TABLE} (
            event_id varchar not null, kind varchar not null, decider varchar not null, label integer not null,
            label_time timestamp not null, transaction_id varchar, application_id varchar, customer_id varchar,
            merchant_id varchar, source varchar, received_at timestamp not null, stream_seq bigint not null)""",
        f"""create table if not exists {DEAD_TABLE} (
            subject varchar, stream_seq bigint not null, payload binary, reason varchar not null,
            received_at timestamp not null)""",
    ]


async def ensure_label_streams(js, config: StreamConfig) -> None:
    """The label stream (30 days) and its dead letters (a year), with the decision stream's replicas."""
    await ensure_stream(js, config, name=LABEL_STREAM, subjects=LABEL_SUBJECTS, max_age_days=30.0)
    await ensure_stream(js, config, name=DEAD_LETTER_STREAM, subjects=DEAD_LETTER_SUBJECT, max_age_days=365.0)


def _utc_naive(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None)


def _store_batch(session, valid: list[tuple[LabelEvent, int]],
                 dead: list[tuple[str, int, bytes, str]]) -> tuple[int, int]:
    """Insert new events and the dead letters in one transaction; (stored, duplicates)."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    seen: set[str] = set()
    rows: dict[str, list] = {c: [] for c in ("event_id", "kind", "decider", "label", "label_time", "transaction_id",
                                             "application_id", "customer_id", "merchant_id", "source",
                                             "received_at", "stream_seq")}
    for event, seq in valid:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        for column, value in (("event_id", event.event_id), ("kind", event.kind), ("decider", event.decider),
                              ("label", event.label), ("label_time", _utc_naive(event.label_time)),
                              ("transaction_id", event.transaction_id), ("application_id", event.application_id),
                              ("customer_id", event.customer_id), ("merchant_id", event.merchant_id),
                              ("source", event.source), ("received_at", now), ("stream_seq", seq)):
            rows[column].append(value)
    events_in = pl.DataFrame(rows, schema={c: {"label": pl.Int32, "label_time": pl.Datetime("us"),
                                               "received_at": pl.Datetime("us"), "stream_seq": pl.Int64}
                                           .get(c, pl.String) for c in rows})
    dead_in = pl.DataFrame({"subject": [d[0] for d in dead], "stream_seq": [d[1] for d in dead],
                            "payload": [d[2] for d in dead], "reason": [d[3] for d in dead],
                            "received_at": [now] * len(dead)},
                           schema={"subject": pl.String, "stream_seq": pl.Int64, "payload": pl.Binary,
                                   "reason": pl.String, "received_at": pl.Datetime("us")})
    with session.transaction():
        # anti-joins: an event id stored before (a producer's retry, a redelivery) is not stored again
        known = session.existing_keys(EVENTS_TABLE, "event_id", events_in["event_id"].to_list())
        stored = session.insert(EVENTS_TABLE, events_in.filter(~pl.col("event_id").is_in(list(known))))
        known_dead = session.existing_keys(DEAD_TABLE, "stream_seq", dead_in["stream_seq"].to_list())
        session.insert(DEAD_TABLE, dead_in.filter(~pl.col("stream_seq").is_in(list(known_dead))))
    return stored, len(valid) - stored


def _label_risk(session, plan: BatchPlan, keys: set[str]) -> list[dict[str, Any]]:
    """Confirmed frauds per entity, recounted from the warehouse (a fraud counts once per transaction)."""
    if not keys:
        return []
    marks = ", ".join("?" * len(keys))
    rows = session.fetchall(f"""
        select {plan.key}, count(distinct transaction_id), max(label_time)
        from {EVENTS_TABLE}
        where label = 1 and kind in ('chargeback', 'analyst_outcome') and {plan.key} in ({marks})
          and transaction_id not in (  -- an analyst's later "not fraud" reverses a chargeback
              select transaction_id from {EVENTS_TABLE} as r
              where r.label = 0 and r.kind = 'analyst_outcome' and r.transaction_id is not null
                and r.label_time >= (select max(f.label_time) from {EVENTS_TABLE} as f
                                     where f.transaction_id = r.transaction_id and f.label = 1))
        group by 1""", sorted(keys))
    found = {str(k): (int(n), last) for k, n, last in rows}
    out = []
    for key in sorted(keys):
        n, last = found.get(key, (0, None))
        epoch = None if last is None else last.replace(tzinfo=dt.UTC).timestamp()
        out.append({plan.key: key, "confirmed_fraud_count": float(n), "last_confirmed_fraud_epoch_s": epoch})
    return out


def _update_online_store(settings, session, events: list[LabelEvent]) -> int:
    from mlp_platform.serving.batch_push import push_entity_values

    fraud_labels = [e for e in events if e.kind in ("chargeback", "analyst_outcome")]
    if not fraud_labels:
        return 0
    as_of = max(e.label_time for e in fraud_labels)
    updated = 0
    for plan, attribute in ((CUSTOMER_LABEL_RISK, "customer_id"), (MERCHANT_LABEL_RISK, "merchant_id")):
        keys = {getattr(e, attribute) for e in fraud_labels if getattr(e, attribute)}
        rows = _label_risk(session, plan, keys)
        if rows:
            push_entity_values(settings.feature_store_url, None, plan, rows, as_of)
            updated += len(rows)
    return updated


async def ingest_labels(settings, config: StreamConfig, *, batch: int = 256, max_batches: int | None = None,
                        fetch_timeout_s: float = 1.0, nc=None) -> IngestResult:
    """Take what is waiting on the label subjects (at most ``max_batches`` batches; None: until a fetch
    finds nothing) through steps 1-3 of the module docstring. ``nc``: a connection to use (kept open);
    None: one of its own, closed at the end."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from mlp_platform.data.warehouse import warehouse_for

    warehouse = warehouse_for(settings)
    result = IngestResult()
    own = nc is None
    nc = nc or await connect(config, max_reconnect_attempts=3)
    try:
        js = nc.jetstream(timeout=10)
        await ensure_label_streams(js, config)
        sub = await js.pull_subscribe(LABEL_SUBJECTS, durable=CONSUMER, stream=LABEL_STREAM,
                                      config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60.0,
                                                            max_ack_pending=10_000))
        n_batches = timeouts = 0
        with warehouse.session() as session:
            for statement in _ddl():
                session.execute(statement)
            while max_batches is None or n_batches < max_batches:
                try:
                    msgs = await sub.fetch(batch, timeout=fetch_timeout_s)
                except TimeoutError:
                    # nats-py raises its own TimeoutError or asyncio's; an empty fetch on a busy host
                    # is not "nothing waiting" (seen in CI): messages the server sent after the
                    # deadline wait in the subscription, and the next fetch takes them. Stop when the
                    # consumer has nothing undelivered or unacknowledged, or after three empty
                    # fetches in a row (the next round takes the rest)
                    timeouts += 1
                    info = await sub.consumer_info()
                    if timeouts >= 3 or (info.num_pending == 0 and info.num_ack_pending == 0):
                        break
                    continue
                timeouts = 0
                n_batches += 1
                valid: list[tuple[LabelEvent, int]] = []
                dead: list[tuple[str, int, bytes, str]] = []
                for m in msgs:
                    seq = int(m.metadata.sequence.stream)
                    try:
                        valid.append((parse_label(m.subject, m.data), seq))
                    except ValueError as exc:
                        dead.append((m.subject, seq, bytes(m.data), str(exc)))
                try:
                    stored, duplicates = _store_batch(session, valid, dead)
                    for subject, seq, payload, reason in dead:
                        await js.publish(DEAD_LETTER_SUBJECT, payload, headers={
                            "Nats-Msg-Id": f"{LABEL_STREAM}-{seq}", "Mlp-Error": reason[:1000].replace("\n", " "),
                            "Mlp-Original-Subject": subject, "Mlp-Original-Seq": str(seq)})
                    updated = _update_online_store(settings, session, [e for e, _ in valid])
                except BaseException:
                    # not acknowledged: redelivered at once (a crashed process's batch: after ack_wait);
                    # the steps are idempotent, so nothing counts twice
                    for m in msgs:
                        with contextlib.suppress(Exception):
                            await m.nak()
                    raise
                for m in msgs:
                    await m.ack()
                for *_, reason in dead:
                    key = reason.split(":")[0][:80]
                    result.reasons[key] = result.reasons.get(key, 0) + 1
                result.entities_updated += updated
                result.received += len(msgs)
                result.stored += stored
                result.duplicates += duplicates
                result.dead_letters += len(dead)
        return result
    finally:
        if own:
            await nc.close()


@dataclass
class IngestTotals:
    """What a long-running ingest took since it started (its Prometheus series)."""

    rounds: int = 0
    failed_rounds: int = 0
    totals: IngestResult = field(default_factory=IngestResult)

    def add(self, r: IngestResult) -> None:
        t = self.totals
        t.received += r.received
        t.stored += r.stored
        t.duplicates += r.duplicates
        t.dead_letters += r.dead_letters
        t.entities_updated += r.entities_updated
        for reason, n in r.reasons.items():
            t.reasons[reason] = t.reasons.get(reason, 0) + n


def run_label_ingest(settings, config: StreamConfig, *, once: bool = False, metrics_port: int | None = None,
                     idle_s: float = 1.0, report=None) -> IngestTotals:
    """The ingest process (``mlp stream labels``): rounds of :func:`ingest_labels` on one connection
    (reconnecting on its own), a pause of ``idle_s`` after a round that found nothing, until
    SIGTERM/SIGINT (``once``: one round). A failed round (the warehouse or the store down) is counted
    and retried after the pause: its messages were not acknowledged, so nothing is lost. With
    ``metrics_port``, Prometheus series on that port (events received, stored, duplicates, dead
    letters by reason, failed rounds)."""
    import asyncio
    import signal

    state = IngestTotals()
    if metrics_port:
        _export_ingest_metrics(state, metrics_port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        nc = await connect(config)
        try:
            while not stop.is_set():
                try:
                    result = await ingest_labels(settings, config, nc=nc)
                except Exception as exc:  # noqa: BLE001 -- counted, logged, retried (nothing was acknowledged)
                    state.failed_rounds += 1
                    log.error("label ingest round failed (retried): %s", exc)
                    result = IngestResult()
                state.rounds += 1
                state.add(result)
                if result.received and report:
                    report(result)
                if once:
                    return
                if not result.received:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), idle_s)
        finally:
            await nc.close()

    asyncio.run(main())
    return state


def _export_ingest_metrics(state: IngestTotals, port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily

    class _Collector:
        def collect(self):
            t = state.totals
            yield CounterMetricFamily("mlp_label_events_received", "Label messages taken from the stream.", t.received)
            yield CounterMetricFamily("mlp_label_events_stored", "New label events written to the warehouse.", t.stored)
            yield CounterMetricFamily("mlp_label_events_duplicate", "Label events stored before (re-sent, redelivered).",
                                      t.duplicates)
            dead = CounterMetricFamily("mlp_label_dead_letters", "Refused label messages, kept with their reason.",
                                       labels=["reason"])
            for reason, n in sorted(t.reasons.items()):
                dead.add_metric([reason], n)
            yield dead
            yield CounterMetricFamily("mlp_label_ingest_failed_rounds", "Rounds that failed before the ack (retried).",
                                      state.failed_rounds)

    registry = CollectorRegistry()
    registry.register(_Collector())
    start_http_server(port, registry=registry)
