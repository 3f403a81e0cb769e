"""Loading the scoring service's decision log into the warehouse, incrementally and verified, for
drift and training/serving skew monitoring.

:func:`load_decisions` reads every log directory under a root (the root itself and each worker
subdirectory, as :func:`mlp_platform.serving.decision_log.find_decision` does), continuing in each
from where the previous load stopped: ``monitoring.decision_log_state`` holds, per directory, the seq
and hash of the last record loaded and where the next one starts (segment, byte offset). Every record
read is checked against the chain with the decision log's own link check (seq = previous + 1,
prev_hash = previous hash, hash = SHA-256 of the canonical body), continuing from the stored hash.

Rows go to ``monitoring.decisions`` (one per decision), ``monitoring.served_features`` (the features
as served, one column per feature named as in the feature spec, null where the service had none) and
``monitoring.shadow_scores``; the rows of a directory and its new state are written in one
transaction, so a load is all-or-nothing per directory and re-running it loads nothing twice. The
state is keyed by the directory's resolved path; should the same log be read under another path (a
moved data directory), its chain is verified again from the start and rows whose ``decision_id`` is
already loaded are skipped, so nothing is loaded twice.

Torn or in-progress writes: only complete lines (ending with a newline, no NUL bytes) are read; an
incomplete last line of the last segment is a write in progress (or a crash's torn tail that the
service truncates on restart) and is left for the next load; the zero-filled space after the last
record of a live segment is not a pending write (``pending_bytes`` counts the bytes before it). A
restart of the service continues the same chain (same or next segment) and is picked up. A break
anywhere else (an edited, removed, inserted or reordered record, a missing segment, an incomplete
line in a segment that is not the last) raises :class:`DecisionChainBroken` naming directory, segment, line and seq, after loading the
verified records before the break and nothing after it (the other directories are still loaded).

Warehouse: the one the settings select (DuckDB locally, Snowflake in production), through the
warehouse sessions (:mod:`mlp_platform.data.warehouse`). A root that does not exist yet loads nothing
(the service has not decided anything).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mlp_platform.data.warehouse import Session, check_identifier, warehouse_for
from mlp_platform.features.spec import default_spec
from mlp_platform.serving.decision_log import GENESIS, _link_problem
from mlp_platform.serving.decision_log_reader import ChainRead, _parse, log_directories, read_after
from mlp_platform.streaming.decision_stream import StreamConfig, read_stream, source_from_subject, subject_for

SCHEMA = "monitoring"
STATE_TABLE = f"{SCHEMA}.decision_log_state"
DECISIONS_TABLE = f"{SCHEMA}.decisions"
FEATURES_TABLE = f"{SCHEMA}.served_features"
SHADOW_TABLE = f"{SCHEMA}.shadow_scores"
#: the application deciders' decisions (credit, ...): one row per decision, its reasons and served
#: features as JSON (each decider has its own features; cases and monitoring read them by decider)
APPLICATION_TABLE = f"{SCHEMA}.application_decisions"


class DecisionChainBroken(RuntimeError):
    """A decision log's hash chain is broken; ``breaks`` lists (directory, segment, line, seq, reason)."""

    def __init__(self, breaks: list[dict[str, Any]], result: LoadResult):
        lines = [f"{b['log_dir']}: {b['segment']} line {b['line']} (seq {b['seq']}, expected {b['expected_seq']}): "
                 f"{b['reason']}" for b in breaks]
        super().__init__("decision log chain broken; nothing after the break was loaded: " + "; ".join(lines))
        self.breaks = breaks
        self.result = result


