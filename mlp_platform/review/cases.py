"""Review cases: the queue of decisions a person must look at, and what the person decided.

Every decision whose action the decider's declaration lists in ``review.open_for`` (fraud: review;
credit: refer) opens one **case**, keyed by its decision id (opening twice is a no-op). An analyst
**claims** a case (a claim lapses after ``claim_ttl``, so an abandoned case returns to the queue),
then **resolves** it with an outcome the declaration allows (fraud / not fraud; approve / decline
with a reason), optionally an **override** of the served decision, which needs a comment. The case
row holds the current state; every action is also appended to the hash-chained decision log by the
caller (:func:`case_action_record`), which is the audit trail.

One schema, one set of migrations, two engines: SQLite (the embedded default, a file under the
data directory) and Postgres (production), through SQLAlchemy Core. ``migrate`` applies the
numbered migrations not yet recorded in ``review_schema_migrations``, each in its own transaction
(on Postgres under an advisory lock, so replicas starting together do not race).

The queue is read in pages by keyset (oldest decision first, then case id) on a partial index of the
unresolved cases ``(decider, decided_at, case_id) where status <> 'resolved'``: the first page costs
the same with 100 or 100,000 open cases (``bench/bench_cases.py``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from mlp_platform.deciders.declaration import DEFAULT_DECIDER

#: Seconds a claim holds a case before another analyst may take it.
CLAIM_TTL_S = 30 * 60
MAX_COMMENT = 2000
MAX_REVIEWER = 100
STATUSES = ("open", "claimed", "resolved")


class CaseError(ValueError):
    """A case action refused (unknown outcome, missing comment...): the caller's mistake."""


class CaseNotFound(LookupError):
    pass


class CaseConflict(RuntimeError):
    """The case is not in a state that allows the action (claimed by someone else, resolved)."""


