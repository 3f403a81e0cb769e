"""The decision log: hash chain, segment rotation, recovery of a torn tail, group commit, kill -9 durability.

Real files and real processes throughout (no mocks).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from mlp_platform.serving.decision_log import (
    GENESIS,
    DecisionLog,
    DecisionLogCorrupt,
    DecisionLogError,
    DecisionLogLocked,
    DuplicateDecisionError,
    canonical_json,
    canonical_json_bytes,
    segment_name,
    verify_log,
)
from mlp_platform.settings import PROJECT_ROOT


def _record(i: int, **extra) -> dict:
    return {"decision_id": f"d-{i:05d}", "model_version": "v3", "score": round(i / 97, 6),
            "decision": "review" if i % 5 == 0 else "approve",
            "features": {"amount": 10.0 + i, "mcc": "5411", "velocity_1h": i % 4}, **extra}


def _fill(directory: Path, n: int, start: int = 0, **kwargs) -> list:
    with DecisionLog(directory, **kwargs) as log:
        return [log.append(_record(i)) for i in range(start, start + n)]


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("decisions-*.jsonl"))


def _independent_hash(record: dict) -> str:
    """The documented definition, re-implemented: SHA-256 of canonical JSON without 'hash'."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _middle(directory: Path) -> tuple[Path, int, int]:
    """(segment, 0-based line index, seq) of a record with neighbours in its own segment, in a segment that
    is neither the first nor the last."""
    path = _segments(directory)[2]
    lines = path.read_bytes().splitlines()
    assert len(lines) >= 3
    return path, 1, json.loads(lines[1])["seq"]


def _rewrite_lines(path: Path, edit) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(edit(lines)))


# --------------------------------------------------------------------------------------------- basics


def test_append_get_iter_round_trip(tmp_path: Path):
    when = dt.datetime(2025, 3, 1, 12, 30, tzinfo=dt.UTC)
    with DecisionLog(tmp_path) as log:
        logged = [log.append(_record(i, decided_at=when)) for i in range(25)]
        assert [r.seq for r in logged] == list(range(25))
        assert len(log) == 25 and log.next_seq == 25 and log.head_hash == logged[-1].hash
        for i, r in enumerate(logged):
            got = log.get(r.decision_id)
            assert got is not None
            assert {k: got[k] for k in _record(i)} == _record(i)
            assert got["decided_at"] == "2025-03-01T12:30:00+00:00"
            assert got["seq"] == r.seq == i and got["hash"] == r.hash == _independent_hash(got)
            assert got["prev_hash"] == (logged[i - 1].hash if i else GENESIS)
            assert r.segment == segment_name(1)
        assert log.get("no-such-decision") is None
        assert list(log.iter_records()) == [log.get(r.decision_id) for r in logged]
    report = verify_log(tmp_path)
    assert report.ok and report.records == 25 and report.head_seq == 24 and report.head_hash == logged[-1].hash


def test_seq_monotonic_across_segment_rotation(tmp_path: Path):
    logged = _fill(tmp_path, 60, segment_max_bytes=700)
    segments = _segments(tmp_path)
    assert len(segments) >= 5
    assert [p.name for p in segments] == [segment_name(i) for i in range(1, len(segments) + 1)]
    assert all(p.stat().st_size <= 700 for p in segments)
    with DecisionLog(tmp_path, segment_max_bytes=700) as log:
        records = list(log.iter_records())
        assert [r["seq"] for r in records] == list(range(60))
        for r in logged:  # the segment each append reported is where the record is
            lines = (tmp_path / r.segment).read_bytes()[r.offset:].split(b"\n", 1)[0]
            assert json.loads(lines)["decision_id"] == r.decision_id
    # the chain crosses segment boundaries: first record of each segment links to the previous one's last
    for prev_seg, seg in zip(segments, segments[1:], strict=False):
        last = json.loads(prev_seg.read_bytes().splitlines()[-1])
        first = json.loads(seg.read_bytes().splitlines()[0])
        assert first["seq"] == last["seq"] + 1 and first["prev_hash"] == last["hash"]
    assert verify_log(tmp_path).ok


def test_reopen_continues_chain_and_index(tmp_path: Path):
    first = _fill(tmp_path, 30, segment_max_bytes=900)
    with DecisionLog(tmp_path, segment_max_bytes=900) as log:
        assert log.next_seq == 30 and log.head_hash == first[-1].hash and log.recovered_tail_bytes == 0
        got = log.get(first[3].decision_id)  # written before the restart
        assert got is not None and got["seq"] == 3 and got["hash"] == first[3].hash
        more = [log.append(_record(i)) for i in range(30, 40)]
    assert [r.seq for r in more] == list(range(30, 40))
    with DecisionLog(tmp_path, segment_max_bytes=900) as log:
        assert log.get(more[0].decision_id)["prev_hash"] == first[-1].hash
        assert len(log) == 40
    report = verify_log(tmp_path)
    assert report.ok and report.records == 40 and report.head_hash == more[-1].hash


