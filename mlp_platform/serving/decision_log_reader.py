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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlp_platform.serving.decision_log import GENESIS, _link_problem, _list_segments, segment_name


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


def read_after(directory: Path, state: tuple[int, str, str, int] | None, *, max_records: int | None = None) -> ChainRead:
    """Verified complete records after ``state`` (last_seq, last_hash, segment, offset), at most
    ``max_records`` of them (None: all)."""
    segments = _list_segments(directory)
    last_seq, last_hash, seg_name, offset = state if state else (-1, GENESIS, segment_name(segments[0][0]), 0)
    out = ChainRead(last_seq=last_seq, last_hash=last_hash, segment=seg_name, offset=offset)
    numbers = [n for n, _ in segments]
    start_no = int(seg_name[len("decisions-"):-len(".jsonl")])
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
                    record = json.loads(line)
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
