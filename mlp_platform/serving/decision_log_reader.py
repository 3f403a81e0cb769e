"""Reading a decision log directory from a position on: verified, complete records only.

Shared by the warehouse loader (:mod:`mlp_platform.batch.decisions`) and the stream shipper
(:mod:`mlp_platform.streaming.decision_stream`). A position is (last seq, last hash, segment, byte
offset of the next record). Every record read is checked against the chain with the decision log's
own link check, continuing from the position's hash; an incomplete last line of the last segment is a
write in progress and is left for the next read; any other break is reported in ``ChainRead.broken``
(the records before it are returned). Standard library only (the shipper runs beside the service).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mlp_platform.serving.decision_log import GENESIS, _link_problem, _list_segments, segment_name


def _parse(line: bytes) -> Any:
    """One record line: orjson (3-4x faster than json here; the same values for the strict JSON the log
    writes), json for anything orjson refuses (so a line is judged as :func:`verify_log` judges it)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


def log_directories(root: Path) -> list[Path]:
    """The root (when it holds segments) and every subdirectory holding segments, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    return [d for d in candidates if _list_segments(d)]


@dataclass
class ChainRead:
    """Verified complete records after a position, the position after them, and a break if one was met."""

    records: list[tuple[dict, int]] = field(default_factory=list)  # (record, seq)
    lines: list[bytes] = field(default_factory=list)  # each record's line as on disk (its hash is of these bytes)
    last_seq: int = -1
    last_hash: str = GENESIS
    segment: str = ""
    offset: int = 0
    pending: int = 0
    broken: dict[str, Any] | None = None


def _start(directory: Path, state: tuple[int, str, str, int] | None):
    """The directory's segments, their numbers, the number of the position's segment and the position
    (the start of the first segment when there is none)."""
    segments = _list_segments(directory)
    position = state if state else (-1, GENESIS, segment_name(segments[0][0]), 0)
    return segments, [n for n, _ in segments], int(position[2][len("decisions-"):-len(".jsonl")]), position


def read_after(directory: Path, state: tuple[int, str, str, int] | None, *, max_records: int | None = None) -> ChainRead:
    """Verified complete records after ``state`` (last_seq, last_hash, segment, offset), at most
    ``max_records`` of them (None: all)."""
    segments, numbers, start_no, (last_seq, last_hash, seg_name, offset) = _start(directory, state)
    out = ChainRead(last_seq=last_seq, last_hash=last_hash, segment=seg_name, offset=offset)
    if start_no not in numbers:
        out.broken = {"segment": seg_name, "line": 0, "seq": None, "expected_seq": last_seq + 1,
                      "reason": "the segment the previous load stopped in is gone"}
        return out
    expected = last_seq + 1
    previous_no = start_no
    for number, path in segments:
        if number < start_no:
            continue
        if number != previous_no and number != previous_no + 1:
            out.broken = {"segment": path.name, "line": 1, "seq": None, "expected_seq": expected,
                          "reason": f"segment numbers jump from {previous_no} to {number}: a segment is missing"}
            return out
        previous_no = number
        is_last = number == numbers[-1]
        pos = offset if number == start_no else 0
        line_no = 0
        with open(path, "rb") as fh:
            fh.seek(pos)
            for line in fh:
                line_no += 1
                if not line.endswith(b"\n") or b"\x00" in line:
                    if is_last:  # a write in progress (or a torn tail the service will truncate)
                        out.pending = len(line.rstrip(b"\x00"))  # zero padding (is_padding) counts 0
                        break
                    out.broken = {"segment": path.name, "line": line_no, "seq": None, "expected_seq": expected,
                                  "reason": "incomplete line in a segment that is not the last",
                                  "offset": pos}
                    return out
                try:
                    record = _parse(line)
                except ValueError:
                    record, reason = None, "line is not valid JSON"
                else:
                    reason = _link_problem(record, line, expected, out.last_hash, strict=False)
                if reason:
                    seq = record.get("seq") if isinstance(record, dict) else None
                    out.broken = {"segment": path.name, "line": line_no, "seq": seq, "expected_seq": expected,
                                  "reason": reason, "offset": pos}
                    return out
                out.records.append((record, expected))
                out.lines.append(line)
                out.last_seq, out.last_hash = expected, record["hash"]
                expected += 1
                pos += len(line)
                out.segment, out.offset = path.name, pos
                if max_records is not None and len(out.records) >= max_records:
                    return out
    return out


MAX_READ_BYTES = 8 << 20  # one read of the shipper's at most (a message is at most 512 KiB)


@dataclass
class LinesRead:
    """Complete record lines after a position, unparsed but the first and the last (the shipper's read:
    the chain is verified by the loader after the trip), and the position after them."""

    lines: list[bytes] = field(default_factory=list)
    first_decision_id: str = ""
    last_seq: int = -1
    last_hash: str = GENESIS
    segment: str = ""
    offset: int = 0
    broken: dict[str, Any] | None = None


def read_lines_after(directory: Path, state: tuple[int, str, str, int] | None, *, max_records: int,
                     max_bytes: int) -> LinesRead:
    """Up to ``max_records`` complete lines (and at most ``max_bytes``, but at least one line) after
    ``state``. Only the first line (its ``decision_id``) and the last (its seq and hash: the new
    position) are parsed; the last line's seq must be the position's + the number of lines, else the
    read is ``broken`` (a missing or extra line) and returns nothing."""
    segments, numbers, start_no, (last_seq, last_hash, seg_name, offset) = _start(directory, state)
    out = LinesRead(last_seq=last_seq, last_hash=last_hash, segment=seg_name, offset=offset)
    if start_no not in numbers:
        out.broken = {"segment": seg_name, "reason": "the segment the position is in is gone"}
        return out
    segment, position = seg_name, offset
    budget = max_bytes
    for number, path in segments:
        if number < start_no:
            continue
        pos = offset if number == start_no else 0
        # one bounded read, not line by line: the live segment ends in up to 1 MiB of zero-filled
        # space, which a line reader would read and scan on every poll
        want = min(budget + 1, MAX_READ_BYTES)
        with open(path, "rb") as fh:
            chunk = os.pread(fh.fileno(), want, pos)
        cut_by_budget = len(chunk) >= want
        nul = chunk.find(b"\x00")
        if nul >= 0:
            chunk, cut_by_budget = chunk[:nul], False  # the zero-filled space ahead, or a torn tail
        complete = chunk[:chunk.rfind(b"\n") + 1]
        if not complete and cut_by_budget and not out.lines:
            out.broken = {"segment": path.name,
                          "reason": f"the record at byte {pos} is larger than {want - 1} bytes"}
            return out
        for line in complete.splitlines(keepends=True)[:max_records - len(out.lines)]:
            out.lines.append(line)
            pos += len(line)
            budget -= len(line)
            segment, position = path.name, pos
        if len(out.lines) >= max_records or cut_by_budget or len(complete) < len(chunk) or nul >= 0:
            break  # full, or a partial line (a write in progress; in an earlier segment: never skipped)
    return _finish(out, segment, position, last_seq)


def _finish(out: LinesRead, segment: str, offset: int, last_seq: int) -> LinesRead:
    if not out.lines:
        return out
    try:
        first, last = _parse(out.lines[0]), _parse(out.lines[-1])
        decision_id, seq, digest = str(first["decision_id"]), int(last["seq"]), str(last["hash"])
    except (ValueError, KeyError, TypeError) as exc:
        out.broken = {"segment": segment, "reason": f"a record line is not a decision record: {exc}"}
        out.lines = []
        return out
    if seq != last_seq + len(out.lines):
        out.broken = {"segment": segment, "reason": f"{len(out.lines)} lines after seq {last_seq} end at seq {seq}: "
                                                    f"a record is missing or inserted"}
        out.lines = []
        return out
    out.first_decision_id, out.last_seq, out.last_hash, out.segment, out.offset = decision_id, seq, digest, segment, offset
    return out