def test_rejected_records_are_not_logged_and_the_log_carries_on(tmp_path: Path):
    with DecisionLog(tmp_path) as log:
        log.append(_record(0))
        with pytest.raises(ValueError, match="decision_id"):
            log.append({"score": 0.5})
        with pytest.raises(ValueError, match="set by the decision log"):
            log.append({"decision_id": "x", "seq": 7})
        with pytest.raises(DuplicateDecisionError):
            log.append(_record(0))
        with pytest.raises(ValueError):  # NaN is not JSON
            log.append({"decision_id": "nan", "score": float("nan")})
        with pytest.raises(TypeError, match="keys must be str"):
            log.append({"decision_id": "intkey", "features": {1: "a"}})
        with pytest.raises(TypeError):
            log.append({"decision_id": "obj", "payload": object()})
        r = log.append({"decision_id": "np", "score": np.float32(0.25), "n": np.int64(3),
                        "vec": np.array([1.5, 2.5])})
        assert r.seq == 1  # the rejected ones took no seq
        got = log.get("np")
        assert got["score"] == 0.25 and got["n"] == 3 and got["vec"] == [1.5, 2.5]
        for missing in ("nan", "intkey", "obj"):
            assert log.get(missing) is None
    report = verify_log(tmp_path)
    assert report.ok and report.records == 2


def test_single_writer_per_directory_and_closed_log_refuses(tmp_path: Path):
    log = DecisionLog(tmp_path)
    with pytest.raises(DecisionLogLocked):
        DecisionLog(tmp_path)
    log.append(_record(1))
    log.close()
    with pytest.raises(DecisionLogError, match="closed"):
        log.append(_record(2))
    assert log.get("d-00001") is not None  # reads still work after close
    with DecisionLog(tmp_path) as again:
        assert again.next_seq == 1


# --------------------------------------------------------------------------------------------- verify_log


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    _fill(tmp_path, 40, segment_max_bytes=1200)
    assert len(_segments(tmp_path)) >= 4
    return tmp_path


def test_verify_intact(chain: Path):
    report = verify_log(chain)
    assert report.ok and report.records == 40 and report.first_broken is None
    assert report.segments == len(_segments(chain)) and report.torn_tail_bytes == 0


def test_verify_edited_field_in_middle_record(chain: Path):
    path, idx, seq = _middle(chain)

    def edit(lines):
        rec = json.loads(lines[idx])
        rec["score"] = 0.0001  # e.g. someone lowers a score after the fact
        lines[idx] = (json.dumps(rec) + "\n").encode()
        return lines

    _rewrite_lines(path, edit)
    report = verify_log(chain)
    assert not report.ok and report.records == seq
    b = report.first_broken
    assert (b.segment, b.line, b.seq) == (path.name, idx + 1, seq)
    assert "hash" in report.reason
    with pytest.raises(DecisionLogCorrupt) as err:  # the writer refuses to extend a broken chain
        DecisionLog(chain)
    assert err.value.report.first_broken.segment == path.name
    assert err.value.report.first_broken.line == idx + 1


def test_verify_deleted_middle_line_breaks_at_the_next(chain: Path):
    path, idx, seq = _middle(chain)
    _rewrite_lines(path, lambda lines: lines[:idx] + lines[idx + 1:])
    report = verify_log(chain)
    assert not report.ok and report.records == seq
    b = report.first_broken
    assert (b.segment, b.line, b.seq, b.expected_seq) == (path.name, idx + 1, seq + 1, seq)
    with pytest.raises(DecisionLogCorrupt):
        DecisionLog(chain)


def test_verify_deleted_first_line_of_a_segment(chain: Path):
    second = _segments(chain)[1]
    first_seq = json.loads(second.read_bytes().splitlines()[0])["seq"]
    _rewrite_lines(second, lambda lines: lines[1:])
    b = verify_log(chain).first_broken
    assert b is not None and (b.segment, b.line, b.seq) == (second.name, 1, first_seq + 1)


def test_verify_removed_middle_segment(chain: Path):
    removed = _segments(chain)[1]
    removed.unlink()
    report = verify_log(chain)
    following = _segments(chain)[1]
    assert not report.ok and report.first_broken.segment == following.name and report.first_broken.line == 1
    assert "missing" in report.reason