def _tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The schema as of migration 1 (a later migration alters it and extends this definition)."""
    cases = sa.Table(
        "review_cases", metadata,
        sa.Column("case_id", sa.String(64), primary_key=True),  # the decision id
        sa.Column("decider", sa.String(40), nullable=False),
        sa.Column("entity_id", sa.String(200), nullable=False),  # transaction / application id
        sa.Column("decision", sa.String(20), nullable=False),  # what the service answered
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("model_version", sa.String(40), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("claimed_by", sa.String(MAX_REVIEWER)),
        sa.Column("claimed_at", sa.DateTime(timezone=True)),
        sa.Column("resolved_by", sa.String(MAX_REVIEWER)),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("outcome", sa.String(32)),
        sa.Column("label", sa.Integer),
        sa.Column("override_decision", sa.String(20)),
        sa.Column("reason", sa.Text),
        sa.Column("comment", sa.Text),
        sa.Column("evidence", sa.Text, nullable=False),  # JSON: the decision's trace
        sa.Column("revision", sa.Integer, nullable=False),
    )
    # the queue (open and claimed cases, oldest first): a partial index on the unresolved cases only,
    # so its first page is read in index order however many cases were resolved before
    unresolved = cases.c.status != "resolved"
    sa.Index("review_cases_unresolved", cases.c.decider, cases.c.decided_at, cases.c.case_id,
             sqlite_where=unresolved, postgresql_where=unresolved)
    # one status at a time (resolved cases for compliance, open cases only)
    sa.Index("review_cases_by_status", cases.c.decider, cases.c.status, cases.c.decided_at, cases.c.case_id)
    migrations = sa.Table(
        "review_schema_migrations", metadata,
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )
    return cases, migrations


def _positions_table(metadata: sa.MetaData) -> sa.Table:
    """How far each decision log has been read for cases (:meth:`CaseStore.reconcile`)."""
    return sa.Table(
        "review_log_positions", metadata,
        sa.Column("source", sa.String(400), primary_key=True),  # a decision log directory
        sa.Column("seq", sa.BigInteger, nullable=False),  # the last record read
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _resolved_index(cases: sa.Table) -> sa.Index:
    """The resolutions in the order they were recorded (the export of outcomes as labels reads them
    from its watermark on)."""
    resolved = cases.c.status == "resolved"
    return sa.Index("review_cases_resolved", cases.c.resolved_at, cases.c.case_id,
                    sqlite_where=resolved, postgresql_where=resolved)


_METADATA = sa.MetaData()
CASES, MIGRATIONS_TABLE = _tables(_METADATA)
_resolved_index(CASES)  # migration 2
POSITIONS = _positions_table(_METADATA)


def _migration_1(conn: sa.Connection) -> None:
    metadata = sa.MetaData()
    cases, _ = _tables(metadata)
    cases.create(conn)
    _positions_table(metadata).create(conn)


def _migration_2(conn: sa.Connection) -> None:
    cases, _ = _tables(sa.MetaData())
    _resolved_index(cases).create(conn)


#: (version, description, function): applied in order, each once.
MIGRATIONS: tuple[tuple[int, str, Any], ...] = (
    (1, "review_cases and its queue index, review_log_positions", _migration_1),
    (2, "review_cases_resolved: resolutions by time (the outcomes' export)", _migration_2),
)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands timestamps back without their zone: they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def engine_for(url: str) -> sa.Engine:
    """An engine on the review database (SQLite: its directory made, foreign keys and a busy timeout)."""
    if url.startswith("sqlite:///"):
        from pathlib import Path

        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_connection, _record) -> None:  # readers never wait for the writer
            dbapi_connection.execute("pragma journal_mode = WAL")
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def migrate(engine: sa.Engine) -> list[int]:
    """Apply the migrations not yet applied; returns their versions."""
    applied: list[int] = []
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("select pg_advisory_xact_lock(2121)"))
        MIGRATIONS_TABLE.create(conn, checkfirst=True)
        done = set(conn.execute(sa.select(MIGRATIONS_TABLE.c.version)).scalars())
        for version, description, apply in MIGRATIONS:
            if version in done:
                continue
            apply(conn)
            conn.execute(MIGRATIONS_TABLE.insert().values(version=version, description=description,
                                                          applied_at=now_utc()))
            applied.append(version)
    return applied


@dataclass(frozen=True)
class Case:
    case_id: str
    decider: str
    entity_id: str
    decision: str
    score: float
    model_version: str
    decided_at: dt.datetime
    opened_at: dt.datetime
    status: str
    claimed_by: str | None
    claimed_at: dt.datetime | None
    resolved_by: str | None
    resolved_at: dt.datetime | None
    outcome: str | None
    label: int | None
    override_decision: str | None
    reason: str | None
    comment: str | None
    evidence: dict[str, Any]
    revision: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Case:
        values = dict(row)
        values["evidence"] = json.loads(values["evidence"])
        for key in ("decided_at", "opened_at", "claimed_at", "resolved_at"):
            values[key] = _aware(values[key])
        return cls(**values)

    def as_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("decided_at", "opened_at", "claimed_at", "resolved_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


def case_from_decision(record: Mapping[str, Any], decider: str, *, opened_at: dt.datetime | None = None) -> dict:
    """The new case row of a logged decision record (the service's or an application decider's)."""
    entity = record.get("transaction_id") or record.get("application_id") or ""
    evidence = {k: record.get(k) for k in ("event_time", "features", "reasons", "thresholds", "policy_version", "request",
                                           "fallbacks", "defaults_applied", "degraded", "arm", "explanation",
                                           "counter_offers") if k in record}
    return {
        "case_id": str(record["decision_id"]), "decider": decider, "entity_id": str(entity)[:200],
        "decision": str(record["decision"]), "score": float(record.get("score") or 0.0),
        "model_version": str(record.get("model_version") or ""),
        "decided_at": dt.datetime.fromisoformat(record["time"]) if record.get("time") else now_utc(),
        "opened_at": opened_at or now_utc(), "status": "open",
        "evidence": orjson.dumps(evidence, default=str, option=orjson.OPT_NON_STR_KEYS).decode(),
        "revision": 0,
    }


class CaseStore:
    """The cases of every decider in one database."""

    def __init__(self, engine: sa.Engine, *, claim_ttl_s: float = CLAIM_TTL_S):
        self.engine = engine
        self.claim_ttl_s = claim_ttl_s

    @classmethod
    def from_url(cls, url: str, **kwargs) -> CaseStore:
        engine = engine_for(url)
        migrate(engine)
        return cls(engine, **kwargs)

    # --- opening ---------------------------------------------------------------------------------
    def open_many(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert new cases (rows of :func:`case_from_decision`); ids already present are left alone
        (``on conflict do nothing``). Returns how many were new.

        Opening does not wait for the disk (SQLite: WAL with ``synchronous=NORMAL``; Postgres:
        ``synchronous_commit = off``): a case lost to a power cut is lost with its recorded log
        position, in the same transaction, so the reconcile opens it again from the decision log.
        Claims and resolutions do wait (see :meth:`_acting`)."""
        if not rows:
            return 0
        unique = list({r["case_id"]: r for r in rows}.values())
        insert = _insert_ignoring(self.engine.dialect.name)
        with self.engine.begin() as conn:
            _relaxed(conn)
            result = conn.execute(insert, unique)
        return max(result.rowcount, 0)

    def reconcile(self, source: str, records: Iterable[Mapping[str, Any]], open_for: Mapping[str, Sequence[str]],
                  *, chunk: int = 1000) -> int:
        """Open the cases of a decision log's records after the position recorded for ``source`` (its
        directory): whatever the live path did not open (a crash between the log write and the insert,
        a full opening queue, the database down) is opened here. ``open_for``: decider -> actions;
        a record without a ``decider`` field is the fraud service's (DEFAULT_DECIDER). Returns how many
        were new."""
        with self.engine.connect() as conn:
            last = conn.execute(sa.select(POSITIONS.c.seq).where(POSITIONS.c.source == source)).scalar()
        last = -1 if last is None else int(last)
        opened, pending, seq = 0, [], last
        for record in records:
            seq_now = record.get("seq")
            if not isinstance(seq_now, int) or seq_now <= last:
                continue
            seq = seq_now
            decider = record.get("decider") or DEFAULT_DECIDER
            if record.get("kind") == "decision" and record.get("decision") in open_for.get(decider, ()):
                pending.append(case_from_decision(record, decider))
            if len(pending) >= chunk:
                opened += self.open_many(pending)
                pending = []
        opened += self.open_many(pending)
        if seq != last:
            with self.engine.begin() as conn:
                if conn.execute(POSITIONS.update().where(POSITIONS.c.source == source)
                                .values(seq=seq, updated_at=now_utc())).rowcount == 0:
                    conn.execute(POSITIONS.insert().values(source=source, seq=seq, updated_at=now_utc()))
        return opened

    # --- reading ---------------------------------------------------------------------------------
    def get(self, case_id: str) -> Case:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(CASES).where(CASES.c.case_id == case_id)).mappings().first()
        if row is None:
            raise CaseNotFound(case_id)
        return Case.of(row)

    def queue(self, deciders: Iterable[str], *, statuses: Sequence[str] = ("open", "claimed"), limit: int = 50,
              after: tuple[dt.datetime, str] | None = None) -> list[Case]:
        """A page of cases, oldest decision first; ``after``: the last (decided_at, case_id) of the
        previous page."""
        deciders = list(deciders)
        if not 1 <= limit <= 500:
            raise CaseError("a page holds 1 to 500 cases")
        if unknown := set(statuses) - set(STATUSES):
            raise CaseError(f"unknown status {sorted(unknown)}")
        wanted = set(statuses)
        if wanted == {"open", "claimed"}:  # spelled as the partial index's predicate, so the planner uses it
            status = CASES.c.status != "resolved"
        elif len(wanted) == 1:
            status = CASES.c.status == statuses[0]
        else:
            status = CASES.c.status.in_(sorted(wanted))
        query = (sa.select(CASES).where(CASES.c.decider.in_(deciders), status)
                 .order_by(CASES.c.decided_at, CASES.c.case_id).limit(limit))
        if after is not None:
            at, case_id = after
            # a row comparison: both engines walk the index from the cursor
            query = query.where(sa.tuple_(CASES.c.decided_at, CASES.c.case_id) > sa.tuple_(
                sa.literal(at, CASES.c.decided_at.type), sa.literal(case_id, CASES.c.case_id.type)))
        with self.engine.connect() as conn:
            return [Case.of(r) for r in conn.execute(query).mappings()]

    def resolved_since(self, since: dt.datetime | None = None, *, after: tuple[dt.datetime, str] | None = None,
                       limit: int = 5000) -> list[Case]:
        """Resolved cases of every decider, in the order of their resolution: those resolved at or after
        ``since``, after the (resolved_at, case_id) ``after`` of the previous page."""
        query = (sa.select(CASES).where(CASES.c.status == "resolved")
                 .order_by(CASES.c.resolved_at, CASES.c.case_id).limit(limit))
        if since is not None:
            query = query.where(CASES.c.resolved_at >= since)
        if after is not None:
            at, case_id = after
            query = query.where(sa.tuple_(CASES.c.resolved_at, CASES.c.case_id) > sa.tuple_(
                sa.literal(at, CASES.c.resolved_at.type), sa.literal(case_id, CASES.c.case_id.type)))
        with self.engine.connect() as conn:
            return [Case.of(r) for r in conn.execute(query).mappings()]

    # --- acting ----------------------------------------------------------------------------------
    def claim(self, case_id: str, reviewer: str, deciders: Iterable[str], *, at: dt.datetime | None = None,
              audit: Callable[[Case], None] | None = None) -> Case:
        """Claim an open case (or renew one's own claim, or take a lapsed one) of one of ``deciders``.
        ``audit(case)``: called with the claimed case inside the transaction (it appends the action to
        the decision log); if it raises, the claim is rolled back."""
        reviewer = _reviewer(reviewer)
        at = at or now_utc()
        lapsed = at - dt.timedelta(seconds=self.claim_ttl_s)
        deciders = list(deciders)
        statement = (CASES.update()
                     .where(CASES.c.case_id == case_id, CASES.c.decider.in_(deciders),
                            sa.or_(CASES.c.status == "open",
                                   sa.and_(CASES.c.status == "claimed",
                                           sa.or_(CASES.c.claimed_by == reviewer, CASES.c.claimed_at < lapsed))))
                     .values(status="claimed", claimed_by=reviewer, claimed_at=at, revision=CASES.c.revision + 1))
        done = self._act(statement, case_id, audit)
        if done is not None:
            return done
        case = self._visible(case_id, deciders)
        if case.status == "resolved":
            raise CaseConflict(f"case {case_id} is resolved")
        raise CaseConflict(f"case {case_id} is claimed by {case.claimed_by} since {case.claimed_at:%Y-%m-%d %H:%M} UTC")

    def resolve(self, case_id: str, reviewer: str, deciders: Iterable[str], review, *, outcome: str,
                comment: str = "", override: str | None = None, reason: str | None = None,
                policy_actions: Sequence[str] = (), at: dt.datetime | None = None,
                audit: Callable[[Case], None] | None = None) -> Case:
        """Record the outcome of a case this reviewer holds; ``review`` is the decider's ReviewDecl,
        ``policy_actions`` its policy's actions (what an override may be); ``audit`` as for
        :meth:`claim`."""
        reviewer = _reviewer(reviewer)
        deciders = list(deciders)
        decl = review.outcomes.get(outcome)
        if decl is None:
            raise CaseError(f"outcome {outcome!r} is not one of {sorted(review.outcomes)}")
        comment = (comment or "").strip()
        reason = (reason or "").strip() or None
        if len(comment) > MAX_COMMENT or (reason and len(reason) > MAX_COMMENT):
            raise CaseError(f"a comment or reason is at most {MAX_COMMENT} characters")
        if decl.reason_required and not reason:
            raise CaseError(f"outcome {outcome!r} needs a reason")
        case = self._visible(case_id, deciders)
        if override is not None:
            if override not in policy_actions:
                raise CaseError(f"override {override!r} is not one of the policy's actions {list(policy_actions)}")
            if override == case.decision:
                raise CaseError(f"the decision already is {override!r}: nothing to override")
            if not comment:
                raise CaseError("an override needs a comment (why the decision is changed)")
        at = at or now_utc()
        statement = (CASES.update()
                     .where(CASES.c.case_id == case_id, CASES.c.status == "claimed", CASES.c.claimed_by == reviewer,
                            CASES.c.revision == case.revision)
                     .values(status="resolved", resolved_by=reviewer, resolved_at=at, outcome=outcome,
                             label=decl.label, override_decision=override, reason=reason, comment=comment or None,
                             revision=CASES.c.revision + 1))
        done = self._act(statement, case_id, audit)
        if done is not None:
            return done
        case = self._visible(case_id, deciders)
        if case.status == "resolved":
            raise CaseConflict(f"case {case_id} is already resolved")
        raise CaseConflict(f"case {case_id} is not claimed by {reviewer} (claim it first)")

    def _act(self, statement, case_id: str, audit: Callable[[Case], None] | None) -> Case | None:
        """Run an analyst's conditional update, durably; the updated case (after ``audit`` recorded it,
        inside the transaction), or None when the condition did not hold."""
        with self.engine.begin() as conn:
            _durable(conn)
            if conn.execute(statement).rowcount == 1:
                return _audited(conn, case_id, audit)
        return None

    def _visible(self, case_id: str, deciders: Sequence[str]) -> Case:
        case = self.get(case_id)
        if case.decider not in deciders:  # another decider's case: as if it did not exist
            raise CaseNotFound(case_id)
        return case

    # --- health ----------------------------------------------------------------------------------
    def health(self, decider: str, *, at: dt.datetime | None = None, window_s: float = 7 * 86400) -> dict[str, Any]:
        """Queue size and age, and over the resolutions of the last ``window_s``: the override rate and
        the analysts' agreement with the model (the share of outcomes with label 1: the analyst
        confirms the suspicion that opened the case)."""
        at = at or now_utc()
        since = at - dt.timedelta(seconds=window_s)
        with self.engine.connect() as conn:
            counts = dict(conn.execute(sa.select(CASES.c.status, sa.func.count()).where(CASES.c.decider == decider)
                                       .group_by(CASES.c.status)).all())
            oldest = conn.execute(sa.select(sa.func.min(CASES.c.decided_at)).where(
                CASES.c.decider == decider, CASES.c.status.in_(["open", "claimed"]))).scalar()
            resolved, overrides, positives = conn.execute(sa.select(
                sa.func.count(), sa.func.count(CASES.c.override_decision), sa.func.coalesce(sa.func.sum(CASES.c.label), 0),
            ).where(CASES.c.decider == decider, CASES.c.status == "resolved", CASES.c.resolved_at >= since)).one()
        oldest = _aware(oldest)
        return {
            "decider": decider, "open": counts.get("open", 0), "claimed": counts.get("claimed", 0),
            "resolved_total": counts.get("resolved", 0),
            "oldest_age_s": (at - oldest).total_seconds() if oldest is not None else 0.0,
            "resolved_in_window": resolved,
            "override_rate": overrides / resolved if resolved else 0.0,
            "agreement": positives / resolved if resolved else 0.0,
        }