@dataclass
class LoadResult:
    """What one load added (for the asset's metadata)."""

    decisions: int = 0
    shadow_scores: int = 0
    application_decisions: int = 0  # an application decider's decisions (monitoring.application_decisions)
    other_records: int = 0  # verified records of another kind (not loaded)
    directories: dict[str, dict[str, Any]] = field(default_factory=dict)
    days: list[str] = field(default_factory=list)
    pending_bytes: int = 0  # an incomplete last line left for the next load (a write in progress)
    duplicates: int = 0  # stream: records delivered again and not loaded twice
    stream_position: int | None = None  # stream: the last stream sequence loaded
    seconds: float = 0.0

    def as_metadata(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "shadow_scores": self.shadow_scores,
                "application_decisions": self.application_decisions, "other_records": self.other_records, "directories": self.directories, "days": self.days,
                "pending_bytes": self.pending_bytes, "seconds": round(self.seconds, 3),
                **({"duplicates": self.duplicates, "stream_position": self.stream_position}
                   if self.stream_position is not None else {})}


def _ddl(feature_names: list[str]) -> list[str]:
    features = ",\n".join(f"    {check_identifier(n)} double" for n in feature_names)
    return [
        f"create schema if not exists {SCHEMA}",
        f"""create table if not exists {STATE_TABLE} (
    log_dir varchar primary key, last_seq bigint not null, last_hash varchar not null,
    segment varchar not null, "offset" bigint not null, loaded_at timestamp not null)""",
        f"""create table if not exists {DECISIONS_TABLE} (
    decision_id varchar not null, transaction_id varchar, event_time timestamp, day date,
    decided_at timestamp, arm varchar, model_version varchar, model_sha256 varchar, score double,
    decision varchar, degraded boolean, fallbacks varchar, policy_version varchar, routing_revision bigint,
    seq bigint not null, log_dir varchar not null)""",
        f"""create table if not exists {FEATURES_TABLE} (
    decision_id varchar not null, transaction_id varchar, day date,
{features})""",
        f"""create table if not exists {APPLICATION_TABLE} (
    decision_id varchar not null, decider varchar not null, application_id varchar, route varchar, arm varchar,
    decided_at timestamp, day date, model_version varchar, policy_version varchar, score double,
    decision varchar, reasons varchar, features varchar, seq bigint not null, log_dir varchar not null)""",
        f"""create table if not exists {SHADOW_TABLE} (
    decision_id varchar not null, of_decision varchar, model_version varchar, score double, decision varchar,
    served_decision varchar, day date, shadow_at timestamp, seq bigint not null, log_dir varchar not null)""",
    ]