def test_verify_reordered_records(chain: Path):
    path, idx, seq = _middle(chain)

    def swap(lines):
        lines[idx], lines[idx + 1] = lines[idx + 1], lines[idx]
        return lines

    _rewrite_lines(path, swap)
    report = verify_log(chain)
    assert not report.ok
    assert (report.first_broken.segment, report.first_broken.line, report.first_broken.seq) == (
        path.name, idx + 1, seq + 1)


def test_modified_last_complete_record_is_broken_not_torn(chain: Path):
    last = _segments(chain)[-1]
    _rewrite_lines(last, lambda lines: lines[:-1] + [lines[-1].replace(b'"v3"', b'"v4"')])
    report = verify_log(chain)
    assert not report.ok and report.first_broken.seq == 39 and report.torn_tail_bytes == 0
    with pytest.raises(DecisionLogCorrupt):
        DecisionLog(chain)


# --------------------------------------------------------------------------------------------- torn tail


@pytest.mark.parametrize("tail", [
    b'{"decision_id":"d-99999","features":{"amou',  # crash in the middle of a line
    None,  # a whole next record written except its newline
    b"\x00" * 100 + b'\n{"decision_id":"d-9","seq":10}\n{"x":1',  # lines after a hole: never acknowledged
    b'{"decision_id":"d-99999","feat' + b"\x00" * 5000,  # a write cut short inside the zero-filled space
])
def test_torn_tail_is_recovered(tmp_path: Path, tail: bytes | None):
    logged = _fill(tmp_path, 10)
    segment = _segments(tmp_path)[-1]
    if tail is None:
        body = {**_record(10), "seq": 10, "prev_hash": logged[-1].hash}
        tail = json.dumps({**body, "hash": _independent_hash(body)}).encode()
    records = segment.read_bytes()
    with open(segment, "ab") as fh:
        fh.write(tail)

    report = verify_log(tmp_path)
    assert report.ok and report.records == 10 and report.torn_tail_bytes == len(tail)
    assert report.padding_bytes == 0

    with DecisionLog(tmp_path, zero_ahead_bytes=0) as log:
        assert log.recovered_tail_bytes == len(tail)
        assert segment.read_bytes() == records  # exactly the torn bytes are gone
        assert log.next_seq == 10 and log.head_hash == logged[-1].hash
        assert all(log.get(r.decision_id) is not None for r in logged)
        new = [log.append(_record(i)) for i in range(10, 13)]
    assert [r.seq for r in new] == [10, 11, 12]
    after = verify_log(tmp_path)
    assert after.ok and after.records == 13 and after.torn_tail_bytes == 0


def test_torn_line_in_an_earlier_segment_is_corruption(tmp_path: Path):
    _fill(tmp_path, 30, segment_max_bytes=1000)
    first = _segments(tmp_path)[0]
    _rewrite_lines(first, lambda lines: lines[:-1] + [lines[-1][:-20]])  # no newline, not at the end
    report = verify_log(tmp_path)
    assert not report.ok and report.first_broken.segment == first.name
    with pytest.raises(DecisionLogCorrupt):
        DecisionLog(tmp_path)


# --------------------------------------------------------------------------------------------- concurrency


# --------------------------------------------------------------------------------------------- zero-filled space ahead


def test_commits_overwrite_the_zero_filled_space_ahead_and_a_crash_leaves_it_reusable(tmp_path: Path):
    ahead = 64 * 1024
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    with DecisionLog(live, zero_ahead_bytes=ahead) as log:
        assert log.zero_fill_count == 1  # filled when opened: the first append never waits for it
        segment = _segments(live)[-1]
        assert segment.stat().st_size == ahead and segment.read_bytes() == bytes(ahead)
        logged = [log.append(_record(i)) if i % 2 else log.append_inline(_record(i)) or log.append(_record(i))
                  for i in range(20)]
        end = logged[-1].offset + len(canonical_json(log.get("d-00019")).encode()) + 1
        data = segment.read_bytes()
        assert len(data) == ahead, "a commit appended instead of overwriting the zero-filled space"
        assert data[end:] == bytes(ahead - end) and data[:end].count(b"\n") == 20 and b"\x00" not in data[:end]
        assert log.zero_fill_count == 1  # half of the space is still free: no second fill
        report = verify_log(live)  # alongside the writer
        assert report.ok and report.records == 20 and report.torn_tail_bytes == 0 and report.padding_bytes == ahead - end
        assert "zero-filled ahead" in report.describe()
        crashed.mkdir()
        (crashed / segment.name).write_bytes(data)  # the disk as a kill -9 would leave it

    with DecisionLog(crashed, zero_ahead_bytes=ahead) as log:
        assert log.recovered_tail_bytes == 0 and log.next_seq == 20 and log.head_hash == logged[-1].hash
        again = log.append(_record(20))
        assert again.offset == end  # the first new record lands where the zeros began
        assert (crashed / segment.name).stat().st_size == ahead
    data = (crashed / segment.name).read_bytes()  # closed: the segment ends at its last record
    assert data.endswith(b"\n") and b"\x00" not in data and data.count(b"\n") == 21
    after = verify_log(crashed)
    assert after.ok and after.records == 21 and after.padding_bytes == 0


