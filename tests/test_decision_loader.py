"""Loading the decision log into the warehouse for real: records written by the scoring service itself
(a registered LightGBM model, shadow scoring) and by DecisionLog.append, a DuckDB warehouse,
incremental loads, restarts, several worker directories, a write in progress and a tampered record."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import uuid
from pathlib import Path

import duckdb
import pytest
from test_serving_api import register

from mlp_platform.batch.decisions import DecisionChainBroken, default_log_root, load_decisions
from mlp_platform.features.spec import default_spec
from mlp_platform.runtime.loading import registry_loader
from mlp_platform.serving.api_models import TransactionIn
from mlp_platform.serving.decision_log import DecisionLog, canonical_json, segment_name
from mlp_platform.serving.metrics import ServiceMetrics
from mlp_platform.serving.routing import RoutingFile, RoutingState
from mlp_platform.serving.service import ModelPool, ScoringService, ServingConfig
from mlp_platform.serving.store_url import store_from_url
from tests.servinglib import config_from_env

NAMES = default_spec().feature_names


def _query(settings, sql: str, params=None) -> list[tuple]:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def decision_record(i: int, worker: str = "w", day: dt.date = dt.date(2026, 3, 1)) -> dict:
    """A record shaped like the ones ScoringService.score logs."""
    features = {name: float((i * 7 + j) % 11) for j, name in enumerate(NAMES)}
    features["customer_seconds_since_previous"] = None if i % 3 == 0 else 120.5
    return {
        "decision_id": f"{worker}-{i:05d}-{uuid.uuid4().hex[:8]}", "kind": "decision",
        "time": (dt.datetime(2026, 3, 2, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)).isoformat(),
        "transaction_id": f"T{worker}{i:06d}",
        "event_time": (dt.datetime.combine(day, dt.time(12)) + dt.timedelta(seconds=i)).isoformat(),
        "customer_hash": "c" * 32, "merchant_hash": "m" * 32, "device_hash": None,
        "request": {"amount": 12.5, "currency": "EUR", "channel": "ecom", "country": "DE", "merchant_category": "5411"},
        "arm": "champion", "model_version": "3", "model_sha256": "a" * 64, "routing_revision": 4,
        "features": features, "fallbacks": ["merchant_fraud_rate_1d"] if i % 5 == 0 else [],
        "defaults_applied": [], "degraded": i % 10 == 0, "score": i / 1000.0,
        "thresholds": {"review": 0.3, "decline": 0.9}, "policy_version": "p1/r=0.3/d=0.9",
        "decision": "approve", "reasons": [],
    }


@pytest.fixture
def settings(platform_env):
    s = platform_env()
    s.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    return s


def test_records_of_the_real_service_are_loaded(settings, tmp_path):
    v1, v2 = register(settings, 1), register(settings, 2)
    config = ServingConfig(feature_store_url="memory://", decision_log_dir=tmp_path / "decisions",
                           routing_path=tmp_path / "routing.json", api_keys=("k",), admin_keys=("a",),
                           id_hash_key=b"k" * 32, reload_interval_s=3600)
    routing = RoutingFile(config.routing_path)
    routing.write(RoutingState(champion=v1, shadows=(v2,), updated_by="test"))
    metrics = ServiceMetrics()
    pool = ModelPool(registry_loader(settings), routing, metrics)
    assert pool.refresh()
    service = ScoringService(config, store_from_url("memory://"), DecisionLog(config.decision_log_dir), pool,
                             metrics)

    async def run() -> list:
        out = []
        for i in range(25):
            txn = {"transaction_id": f"T{i:08d}", "customer_id": f"C{i % 4}", "merchant_id": f"M{i % 3}",
                   "event_time": (dt.datetime(2026, 3, 1, 23, 59, 50) + dt.timedelta(seconds=i)).isoformat(),
                   "amount": 20.0 + 37 * i, "currency": "EUR", "channel": "ecom", "country": "DE",
                   "merchant_category": "5411", "device_id": "D1"}
            out.append(await service.score(TransactionIn.model_validate(txn)))
        service.flush_shadows()
        await service.close()
        return out

    served = asyncio.run(run())
    result = load_decisions(settings, config.decision_log_dir)
    assert result.decisions == 25 and result.shadow_scores == 25
    assert result.days == ["2026-03-01", "2026-03-02"]  # event times cross midnight
    rows = _query(settings, "select decision_id, transaction_id, day, score, decision, model_version, arm, "
                            "degraded, fallbacks, seq from monitoring.decisions order by seq")
    assert [r[0] for r in rows] == [s.decision_id for s in served]
    assert [r[3] for r in rows] == [s.score for s in served]
    assert [r[4] for r in rows] == [s.decision for s in served]
    assert {r[5] for r in rows} == {v1} and {r[6] for r in rows} == {"champion"}
    assert rows[0][2] == dt.date(2026, 3, 1) and rows[-1][2] == dt.date(2026, 3, 2)
    assert [r[8] for r in rows] == [",".join(s.fallbacks) for s in served]
    # the served features, one column per spec feature, equal the logged ones
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        cols = [c[0] for c in con.execute("describe monitoring.served_features").fetchall()]
        assert cols == ["decision_id", "transaction_id", "day", *NAMES]
        frame = con.sql("select * from monitoring.served_features order by transaction_id").pl()
    with DecisionLog(config.decision_log_dir) as log:
        for row in frame.iter_rows(named=True):
            logged = log.get(row["decision_id"])["features"]
            assert {n: row[n] for n in NAMES} == {n: (None if logged[n] is None else float(logged[n])) for n in NAMES}
    shadows = _query(settings, "select s.of_decision, s.model_version, s.served_decision, s.day, d.day, d.decision "
                               "from monitoring.shadow_scores s join monitoring.decisions d "
                               "on d.decision_id = s.of_decision")
    assert len(shadows) == 25
    assert all(s[1] == v2 and s[2] == s[5] and s[3] == s[4] for s in shadows)
    # loading again adds nothing
    again = load_decisions(settings, config.decision_log_dir)
    assert again.decisions == again.shadow_scores == 0
    assert _query(settings, "select count(*) from monitoring.decisions")[0][0] == 25


def test_incremental_loads_restarts_and_two_workers(settings, tmp_path):
    root = tmp_path / "decisions"
    with DecisionLog(root / "worker-1", segment_max_bytes=6000, fsync=False) as log:
        for i in range(10):
            log.append(decision_record(i, "a"))
    with DecisionLog(root / "worker-2", fsync=False) as log:
        for i in range(4):
            log.append(decision_record(i, "b", day=dt.date(2026, 3, 5)))
    first = load_decisions(settings, root)
    assert first.decisions == 14 and len(first.directories) == 2
    assert first.days == ["2026-03-01", "2026-03-05"]
    assert load_decisions(settings, root).decisions == 0
    # worker-1 restarts (new writer on the same chain, small segments: several new segment files)
    with DecisionLog(root / "worker-1", segment_max_bytes=6000, fsync=False) as log:
        for i in range(10, 25):
            log.append(decision_record(i, "a"))
    assert len(list((root / "worker-1").glob("decisions-*.jsonl"))) > 3
    second = load_decisions(settings, root)
    assert second.decisions == 15
    by_dir = {Path(k).name: v for k, v in second.directories.items()}
    assert by_dir["worker-1"]["decisions"] == 15 and by_dir["worker-2"]["decisions"] == 0
    assert by_dir["worker-1"]["last_seq"] == 24
    rows = _query(settings, "select log_dir, seq, degraded, fallbacks from monitoring.decisions order by log_dir, seq")
    assert [r[1] for r in rows] == list(range(25)) + list(range(4))
    assert rows[0][2] is True and rows[0][3] == "merchant_fraud_rate_1d" and rows[1][3] == ""
    nulls = _query(settings, "select count(*) from monitoring.served_features where customer_seconds_since_previous "
                             "is null")[0][0]
    assert nulls == len([i for i in range(25) if i % 3 == 0]) + len([i for i in range(4) if i % 3 == 0])
    state = _query(settings, "select count(*), sum(last_seq) from monitoring.decision_log_state")[0]
    assert state == (2, 24 + 3)
    # the same logs under another path (a moved data directory): verified again, nothing duplicated
    root.rename(tmp_path / "moved")
    moved = load_decisions(settings, tmp_path / "moved")
    assert moved.decisions == 0 and sum(d["records_read"] for d in moved.directories.values()) == 29
    assert _query(settings, "select count(*), count(distinct decision_id) from monitoring.decisions")[0] == (29, 29)
    assert _query(settings, "select count(*) from monitoring.served_features")[0][0] == 29


def _next_line(directory: Path, record: dict) -> bytes:
    """The exact line the log writer would append next (to simulate a write in progress)."""
    with DecisionLog(directory, fsync=False) as log:
        seq, prev = log.next_seq, log.head_hash
    body = canonical_json({**record, "seq": seq, "prev_hash": prev})
    h = hashlib.sha256(body.encode()).hexdigest()
    return f'{body[:-1]},"hash":"{h}"}}\n'.encode()


def test_a_write_in_progress_is_left_for_the_next_load(settings, tmp_path):
    directory = tmp_path / "decisions"
    with DecisionLog(directory, fsync=False) as log:
        for i in range(3):
            log.append(decision_record(i))
    line = _next_line(directory, decision_record(3))
    segment = directory / segment_name(1)
    with open(segment, "ab") as fh:
        fh.write(line[: len(line) // 2])  # the writer is half-way through
    first = load_decisions(settings, directory)
    assert first.decisions == 3 and first.pending_bytes == len(line) // 2
    with open(segment, "ab") as fh:
        fh.write(line[len(line) // 2:])
    second = load_decisions(settings, directory)
    assert second.decisions == 1 and second.pending_bytes == 0
    assert _query(settings, "select max(seq), count(*) from monitoring.decisions")[0] == (3, 4)
    with DecisionLog(directory, fsync=False) as log:  # the completed line continues the chain for the writer too
        log.append(decision_record(4))
    assert load_decisions(settings, directory).decisions == 1


def test_zero_filled_space_after_the_records_is_not_a_pending_write(settings, tmp_path):
    directory = tmp_path / "decisions"
    with DecisionLog(directory, zero_ahead_bytes=8192) as log:  # live: the writer has filled ahead
        for i in range(3):
            log.append(decision_record(i))
        segment = directory / segment_name(1)
        assert segment.stat().st_size > segment.read_bytes().rstrip(b"\x00").__len__()
        live = load_decisions(settings, directory)
        assert live.decisions == 3 and live.pending_bytes == 0
    line = _next_line(directory, decision_record(3))
    end = segment.stat().st_size
    with open(segment, "r+b") as fh:  # as a kill -9 leaves it: half a record written into the zeros
        fh.seek(end)
        fh.write(line[: len(line) // 2] + bytes(4096))
    first = load_decisions(settings, directory)
    assert first.decisions == 0 and first.pending_bytes == len(line) // 2
    with open(segment, "r+b") as fh:
        fh.seek(end + len(line) // 2)
        fh.write(line[len(line) // 2:])
    second = load_decisions(settings, directory)
    assert second.decisions == 1 and second.pending_bytes == 0


def test_a_tampered_record_stops_the_load_with_a_clear_error(settings, tmp_path):
    root = tmp_path / "decisions"
    with DecisionLog(root / "worker-1", fsync=False) as log:
        for i in range(4):
            log.append(decision_record(i, "a"))
    assert load_decisions(settings, root).decisions == 4
    with DecisionLog(root / "worker-1", fsync=False) as log:
        for i in range(4, 12):
            log.append(decision_record(i, "a"))
    with DecisionLog(root / "worker-2", fsync=False) as log:
        for i in range(3):
            log.append(decision_record(i, "b"))
    segment = root / "worker-1" / segment_name(1)
    lines = segment.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[7])
    assert record["seq"] == 7
    lines[7] = lines[7].replace(b'"decision":"approve"', b'"decision":"decline"')  # an edit
    segment.write_bytes(b"".join(lines))
    with pytest.raises(DecisionChainBroken) as err:
        load_decisions(settings, root)
    message = str(err.value)
    assert "worker-1" in message and segment_name(1) in message and "seq 7" in message and "modified" in message
    # the verified records before the break are loaded, nothing after it; the other worker is loaded
    rows = _query(settings, "select log_dir, max(seq), count(*) from monitoring.decisions group by log_dir "
                            "order by log_dir")
    assert [(Path(r[0]).name, r[1], r[2]) for r in rows] == [("worker-1", 6, 7), ("worker-2", 2, 3)]
    assert _query(settings, "select count(*) from monitoring.decisions where decision = 'decline'")[0][0] == 0
    with pytest.raises(DecisionChainBroken, match="seq 7"):  # and it stays refused
        load_decisions(settings, root)
    assert _query(settings, "select count(*) from monitoring.decisions")[0][0] == 10


def test_a_missing_root_loads_nothing_and_the_default_root_is_the_services(settings, tmp_path, monkeypatch):
    result = load_decisions(settings, tmp_path / "not-yet")
    assert result.decisions == 0 and result.directories == {}
    monkeypatch.delenv("MLP_DECISION_LOG_DIR", raising=False)
    monkeypatch.delenv("MLP_SERVING_WORKERS", raising=False)
    assert default_log_root(settings) == config_from_env(settings).decision_log_dir