def _insert_ignoring(dialect: str):
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise CaseError(f"the review database is SQLite or Postgres, not {dialect}")
    return insert(CASES).on_conflict_do_nothing(index_elements=[CASES.c.case_id])


def _relaxed(conn: sa.Connection) -> None:
    """This transaction's commit does not wait for the disk (opening cases: the log is the record)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("set local synchronous_commit = off"))
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("pragma synchronous = NORMAL")


def _durable(conn: sa.Connection) -> None:
    """This transaction's commit waits for the disk (an analyst's action)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("pragma synchronous = FULL")


def _audited(conn: sa.Connection, case_id: str, audit: Callable[[Case], None] | None) -> Case:
    """The updated case, after ``audit`` recorded it (still inside the transaction: a failure rolls
    the action back, so the database never holds an action the log does not)."""
    case = Case.of(conn.execute(sa.select(CASES).where(CASES.c.case_id == case_id)).mappings().one())
    if audit is not None:
        audit(case)
    return case


def _reviewer(reviewer: str) -> str:
    reviewer = (reviewer or "").strip()
    if not reviewer or len(reviewer) > MAX_REVIEWER or any(ord(c) < 32 for c in reviewer):
        raise CaseError(f"a reviewer is named by 1 to {MAX_REVIEWER} printable characters")
    return reviewer


def case_action_record(case: Case, action: str, *, at: dt.datetime | None = None) -> dict[str, Any]:
    """The decision-log record of a case action (``kind: case_action``): who, when, what, why, and the
    decision it refers to; appended to the hash-chained log, so ``mlp audit verify`` covers it."""
    if action not in ("claim", "resolve"):
        raise ValueError(action)
    who = case.claimed_by if action == "claim" else case.resolved_by
    record = {
        "decision_id": f"{case.case_id}.{action}.{case.revision}", "kind": "case_action", "action": action,
        "time": (at or now_utc()).isoformat(), "case_id": case.case_id, "refers_to": case.case_id,
        "decider": case.decider, "reviewer": who, "case_revision": case.revision,
    }
    if action == "resolve":
        record.update(outcome=case.outcome, label=case.label, override_decision=case.override_decision,
                      served_decision=case.decision, reason=case.reason, comment=case.comment)
    return record