def test_the_writer_fills_again_before_the_space_runs_out_and_rotation_cuts_it_off(tmp_path: Path):
    with DecisionLog(tmp_path, zero_ahead_bytes=4096, segment_max_bytes=20_000) as log:
        for i in range(400):  # about 60 KB: several segments, each filled ahead more than once
            log.append(_record(i))
            segments = _segments(tmp_path)
            for earlier in segments[:-1]:  # only the last segment is written, so only it has zeros
                data = earlier.read_bytes()
                assert data.endswith(b"\n") and b"\x00" not in data and len(data) <= 20_000
            assert segments[-1].stat().st_size <= 20_000
        fills = log.zero_fill_count
        assert fills > 2 * len(segments)
        assert verify_log(tmp_path).ok
    report = verify_log(tmp_path)
    assert report.ok and report.records == 400 and report.padding_bytes == 0


def test_background_fills_go_a_chunk_at_a_time_until_the_space_ahead_is_full_again(tmp_path: Path):
    """Once less than half of the space ahead is left, the writer fills one chunk per turn (a decision
    arriving meanwhile waits for one chunk, not the whole fill) and goes on until the whole
    ``zero_ahead_bytes`` is ahead again, not just past half."""
    ahead, chunk = 16 * 1024, 4096
    with DecisionLog(tmp_path, zero_ahead_bytes=ahead, segment_max_bytes=1 << 20) as log:
        log.ZERO_FILL_CHUNK_BYTES = chunk
        segment = _segments(tmp_path)[-1]
        assert segment.stat().st_size == ahead and log.zero_fill_count == 1  # at open: in one go
        i = 0
        while len(segment.read_bytes().rstrip(b"\0")) <= ahead // 2:  # use up more than half
            log.append(_record(i))
            i += 1
        deadline = time.monotonic() + 10
        while True:  # the writer is idle now: it fills until the whole space is ahead again
            data = segment.read_bytes()
            used = len(data.rstrip(b"\0"))
            if len(data) - used == ahead or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert len(data) - used == ahead, f"{len(data) - used} bytes ahead, not {ahead}"
        grown = len(data) - ahead
        assert grown > chunk and log.zero_fill_count - 1 >= -(-grown // chunk)  # never more than a chunk a turn
    report = verify_log(tmp_path)
    assert report.ok and report.records == i and report.padding_bytes == 0


def test_lone_inline_commits_and_background_fills_take_turns(tmp_path: Path):
    """One appender committing inline, as the service at one connection: after a commit leaves less than
    half the zero-filled space, the idle writer fills again in the background; an inline append that
    finds it filling logs nothing and goes through the writer instead. Every record lands in zeroed
    space: the file only grows by fills."""
    with DecisionLog(tmp_path, zero_ahead_bytes=4096, segment_max_bytes=1 << 20) as log:
        segment = _segments(tmp_path)[-1]
        sizes, inline, queued = set(), 0, 0
        for i in range(300):  # about 45 kB: about 20 fills
            logged = log.append_inline(_record(i))
            if logged is None:
                queued += 1
                logged = log.append(_record(i))
            else:
                inline += 1
            assert logged.seq == i
            sizes.add(segment.stat().st_size)
            time.sleep(0.0005)  # the gap between two requests
        assert log.zero_fill_count >= 15 and inline > queued
        assert len(sizes) <= log.zero_fill_count  # no commit made the file longer: only fills did
    report = verify_log(tmp_path)
    assert report.ok and report.records == 300 and report.padding_bytes == 0


def test_a_zero_filled_tail_is_padding_not_a_torn_tail(tmp_path: Path):
    """A zero-filled end of the last segment (space filled ahead, or blocks of a never-acknowledged
    write that a power loss left as zeros) holds no record: it is reported, kept and written over."""
    logged = _fill(tmp_path, 10)
    segment = _segments(tmp_path)[-1]
    records = segment.read_bytes()
    with open(segment, "ab") as fh:
        fh.write(b"\x00" * 700)
    report = verify_log(tmp_path)
    assert report.ok and report.records == 10 and report.torn_tail_bytes == 0 and report.padding_bytes == 700
    with DecisionLog(tmp_path, zero_ahead_bytes=0) as log:
        assert log.recovered_tail_bytes == 0 and log.next_seq == 10
        assert log.append(_record(10)).offset == len(records)
        assert segment.stat().st_size == len(records) + 700  # written over, not appended after
    assert segment.read_bytes().startswith(records) and b"\x00" not in segment.read_bytes()
    assert verify_log(tmp_path).records == 11 and logged[-1].seq == 9


ZERO_FILL_FAILS = textwrap.dedent("""
    import json, resource, signal, sys
    from mlp_platform.serving.decision_log import DecisionLog

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # a disk that is full at 20 kB
    log = DecisionLog(sys.argv[1], zero_ahead_bytes=1 << 20)
    logged = [log.append({"decision_id": f"d{i}", "pad": "x" * 100}).seq for i in range(50)]
    print(json.dumps({"zero_ahead_bytes": log.zero_ahead_bytes, "fills": log.zero_fill_count, "seqs": logged}))
    log.close()
""")


def test_a_failed_zero_fill_switches_it_off_and_commits_carry_on(tmp_path: Path):
    script = tmp_path / "child.py"
    script.write_text(ZERO_FILL_FAILS)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "log")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["zero_ahead_bytes"] == 0 and out["fills"] == 0 and out["seqs"] == list(range(50))
    assert "zero-filling 1048576 bytes ahead failed" in done.stderr
    report = verify_log(tmp_path / "log")
    assert report.ok and report.records == 50 and report.padding_bytes == 0


