"""Review cases on both engines (SQLite, the embedded default; Postgres through pgserver): one schema
and migrations, idempotent opening, keyset pages, claims that lapse, resolutions the declaration
allows, overrides that need a comment, queue health; and the case-action records in the hash chain."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from mlp_platform.deciders.declaration import load_deciders
from mlp_platform.review.cases import (
    CaseConflict,
    CaseError,
    CaseNotFound,
    CaseStore,
    case_action_record,
    case_from_decision,
    engine_for,
    migrate,
)
from mlp_platform.serving.decision_log import DecisionLog, verify_log
from mlp_platform.settings import PROJECT_ROOT

DECIDERS = load_deciders(PROJECT_ROOT / "deciders")
FRAUD, CREDIT = DECIDERS["fraud"], DECIDERS["credit"]
T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        server.psql("create database review;")
        socket_dir = server.get_uri().split("host=")[1]
        yield f"postgresql+psycopg2://postgres@/review?host={socket_dir}"
    finally:
        server.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'review' / 'cases.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        engine = sa.create_engine(url)
        with engine.begin() as conn:  # each test on an empty schema
            conn.execute(sa.text("drop table if exists review_cases, review_schema_migrations, review_log_positions"))
        engine.dispose()
    s = CaseStore.from_url(url)
    yield s
    s.engine.dispose()


def decision(i: int, *, decider=FRAUD, action="review", minutes: int | None = None) -> dict:
    time = T0 + dt.timedelta(minutes=i if minutes is None else minutes)
    key = "transaction_id" if decider is FRAUD else "application_id"
    return {"decision_id": f"d-{decider.name}-{i:06d}", "kind": "decision", "time": time.isoformat(), key: f"e{i}",
            "decision": action, "score": 0.5 + i * 1e-6, "model_version": "3",
            "features": {"amount": 12.5, "note": "<script>alert(1)</script>"},
            "reasons": [{"code": "R1", "feature": "amount"}], "thresholds": {"review": 0.3}}


def test_migrations_apply_once(store):
    assert migrate(store.engine) == []  # from_url applied them; a second start applies nothing
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("select version from review_schema_migrations")).scalars().all() == [1, 2]


def test_opening_is_idempotent_and_keeps_the_evidence(store):
    rows = [case_from_decision(decision(i), "fraud") for i in range(5)]
    assert store.open_many(rows) == 5
    assert store.open_many(rows + rows[:2]) == 0  # replayed (a restart re-reading the log)
    case = store.get("d-fraud-000003")
    assert case.status == "open" and case.entity_id == "e3" and case.decision == "review"
    assert case.evidence["features"]["note"] == "<script>alert(1)</script>"  # kept as data, escaped when shown
    assert case.decided_at == T0 + dt.timedelta(minutes=3)


def test_queue_pages_by_keyset_oldest_first_with_ties(store):
    rows = [case_from_decision(decision(i, minutes=i // 3), "fraud") for i in range(30)]  # three per minute
    rows += [case_from_decision(decision(i, decider=CREDIT, action="refer"), "credit") for i in range(4)]
    store.open_many(rows)
    seen, after = [], None
    while page := store.queue(["fraud"], limit=7, after=after):
        seen.extend(c.case_id for c in page)
        after = (page[-1].decided_at, page[-1].case_id)
    assert seen == sorted(seen, key=lambda cid: (int(cid[-6:]) // 3, cid)) and len(seen) == len(set(seen)) == 30
    assert {c.decider for c in store.queue(["credit"], limit=50)} == {"credit"}
    with pytest.raises(CaseError):
        store.queue(["fraud"], limit=0)


def test_claims_conflict_lapse_and_stay_within_the_reviewers_deciders(store):
    store.open_many([case_from_decision(decision(1), "fraud"), case_from_decision(decision(1, decider=CREDIT,
                                                                                           action="refer"), "credit")])
    claimed = store.claim("d-fraud-000001", "ann", ["fraud"], at=T0)
    assert claimed.status == "claimed" and claimed.claimed_by == "ann" and claimed.revision == 1
    assert store.claim("d-fraud-000001", "ann", ["fraud"], at=T0).revision == 2  # renewing one's own claim
    with pytest.raises(CaseConflict, match="claimed by ann"):
        store.claim("d-fraud-000001", "bob", ["fraud"], at=T0 + dt.timedelta(minutes=5))
    taken = store.claim("d-fraud-000001", "bob", ["fraud"], at=T0 + dt.timedelta(minutes=31))  # ann's lapsed
    assert taken.claimed_by == "bob"
    with pytest.raises(CaseNotFound):  # a fraud reviewer cannot see, let alone claim, a credit case
        store.claim("d-credit-000001", "bob", ["fraud"])
    with pytest.raises(CaseError):
        store.claim("d-fraud-000001", "", ["fraud"])


def test_only_one_of_two_racing_claims_wins(store):
    store.open_many([case_from_decision(decision(7), "fraud")])
    results: list[str] = []

    def attempt(who: str) -> None:
        try:
            results.append(store.claim("d-fraud-000007", who, ["fraud"]).claimed_by)
        except CaseConflict:
            results.append("refused")

    threads = [threading.Thread(target=attempt, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count("refused") == 3, results


def test_resolutions_follow_the_declaration(store):
    store.open_many([case_from_decision(decision(i), "fraud") for i in range(3)]
                    + [case_from_decision(decision(1, decider=CREDIT, action="refer"), "credit")])
    actions = FRAUD.policy.actions
    with pytest.raises(CaseConflict, match="claim it first"):
        store.resolve("d-fraud-000000", "ann", ["fraud"], FRAUD.review, outcome="fraud", policy_actions=actions)
    store.claim("d-fraud-000000", "ann", ["fraud"])
    with pytest.raises(CaseError, match="not one of"):
        store.resolve("d-fraud-000000", "ann", ["fraud"], FRAUD.review, outcome="maybe", policy_actions=actions)
    with pytest.raises(CaseError, match="needs a comment"):
        store.resolve("d-fraud-000000", "ann", ["fraud"], FRAUD.review, outcome="not_fraud", override="approve",
                      policy_actions=actions)
    with pytest.raises(CaseError, match="nothing to override"):
        store.resolve("d-fraud-000000", "ann", ["fraud"], FRAUD.review, outcome="fraud", override="review",
                      comment="x", policy_actions=actions)
    with pytest.raises(CaseConflict):  # bob does not hold it
        store.resolve("d-fraud-000000", "bob", ["fraud"], FRAUD.review, outcome="fraud", policy_actions=actions)
    done = store.resolve("d-fraud-000000", "ann", ["fraud"], FRAUD.review, outcome="not_fraud", override="approve",
                         comment="card holder confirmed the purchase by phone", policy_actions=actions)
    assert (done.status, done.label, done.override_decision, done.resolved_by) == ("resolved", 0, "approve", "ann")
    with pytest.raises(CaseConflict, match="resolved"):
        store.claim("d-fraud-000000", "bob", ["fraud"])
    store.claim("d-fraud-000001", "ann", ["fraud"])
    store.resolve("d-fraud-000001", "ann", ["fraud"], FRAUD.review, outcome="fraud", policy_actions=actions)
    store.claim("d-credit-000001", "uma", ["credit"])
    with pytest.raises(CaseError, match="needs a reason"):
        store.resolve("d-credit-000001", "uma", ["credit"], CREDIT.review, outcome="decline",
                      policy_actions=CREDIT.policy.actions)
    store.resolve("d-credit-000001", "uma", ["credit"], CREDIT.review, outcome="decline",
                  reason="income could not be verified", policy_actions=CREDIT.policy.actions)
    health = store.health("fraud", at=T0 + dt.timedelta(hours=2))
    assert health["open"] == 1 and health["resolved_in_window"] == 2
    assert health["override_rate"] == 0.5 and health["agreement"] == 0.5
    assert health["oldest_age_s"] == pytest.approx(2 * 3600 - 2 * 60)


def test_case_actions_enter_the_hash_chain(store, tmp_path):
    store.open_many([case_from_decision(decision(4), "fraud")])
    claimed = store.claim("d-fraud-000004", "ann", ["fraud"])
    done = store.resolve("d-fraud-000004", "ann", ["fraud"], FRAUD.review, outcome="fraud",
                         policy_actions=FRAUD.policy.actions)
    with DecisionLog(tmp_path / "log") as log:
        log.append(decision(4))
        log.append(case_action_record(claimed, "claim"))
        log.append(case_action_record(done, "resolve"))
        records = list(log.iter_records())
    assert [r["kind"] for r in records] == ["decision", "case_action", "case_action"]
    assert records[2]["refers_to"] == records[0]["decision_id"] and records[2]["outcome"] == "fraud"
    assert verify_log(tmp_path / "log").ok


def test_the_sqlite_default_lives_under_the_data_directory(tmp_path):
    engine = engine_for(f"sqlite:///{tmp_path / 'deep' / 'dir' / 'cases.db'}")
    assert migrate(engine) == [1, 2]
    assert (tmp_path / "deep" / "dir" / "cases.db").exists()


def test_a_database_of_an_earlier_release_gets_only_the_newer_migrations(tmp_path):
    """A review database at migration 1 (the first release) gets migration 2 alone, its data kept."""
    from mlp_platform.review.cases import MIGRATIONS, MIGRATIONS_TABLE, now_utc

    engine = engine_for(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        MIGRATIONS_TABLE.create(conn)
        version, description, apply = MIGRATIONS[0]
        apply(conn)
        conn.execute(MIGRATIONS_TABLE.insert().values(version=version, description=description, applied_at=now_utc()))
    CaseStore(engine).open_many([case_from_decision(decision(1), "fraud")])
    assert migrate(engine) == [2]
    assert "review_cases_resolved" in {i["name"] for i in sa.inspect(engine).get_indexes("review_cases")}
    assert CaseStore(engine).get("d-fraud-000001").status == "open"


def test_the_log_is_read_from_where_the_last_reconcile_stopped(tmp_path):
    """iter_records_from: from a cursor, only what was logged since (across segment rolls); a
    reconcile every minute then costs the new records, not the whole log."""
    with DecisionLog(tmp_path / "log", segment_max_bytes=4096) as log:
        log.append_many([decision(i) for i in range(30)])
        first = list(log.iter_records_from(None))
        assert [r["seq"] for r, _ in first] == list(range(30))
        cursor = first[-1][1]
        assert list(log.iter_records_from(cursor)) == []
        log.append_many([decision(i) for i in range(30, 45)])
        assert [r["seq"] for r, _ in log.iter_records_from(cursor)] == list(range(30, 45))
        assert [r["seq"] for r, _ in log.iter_records_from(first[9][1])] == list(range(10, 45))
        assert len({c[0] for _, c in log.iter_records_from(None)}) > 1  # it did roll segments