def _utc_naive(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    t = dt.datetime.fromisoformat(value)
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo is not None else t


def default_log_root(settings) -> Path:
    """Where the service writes its decision log (``MLP_DECISION_LOG_DIR``, default
    ``<data_dir>/serving/decisions``; with several workers, one subdirectory per worker), as
    :meth:`ServingConfig.from_env` decides it."""
    return settings.decision_log_root


_DECISION_COLUMNS = ("decision_id", "transaction_id", "event_time", "day", "decided_at", "arm", "model_version",
                     "model_sha256", "score", "decision", "degraded", "fallbacks", "policy_version",
                     "routing_revision", "seq", "log_dir")
_SHADOW_COLUMNS = ("decision_id", "of_decision", "model_version", "score", "decision", "served_decision",
                   "shadow_at", "seq", "log_dir")


_APPLICATION_COLUMNS = ("decision_id", "decider", "application_id", "route", "arm", "decided_at", "day",
                        "model_version", "policy_version", "score", "decision", "reasons", "features", "seq",
                        "log_dir")


def _application_rows(read: ChainRead, log_dir: str):
    """The application deciders' decisions among the verified records (a decision record naming its
    decider; the fraud service's records name none)."""
    rows: dict[str, list] = {c: [] for c in _APPLICATION_COLUMNS}
    for record, seq in read.records:
        if record.get("kind") != "decision" or not record.get("decider"):
            continue
        decided_at = _utc_naive(record.get("time"))
        for column, value in zip(_APPLICATION_COLUMNS, (
                record["decision_id"], record["decider"], record.get("application_id"), record.get("route"),
                record.get("arm"), decided_at, decided_at.date() if decided_at else None,
                record.get("model_version"), record.get("policy_version"), record.get("score"),
                record.get("decision"), json.dumps(record.get("reasons") or [], sort_keys=True),
                json.dumps(record.get("features") or {}, sort_keys=True), seq, log_dir), strict=True):
            rows[column].append(value)
    schema = {c: pl.String for c in _APPLICATION_COLUMNS} | {
        "decided_at": pl.Datetime("us"), "day": pl.Date, "score": pl.Float64, "seq": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def _tables(read: ChainRead, log_dir: str, feature_names: list[str]):
    """Arrow tables (decisions, served features, shadow scores) of the fraud service's verified
    records, and the count of records of another kind (an application decider's decisions are not
    counted: :func:`_application_rows`)."""
    import pyarrow as pa

    dec: dict[str, list] = {c: [] for c in _DECISION_COLUMNS}
    feat: dict[str, list] = {c: [] for c in ("decision_id", "transaction_id", "day", *feature_names)}
    sh: dict[str, list] = {c: [] for c in _SHADOW_COLUMNS}
    other = 0
    for record, seq in read.records:
        kind = record.get("kind")
        if kind == "decision" and record.get("decider"):
            continue  # an application decider's (its own table)
        if kind == "decision":
            event_time = _utc_naive(record.get("event_time"))
            day = event_time.date() if event_time else None
            served = record.get("features") or {}
            for column, value in zip(_DECISION_COLUMNS, (
                    record["decision_id"], record.get("transaction_id"), event_time, day,
                    _utc_naive(record.get("time")), record.get("arm"), record.get("model_version"),
                    record.get("model_sha256"), record.get("score"), record.get("decision"),
                    bool(record.get("degraded", False)), ",".join(record.get("fallbacks") or []),
                    record.get("policy_version"), record.get("routing_revision"), seq, log_dir), strict=True):
                dec[column].append(value)
            feat["decision_id"].append(record["decision_id"])
            feat["transaction_id"].append(record.get("transaction_id"))
            feat["day"].append(day)
            for n in feature_names:
                v = served.get(n)
                feat[n].append(None if v is None else float(v))
        elif kind == "shadow":
            for column, value in zip(_SHADOW_COLUMNS, (
                    record["decision_id"], record.get("of_decision"), record.get("model_version"),
                    record.get("score"), record.get("decision"), record.get("served_decision"),
                    _utc_naive(record.get("time")), seq, log_dir), strict=True):
                sh[column].append(value)
        else:
            other += 1
    types = {"event_time": pa.timestamp("us"), "decided_at": pa.timestamp("us"), "shadow_at": pa.timestamp("us"),
             "day": pa.date32(), "score": pa.float64(), "degraded": pa.bool_(), "routing_revision": pa.int64(),
             "seq": pa.int64(), **{n: pa.float64() for n in feature_names}}

    def table(columns: dict[str, list]):
        return pa.table({c: pa.array(v, type=types.get(c, pa.string())) for c, v in columns.items()})

    return table(dec), table(feat), table(sh), other


def _store(session: Session, read: ChainRead, log_dir: str, names: list[str]) -> tuple[int, int, int, list, int]:
    """Insert the verified records of one chain and its new state (inside the caller's transaction).
    Returns (decisions added, shadow scores added, records of another kind, the decisions' days,
    application decisions added)."""
    tables = _tables(read, log_dir, names)
    decisions, features, shadows = (pl.DataFrame(pl.from_arrow(t)) for t in tables[:3])
    other = tables[3]
    if not read.records:
        return 0, 0, other, [], 0
    # anti-joins on decision_id: a log read again under another path (a moved data directory, a lost
    # state row) or a record delivered twice by the stream adds no duplicate rows
    seen = session.existing_keys(DECISIONS_TABLE, "decision_id", decisions["decision_id"].to_list())
    new_decisions = decisions.filter(~pl.col("decision_id").is_in(list(seen)))
    n_decisions = session.insert(DECISIONS_TABLE, new_decisions)
    seen = session.existing_keys(FEATURES_TABLE, "decision_id", features["decision_id"].to_list())
    session.insert(FEATURES_TABLE, features.filter(~pl.col("decision_id").is_in(list(seen))))
    seen = session.existing_keys(SHADOW_TABLE, "decision_id", shadows["decision_id"].to_list())
    new_shadows = shadows.filter(~pl.col("decision_id").is_in(list(seen)))
    # a shadow score's day is its decision's (loaded now or before), else the day it was computed
    days = session.lookup(DECISIONS_TABLE, "decision_id", new_shadows["of_decision"].to_list(), ["day"])
    new_shadows = new_shadows.with_columns(pl.coalesce(
        pl.col("of_decision").replace_strict({k: v[0] for k, v in days.items()}, default=None, return_dtype=pl.Date),
        pl.col("shadow_at").dt.date()).alias("day"))
    n_shadows = session.insert(SHADOW_TABLE, new_shadows)
    applications = _application_rows(read, log_dir)
    seen = session.existing_keys(APPLICATION_TABLE, "decision_id", applications["decision_id"].to_list())
    n_applications = session.insert(APPLICATION_TABLE, applications.filter(~pl.col("decision_id").is_in(list(seen))))
    session.execute(f"delete from {STATE_TABLE} where log_dir = ?", [log_dir])
    session.execute(f'insert into {STATE_TABLE} (log_dir, last_seq, last_hash, segment, "offset", loaded_at) '
                    f'values (?, ?, ?, ?, ?, ?)',
                    [log_dir, read.last_seq, read.last_hash, read.segment, read.offset,
                     dt.datetime.now(dt.UTC).replace(tzinfo=None)])
    return (n_decisions, n_shadows, other, [d for d in decisions["day"].to_list() if d is not None],
            n_applications)


def _stored_state(session: Session, log_dir: str) -> tuple[int, str, str, int] | None:
    found = session.fetchall(f'select last_seq, last_hash, segment, "offset" from {STATE_TABLE} '
                             f'where log_dir = ?', [log_dir])
    return tuple(found[0]) if found else None


def load_decisions(settings, log_root: Path) -> LoadResult:
    """Load what the service logged under ``log_root`` since the last load (see the module docstring).
    Raises :class:`DecisionChainBroken` (after loading every verified record before the break, and the
    other directories) when a chain is broken."""
    started = time.perf_counter()
    warehouse = warehouse_for(settings)
    names = default_spec().feature_names
    result = LoadResult()
    breaks: list[dict[str, Any]] = []
    days: set[dt.date] = set()
    directories = log_directories(Path(log_root))
    with warehouse.session() as session:
        for statement in _ddl(names):
            session.execute(statement)
        for directory in directories:
            log_dir = str(directory.resolve())
            read = read_after(directory, _stored_state(session, log_dir))
            result.pending_bytes += read.pending
            with session.transaction():
                n_decisions, n_shadows, other, read_days, n_apps = _store(session, read, log_dir, names)
            days.update(read_days)
            result.decisions += n_decisions
            result.shadow_scores += n_shadows
            result.other_records += other
            result.application_decisions += n_apps
            result.directories[log_dir] = {"decisions": n_decisions, "shadow_scores": n_shadows,
                                           "records_read": len(read.records),
                                           "last_seq": read.last_seq, "pending_bytes": read.pending}
            if read.broken is not None:
                breaks.append({"log_dir": log_dir, **read.broken})
                result.directories[log_dir]["broken"] = read.broken
    result.days = sorted(d.isoformat() for d in days)
    result.seconds = time.perf_counter() - started
    if breaks:
        raise DecisionChainBroken(breaks, result)
    return result


STREAM_STATE_TABLE = f"{SCHEMA}.decision_stream_state"


def _stream_chain(messages, source: str, state: tuple[int, str, str, int] | None) -> tuple[ChainRead, int, int | None]:
    """One source's messages (in stream order) verified against its chain from ``state``: the
    records to load, the count of records already loaded (re-deliveries), and the stream sequence of
    the first message that breaks the chain (None: none does)."""
    last_seq, last_hash = (state[0], state[1]) if state else (-1, GENESIS)
    read = ChainRead(last_seq=last_seq, last_hash=last_hash, segment=subject_for(source),
                     offset=state[3] if state else 0)
    duplicates = 0
    for message in messages:
        lines = message.data.splitlines(keepends=True) or [b""]
        for line in lines:
            try:
                record = _parse(line)
            except ValueError:
                record = None
            seq = record.get("seq") if isinstance(record, dict) else None
            if isinstance(seq, int) and not isinstance(seq, bool) and seq <= read.last_seq:
                duplicates += 1  # delivered again (a re-send after the duplicate window): already loaded
                continue
            reason = ("message holds a line that is not a JSON record" if record is None
                      else _link_problem(record, line, read.last_seq + 1, read.last_hash, strict=False))
            if reason:
                read.broken = {"segment": read.segment, "line": message.stream_seq, "seq": seq,
                               "expected_seq": read.last_seq + 1, "reason": reason}
                return read, duplicates, message.stream_seq
            read.records.append((record, seq))
            read.lines.append(line)
            read.last_seq, read.last_hash, read.offset = seq, record["hash"], message.stream_seq
    return read, duplicates, None


def load_decisions_from_stream(settings, config: StreamConfig) -> LoadResult:
    """Load what the shippers put on the decision stream since the last load: every source's chain
    verified after the trip (seq, prev_hash, the hash of the delivered bytes), each record once (a
    re-delivered record is counted in ``duplicates`` and not loaded again), the rows and the new stream position in one transaction. A broken chain loads the verified
    records before the break, keeps the stream position before it and raises :class:`DecisionChainBroken`."""
    import asyncio

    started = time.perf_counter()
    warehouse = warehouse_for(settings)
    names = default_spec().feature_names
    result = LoadResult()
    with warehouse.session() as session:
        for statement in _ddl(names):
            session.execute(statement)
        session.execute(f"""create table if not exists {STREAM_STATE_TABLE} (
            stream varchar primary key, last_stream_seq bigint not null, loaded_at timestamp not null)""")
        found = session.fetchall(f"select last_stream_seq from {STREAM_STATE_TABLE} where stream = ?",
                                 [config.stream])
        after = int(found[0][0]) if found else 0
        messages, first, last = asyncio.run(read_stream(config, after))
        if messages and messages[0].stream_seq > after + 1 and after + 1 < first:
            raise DecisionChainBroken([{
                "log_dir": f"nats://{config.stream}", "segment": "", "line": after + 1, "seq": None,
                "expected_seq": None,
                "reason": f"stream messages {after + 1}..{first - 1} are gone (retention) before they were loaded"}],
                result)
        by_source: dict[str, list] = {}
        for message in messages:
            by_source.setdefault(source_from_subject(message.subject), []).append(message)
        breaks: list[dict[str, Any]] = []
        position = last
        days: set[dt.date] = set()
        duplicates = 0
        with session.transaction():
            for source, source_messages in sorted(by_source.items()):
                key = f"nats://{config.stream}/{source}"
                read, dup, broken_at = _stream_chain(source_messages, source, _stored_state(session, key))
                duplicates += dup
                n_decisions, n_shadows, other, read_days, n_apps = _store(session, read, key, names)
                days.update(read_days)
                result.decisions += n_decisions
                result.shadow_scores += n_shadows
                result.other_records += other
                result.application_decisions += n_apps
                result.directories[key] = {"decisions": n_decisions, "shadow_scores": n_shadows,
                                           "records_read": len(read.records), "duplicates": dup,
                                           "last_seq": read.last_seq}
                if broken_at is not None:
                    position = min(position, broken_at - 1)
                    breaks.append({"log_dir": key, **read.broken})
                    result.directories[key]["broken"] = read.broken
            session.execute(f"delete from {STREAM_STATE_TABLE} where stream = ?", [config.stream])
            session.execute(f"insert into {STREAM_STATE_TABLE} (stream, last_stream_seq, loaded_at) values (?, ?, ?)",
                            [config.stream, position, dt.datetime.now(dt.UTC).replace(tzinfo=None)])
    result.days = sorted(d.isoformat() for d in days)
    result.duplicates = duplicates
    result.stream_position = position
    result.seconds = time.perf_counter() - started
    if breaks:
        raise DecisionChainBroken(breaks, result)
    return result