def test_group_commit_under_16_threads(tmp_path: Path):
    threads, per_thread = 16, 200
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    with DecisionLog(tmp_path, segment_max_bytes=256 * 1024) as log:
        start = threading.Barrier(threads)

        def worker(t: int) -> None:
            try:
                start.wait()
                results[t] = [log.append({"decision_id": f"t{t}-{i}", "thread": t, "i": i, "score": i / 200})
                              for i in range(per_thread)]
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        assert not errors
        total = threads * per_thread
        seqs = sorted(r.seq for rs in results.values() for r in rs)
        assert seqs == list(range(total))
        for rs in results.values():  # each thread's appends are ordered as it made them
            assert [r.seq for r in rs] == sorted(r.seq for r in rs)
        assert all(log.get(f"t{t}-{i}") is not None for t in range(threads) for i in range(per_thread))
        assert log.appended_count == total
        # group commit: far fewer fsyncs than records
        assert log.fsync_count <= total // 4, (log.fsync_count, log.commit_count)
        assert log.commit_count <= total // 4
    report = verify_log(tmp_path)
    assert report.ok and report.records == total
    assert len(_segments(tmp_path)) >= 2  # rotation happened under concurrency too


def test_append_async_gather_500(tmp_path: Path):
    async def main(log: DecisionLog):
        results = await asyncio.gather(*(log.append_async(_record(i)) for i in range(500)))
        with pytest.raises(DuplicateDecisionError):
            await log.append_async(_record(3))
        return results

    with DecisionLog(tmp_path) as log:
        results = asyncio.run(main(log))
        assert sorted(r.seq for r in results) == list(range(500))
        assert [r.decision_id for r in results] == [f"d-{i:05d}" for i in range(500)]
        assert all(log.get(r.decision_id)["hash"] == r.hash for r in results)
        # the 500 were in flight together (the event loop was not blocked by each append)
        assert log.commit_count <= 50, log.commit_count
    report = verify_log(tmp_path)
    assert report.ok and report.records == 500


# --------------------------------------------------------------------------------------------- kill -9

CHILD = textwrap.dedent("""
    import os, sys, threading, uuid
    from pathlib import Path
    from mlp_platform.serving.decision_log import DecisionLog

    # 4 KiB zero-filled ahead: the writer fills again every few commits, between them
    log = DecisionLog(Path(sys.argv[1]), segment_max_bytes=int(sys.argv[2]), zero_ahead_bytes=4096)
    run = uuid.uuid4().hex[:8]

    def worker(t):
        i = 0
        while True:
            did = f"{run}-{t}-{i}"
            rec = {"decision_id": did, "thread": t, "i": i, "score": i / 7, "pad": "x" * (i % 64)}
            # odd threads commit in their own thread when the writer is idle (append_inline)
            r = (t % 2 and log.append_inline(rec)) or log.append(rec)
            os.write(1, f"{r.seq} {did}\\n".encode())  # only after append returned (durable)
            i += 1

    for t in range(6):
        threading.Thread(target=worker, args=(t,), daemon=True).start()
    threading.Event().wait()
""")


def _run_and_kill(script: Path, directory: Path, rng: random.Random) -> list[tuple[int, str]]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(directory), "16384"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    lines: list[bytes] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while len(lines) < 300 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()
        assert len(lines) >= 300, "child produced too few decisions"
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    acknowledged = []
    for line in lines:
        assert line.endswith(b"\n")
        seq, did = line.decode().split()
        acknowledged.append((int(seq), did))
    return acknowledged


def test_kill_9_loses_no_acknowledged_decision(tmp_path: Path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    directory = tmp_path / "log"
    rng = random.Random(20250301)
    all_acknowledged: list[tuple[int, str]] = []
    for _round in range(4):
        acknowledged = _run_and_kill(script, directory, rng)
        all_acknowledged += acknowledged
        report = verify_log(directory)  # before recovery: a torn tail is allowed, nothing else
        assert report.ok, report.describe()
        assert report.records > max(seq for seq, _ in acknowledged)
        with DecisionLog(directory, segment_max_bytes=16384) as log:
            for seq, did in all_acknowledged:
                got = log.get(did)
                assert got is not None, f"acknowledged decision {did} (seq {seq}) lost by kill -9"
                assert got["seq"] == seq
        after = verify_log(directory)
        assert after.ok and after.torn_tail_bytes == 0 and after.records == report.records
    assert len({did for _, did in all_acknowledged}) == len(all_acknowledged)
    assert len(_segments(directory)) > 1


def test_serving_path_imports_stay_light():
    code = ("import sys, mlp_platform.serving.decision_log; "
            "print(sorted(m for m in ('dagster', 'dbt', 'polars', 'pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------- canonical JSON

_TRICKY_STRINGS = ["", "plain", 'quote " inside', "back\\slash", "ctl\x00\x01\x1f\x7f\b\f\n\r\t\x0b", "caf\u00e9",
                   "\u2028\ud83d\ude00", "null", "policy-1/r=0.5", ":1e-7,", "[0.00001]", ",5.2e-8}", "0.0000x",
                   "a\\\"b:1e-6,"]


class _Colour(enum.Enum):
    RED = 1


def _random_value(rng: random.Random, depth: int):
    kind = rng.randrange(10 if depth < 4 else 6)
    if kind == 0:
        return rng.choice(_TRICKY_STRINGS + [f"s{rng.randrange(1000)}"])
    if kind == 1:  # floats across every magnitude, both signs, the edges of the 1e-4 rewrite
        x = rng.choice([rng.uniform(-1, 1) * 10.0 ** rng.randrange(-330, 309), 1e-4, 9.999999999999999e-05,
                        1e-5, 1e-6, 1e-9, 1e-10, 5e-324, 0.0, -0.0, 1e16, 1e15, 123456789012345680.0,
                        rng.random() * 1e-7])
        return -x if rng.random() < 0.3 else x
    if kind == 2:
        return rng.choice([0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**70), rng.randrange(-9999, 9999)])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.choice([float("nan"), float("inf"), -float("inf"), dt.datetime(2026, 1, 2, 3, 4, 5, 6),
                           np.float64(rng.random() * 1e-6), np.int64(7), ("tuple", 1.5e-7), _Colour.RED,
                           orjson.Fragment(b"1")]) \
            if rng.random() < 0.15 else rng.random() * 1e-5
    if kind == 5:
        return rng.choice(_TRICKY_STRINGS)
    if kind in (6, 7):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = [rng.choice(_TRICKY_STRINGS + [f"k{j}" for j in range(20)] + ["score", "Z", "a-b", "\u00e9t\u00e9"])
            for _ in range(rng.randrange(6))]
    return {k: _random_value(rng, depth + 1) for k in keys}


def _outcome(fn, record):
    try:
        return "ok", fn(record)
    except (TypeError, ValueError) as exc:
        return "error", type(exc).__name__


def test_fast_canonical_encoder_equals_the_definition_byte_for_byte():
    """The writer's orjson-based encoder gives the standard library's canonical bytes, or the same error,
    on records built to hit every difference between the two (small floats, also inside strings,
    escapes, non-ASCII, NaN, big ints, numpy and datetime values, nesting)."""
    rng = random.Random(20261125)
    checked = {"ok": 0, "error": 0}
    for _ in range(4000):
        record = {"decision_id": "d", "a": _random_value(rng, 0), "b": _random_value(rng, 0)} if rng.random() < 0.5 else \
            {"decision_id": "d", "score": rng.random() * 10.0 ** -rng.randrange(0, 12),
             "features": {f"f{j}": rng.random() * 10.0 ** -rng.randrange(0, 9) for j in range(30)},
             "note": rng.choice(_TRICKY_STRINGS)}
        want = _outcome(lambda r: canonical_json(r).encode(), record)
        got = _outcome(canonical_json_bytes, record)
        assert got == want, record
        checked[want[0]] += 1
    assert checked["ok"] > 3000 and checked["error"] > 20  # both paths were exercised
    # A service-shaped record with a tiny score takes the rewrite, not the fallback, and matches.
    record = {"decision_id": "x", "score": 5.262966690351932e-07, "policy_version": "policy-1/r=0.5/d=0.9",
              "features": {"a": 1e-05, "b": 9.9e-06, "c": 0.0001}, "prev_hash": "3e-1" * 16}
    assert canonical_json_bytes(record) == canonical_json(record).encode()
    assert b"e-07" in canonical_json_bytes(record)


def test_append_many_commits_together_and_reports_bad_records(tmp_path):
    from mlp_platform.serving.decision_log import DecisionLog, verify_log

    with DecisionLog(tmp_path / "log") as log:
        results = log.append_many([{"decision_id": "a"}, {"no_id": True}, {"decision_id": "b"}])
        assert isinstance(results[1], Exception)
        assert [r.decision_id for r in (results[0], results[2])] == ["a", "b"]
        assert log.get("a") and log.get("b") and len(log) == 2
    assert verify_log(tmp_path / "log").ok


def test_background_records_do_not_hold_a_lone_appender_in_the_group_commit_window(tmp_path):
    """With a 60 s window: after a commit of background (shadow) records a lone foreground append
    commits at once; after a commit of two foreground records the writer holds the next batch."""
    from mlp_platform.serving.decision_log import DecisionLog

    with DecisionLog(tmp_path / "log", group_commit_ms=60_000) as log:
        log.append({"decision_id": "d0"})
        log.append_many([{"decision_id": "s0", "kind": "shadow"}, {"decision_id": "s1", "kind": "shadow"}],
                        background=True)
        done = threading.Event()
        worker = threading.Thread(target=lambda: (log.append({"decision_id": "d1"}), done.set()))
        worker.start()
        assert done.wait(30), "a lone appender waited for the group-commit window"
        worker.join()
        assert log.commit_count == 3 and log.get("d1") is not None
        # two foreground appenders in one commit: the next batch waits for the window (not asserted in
        # time: the batch is still pending when we look, then close() commits it)
        log.append_many([{"decision_id": "d2"}, {"decision_id": "d3"}])
        pending = threading.Thread(target=log.append, args=({"decision_id": "d4"},), daemon=True)
        pending.start()
        pending.join(0.5)
        assert pending.is_alive() and "d4" not in log
    assert pending.join(5) is None and not pending.is_alive()
    with DecisionLog(tmp_path / "log") as reopened:
        assert reopened.get("d4") is not None and len(reopened) == 7


def _queued_shadow(log: DecisionLog, decision_id: str) -> threading.Thread:
    """A background appender (a shadow record) that is waiting for a decision to share its commit."""
    thread = threading.Thread(target=log.append_many, args=([{"decision_id": decision_id, "kind": "shadow"}],),
                              kwargs={"background": True})
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and decision_id not in log
    return thread


def test_background_records_ride_along_with_the_next_decision(tmp_path):
    """Shadow records wait (up to background_delay_ms) for a decision to share its fsync: one commit
    for both; without a decision they are committed at the latest on close."""
    from mlp_platform.serving.decision_log import DecisionLog

    with DecisionLog(tmp_path / "log", background_delay_ms=60_000) as log:
        log.append({"decision_id": "d0"})
        commits = log.commit_count
        shadow = _queued_shadow(log, "s0")  # waiting for a decision to share the commit
        result = log.append({"decision_id": "d1"})
        shadow.join(30)
        assert not shadow.is_alive() and log.commit_count == commits + 1
        assert log.get("s0")["seq"] == result.seq - 1  # queued first, committed together
        late = _queued_shadow(log, "s1")  # queued, waiting: close() commits it
    late.join(30)
    assert not late.is_alive()
    with DecisionLog(tmp_path / "log") as reopened:
        assert reopened.get("s1") is not None and len(reopened) == 4


def test_inline_commit_takes_the_queued_background_records_along(tmp_path):
    """append_inline commits in the caller's thread, with the shadow records waiting for a decision, in
    one commit; the records' waiters are woken; the log reopens and verifies."""
    with DecisionLog(tmp_path / "log", background_delay_ms=60_000) as log:
        log.append({"decision_id": "d0"})
        commits = log.commit_count
        shadow = _queued_shadow(log, "s0")
        result = log.append_inline({"decision_id": "d1", "score": 1e-7})
        assert result is not None and result.decision_id == "d1"
        shadow.join(30)
        assert not shadow.is_alive()
        assert log.commit_count == commits + 1 and log.inline_commit_count == 1
        assert log.get("s0")["seq"] == result.seq - 1 and log.get("d1")["hash"] == result.hash
        with pytest.raises(DuplicateDecisionError):
            log.append_inline({"decision_id": "d1"})
        with pytest.raises(ValueError, match="reserved|set by the decision log"):
            log.append_inline({"decision_id": "d2", "seq": 5})
        log.append({"decision_id": "d3"})  # the writer carries on after inline commits
    report = verify_log(tmp_path / "log")
    assert report.ok and report.records == 4, report.describe()


def test_lone_decisions_leave_the_shadow_records_between_them_to_the_next_decision(tmp_path):
    """One connection: every decision commits inline and the shadow record queued after it rides along
    with the next decision. The background delay counts from a batch's first record, so the writer
    never commits a shadow-only batch while decisions keep coming (its commit would take the one
    commit slot, and the next lone decision would queue behind it)."""
    import queue

    # no zero-filling ahead: the writer's one other use of the commit slot (tested on its own below)
    with DecisionLog(tmp_path / "log", background_delay_ms=400, zero_ahead_bytes=0) as log:
        jobs: queue.Queue = queue.Queue()

        def shadow_worker():  # as the service's: one background append per decision, blocking
            while (i := jobs.get()) is not None:
                log.append_many([{"decision_id": f"s{i}", "kind": "shadow"}], background=True)

        worker = threading.Thread(target=shadow_worker)
        worker.start()
        try:
            started = time.monotonic()
            for i in range(500):  # about 1.3 s: three background delays
                assert log.append_inline({"decision_id": f"d{i}"}) is not None, f"d{i} found a commit in progress"
                jobs.put(i)
                time.sleep(0.002)
            writer_commits = log.commit_count - log.inline_commit_count
            assert time.monotonic() - started > 2 * log.background_delay_s
        finally:
            jobs.put(None)
            worker.join(30)
        assert writer_commits == 0
    report = verify_log(tmp_path / "log")
    assert report.ok and report.records == 1000, report.describe()


def test_inline_commit_refuses_while_the_writer_commits(tmp_path):
    """While the writer is writing a batch, append_inline logs nothing and returns None (the caller
    queues instead); the chain stays gap-free."""
    inline_ok = 0  # the writer finished between the check and the call: committed inline instead
    with DecisionLog(tmp_path / "log") as log:
        for attempt in range(5):
            big = [{"decision_id": f"b{attempt}-{i}", "pad": "x" * 200, "score": i / 3} for i in range(20_000)]
            filler = threading.Thread(target=log.append_many, args=(big,))
            filler.start()
            deadline = time.monotonic() + 30
            while not log._committing and filler.is_alive() and time.monotonic() < deadline:
                time.sleep(0.0005)
            refused = log.append_inline({"decision_id": f"x{attempt}"}) if log._committing else False
            filler.join(60)
            if refused is None:
                assert f"x{attempt}" not in log
                break
            inline_ok += refused is not False
        assert refused is None, "never caught the writer committing"
        assert log.append({"decision_id": f"x{attempt}"}).seq == log.next_seq - 1
    report = verify_log(tmp_path / "log")
    assert report.ok and report.records == 20_000 * (attempt + 1) + 1 + inline_ok


def test_inline_and_queued_appends_interleave_gap_free(tmp_path):
    """Threads committing inline (falling back to the queue when the writer is busy), threads queuing,
    and inline asyncio appends: every record logged once, seqs gap-free, each appender's in order."""
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def worker(name: str, inline: bool) -> None:
        try:
            out = []
            for i in range(150):
                rec = {"decision_id": f"{name}-{i}", "i": i}
                out.append((inline and log.append_inline(rec)) or log.append(rec))
            results[name] = out
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    async def async_appends() -> list:
        return [await log.append_async({"decision_id": f"a-{i}", "i": i}, inline=i % 2 == 0) for i in range(150)]

    # 4 KiB zero-filled ahead: fills (which hold the commit slot) interleave with the commits
    with DecisionLog(tmp_path / "log", segment_max_bytes=32 * 1024, zero_ahead_bytes=4096) as log:
        pool = [threading.Thread(target=worker, args=(f"t{t}", t % 2 == 0)) for t in range(6)]
        for th in pool:
            th.start()
        results["a"] = asyncio.run(async_appends())
        for th in pool:
            th.join()
        assert not errors
        seqs = sorted(r.seq for rs in results.values() for r in rs)
        assert seqs == list(range(7 * 150))
        for rs in results.values():
            assert [r.seq for r in rs] == sorted(r.seq for r in rs)
        assert log.inline_commit_count > 0 and log.zero_fill_count >= 1  # fills wait for a moment with no batch due
    report = verify_log(tmp_path / "log")
    assert report.ok and report.records == 7 * 150 and len(_segments(tmp_path / "log")) >= 2
