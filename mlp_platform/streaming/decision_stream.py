"""The decision stream: sealed decision-log records shipped to NATS JetStream, at least once, and read
back verified.

The service still acknowledges a decision only once its record is fdatasync'ed in the local log (the
log's own guarantee). A shipper process beside it (the scoring pod's sidecar, ``mlp stream ship``)
sends every complete record of every log directory under the log root to the stream:

* **Subject** ``mlp.decisions.<source>``; a *source* is one log directory (one chain). Its name is kept
  in the directory (``.stream-source``: the directory's name plus a random suffix, made once), so a
  fresh log that restarts at seq 0 under a reused pod name is a new source and never clashes with an
  old chain.
* **Message** up to ``records_per_message`` (256) consecutive records of one source, their lines
  exactly as on disk (each record's hash covers its line), at most 512 KiB; one header,
  ``Nats-Msg-Id`` = the decision id of the message's first record: the stream drops a message it has
  already stored (inside its duplicate window). One message per record cost the service 30% of its
  throughput on a 2-core host (bench/bench_stream.py: the shipper's and the server's per-message
  work); 256 to a message make the cost a few percent (docs/benchmarks.md).
* **At least once, in order, resumable.** A source's messages are published one at a time: the next
  only once the stream has acknowledged the previous, and only then does the shipper move its
  position (``.stream-position`` in the log directory, replaced atomically and fsync'ed). A message
  that was not acknowledged (a timeout, the server away) is sent again exactly as it was -- same
  records, same message id -- so the stream drops it if it had stored it, and a later message is
  never stored before an earlier one (no gap a resume could skip over). A crash between the ack and
  the position write: on start the shipper asks the stream for its subject's last message and skips
  forward to its last record (checking that the hash there is the one in its log). A stream that does
  not answer is retried with backoff; nothing moves until it acknowledges.
* The shipper parses only a message's first and last record (the id, the new position; the last
  record's seq must be the position's plus the number of lines): the chain itself is verified where it
  matters, by the loader, after the trip.

The loader (:func:`mlp_platform.batch.decisions.load_decisions_from_stream`) reads the stream with
an ephemeral ordered consumer from the last stream sequence it loaded and verifies every source's chain
again (seq, prev_hash, the hash of the delivered bytes): what arrives in the warehouse is what the
service logged, each record once.

Serving-side module: standard library, nats-py and the decision log (no dagster, no warehouse).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlp_platform.serving.decision_log import GENESIS, _fsync_path, _list_segments, segment_name
from mlp_platform.serving.decision_log_reader import _parse, log_directories, read_lines_after

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "mlp.decisions"
SOURCE_FILE = ".stream-source"
POSITION_FILE = ".stream-position"
_TOKEN = re.compile(r"[^A-Za-z0-9_-]+")


class StreamError(RuntimeError):
    """The stream cannot be used as configured (the message says why)."""


@dataclass(frozen=True)
class StreamConfig:
    """Where the decision stream is and how it keeps messages (from the settings module)."""

    url: str
    stream: str = "MLP_DECISIONS"
    replicas: int = 1  # 1 on one server; 3 on a clustered JetStream (survives a server loss)
    duplicate_window_s: float = 120.0
    max_age_days: float = 30.0  # retention: the loader must run more often than this

    @property
    def subjects(self) -> str:
        return f"{SUBJECT_PREFIX}.>"


def stream_config(settings) -> StreamConfig | None:
    """The decision stream the settings name (None: no stream; the loader reads local segments)."""
    if not settings.decision_stream_url:
        return None
    return StreamConfig(url=settings.decision_stream_url, stream=settings.decision_stream_name,
                        replicas=settings.decision_stream_replicas)


def subject_for(source: str) -> str:
    return f"{SUBJECT_PREFIX}.{source}"


def source_of(directory: Path) -> str:
    """The stream source name of a log directory, made once and kept in the directory."""
    path = Path(directory) / SOURCE_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    name = f"{_TOKEN.sub('_', Path(directory).resolve().name)[:40] or 'log'}-{uuid.uuid4().hex[:12]}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another shipper made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_path(Path(directory))
    return name


@dataclass
class Position:
    """The last record of a directory the stream has acknowledged, and where the next one starts."""

    last_seq: int = -1
    last_hash: str = GENESIS
    segment: str = ""
    offset: int = 0

    def as_state(self, directory: Path) -> tuple[int, str, str, int] | None:
        if self.last_seq < 0:
            return None
        return self.last_seq, self.last_hash, self.segment or segment_name(_list_segments(directory)[0][0]), self.offset


def load_position(directory: Path) -> Position:
    try:
        raw = json.loads((Path(directory) / POSITION_FILE).read_text())
    except FileNotFoundError:
        return Position()
    return Position(int(raw["last_seq"]), str(raw["last_hash"]), str(raw["segment"]), int(raw["offset"]))


def save_position(directory: Path, position: Position) -> None:
    """Replace the position file atomically (write, rename: never a torn file). Not fsync'ed: the
    position is a cache of where the stream is -- on start the stream's last message of the source
    moves a stale one forward -- and an fsync per message would compete with the decision log's own
    fdatasync on the same disk."""
    path = Path(directory) / POSITION_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        json.dump(position.__dict__, fh)
    os.replace(tmp, path)


async def connect(config: StreamConfig, **options: Any):
    """A NATS connection that keeps reconnecting (a stopped server is waited for, not given up on;
    in a cluster, another member is used)."""
    import nats

    async def error(exc: Exception) -> None:  # one line, not nats-py's traceback per reconnect attempt
        log.warning("nats %s: %s: %s", config.url, type(exc).__name__, exc)

    connection: list = []

    async def disconnected() -> None:  # not when we close it ourselves
        if connection and not (connection[0].is_closed or connection[0].is_draining):
            log.warning("nats %s: disconnected; reconnecting", config.url)

    async def reconnected() -> None:
        log.warning("nats %s: reconnected", config.url)

    defaults = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.5, "connect_timeout": 2,
                "allow_reconnect": True, "error_cb": error, "disconnected_cb": disconnected,
                "reconnected_cb": reconnected}
    # "nats://a:4222,nats://b:4222": several seed servers (a cluster's other members are also learnt
    # from the server it connects to, and reconnects go to any of them)
    servers = [u.strip() for u in config.url.split(",") if u.strip()]
    nc = await nats.connect(servers, **{**defaults, **options})
    connection.append(nc)
    return nc


async def ensure_stream(js, config: StreamConfig, *, name: str | None = None, subjects: str | None = None,
                        max_age_days: float | None = None) -> None:
    """Create a stream (file storage, the configured replicas and duplicate window) or bring its
    settings to these: the decision stream by default, another one (the label streams) by ``name``."""
    from nats.js.api import StorageType
    from nats.js.api import StreamConfig as NatsStreamConfig
    from nats.js.errors import BadRequestError, NotFoundError

    name = name or config.stream
    wanted = NatsStreamConfig(
        name=name, subjects=[subjects or config.subjects], storage=StorageType.FILE,
        num_replicas=config.replicas, duplicate_window=config.duplicate_window_s,
        max_age=(max_age_days if max_age_days is not None else config.max_age_days) * 86400.0)
    try:
        await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(wanted)
            return
        except BadRequestError as exc:
            raise StreamError(f"cannot create stream {name}: {exc}") from exc
    await js.update_stream(wanted)


@dataclass
class ShipperStatus:
    """What the shipper has done (exported as metrics, returned by :meth:`DecisionShipper.ship_once`)."""

    shipped: int = 0  # records acknowledged by the stream since start
    messages: int = 0  # messages acknowledged (each up to records_per_message records)
    duplicates: int = 0  # of them, acknowledged as duplicates (already in the stream)
    skipped_on_resume: int = 0  # records found already in the stream on start
    failures: int = 0  # publications that failed and were retried
    broken: dict[str, str] = field(default_factory=dict)  # directory -> why it is not shipped


class DecisionShipper:
    """Ships the sealed records of every log directory under ``log_root`` to the stream."""

    def __init__(self, log_root: Path, config: StreamConfig, *, records_per_message: int = 256,
                 max_message_bytes: int = 512 * 1024, ack_timeout_s: float = 5.0, poll_s: float = 0.05,
                 position_interval_s: float = 1.0):
        self.log_root = Path(log_root)
        self.config = config
        self.records_per_message = records_per_message
        self.max_message_bytes = max_message_bytes
        self.ack_timeout_s = ack_timeout_s
        self.poll_s = poll_s  # the pause between two rounds: under load, ~poll_s of records per message
        self.position_interval_s = position_interval_s
        self.status = ShipperStatus()
        self._positions: dict[Path, Position] = {}
        self._sources: dict[Path, str] = {}
        self._pending: dict[Path, tuple[bytes, str, int, Position]] = {}
        self._saved_at: dict[Path, float] = {}
        self._saved_seq: dict[Path, int] = {}
        self._nc = None
        self._js = None

    async def start(self) -> None:
        self._nc = await connect(self.config)
        self._js = self._nc.jetstream(timeout=self.ack_timeout_s)
        await ensure_stream(self._js, self.config)

    async def close(self) -> None:
        self.save_positions()
        if self._nc is not None:
            await self._nc.drain()
            self._nc = None

    async def _resume(self, directory: Path) -> Position:
        """The directory's position: its file, moved forward to the stream's last message of the source
        when the stream is ahead (a crash after the ack, before the file was written)."""
        from nats.js.errors import NotFoundError

        position = load_position(directory)
        source = self._sources[directory]
        try:
            last = await self._js.get_last_msg(self.config.stream, subject_for(source))
        except NotFoundError:
            return position
        try:
            held = _parse((last.data or b"").rstrip(b"\n").rsplit(b"\n", 1)[-1])
            stream_seq, stream_hash = int(held["seq"]), str(held["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StreamError(f"{source}: the stream's last message is not a decision record: {exc}") from exc
        if stream_seq <= position.last_seq:
            if stream_seq < position.last_seq:
                log.warning("%s: the stream's last record is seq %s, the shipper's position %s (messages "
                            "removed from the stream?); shipping on from the position", source, stream_seq,
                            position.last_seq)
            return position
        skipped, state = 0, position.as_state(directory)
        read = None
        while True:  # forward to the stream's last record, a bounded read at a time
            piece = read_lines_after(directory, state, max_records=stream_seq - (state[0] if state else -1),
                                     max_bytes=self.max_message_bytes)
            if not piece.lines:
                break
            read, skipped = piece, skipped + len(piece.lines)
            state = (piece.last_seq, piece.last_hash, piece.segment, piece.offset)
            if piece.last_seq >= stream_seq:
                break
        if read is None or read.last_seq != stream_seq or read.last_hash != stream_hash:
            raise StreamError(f"{source}: the stream holds seq {stream_seq} with hash {stream_hash[:12]}…, which "
                              f"is not this log's record (log has seq {read.last_seq if read else None}): refusing "
                              f"to ship into another chain")
        self.status.skipped_on_resume += skipped
        resumed = Position(read.last_seq, read.last_hash, read.segment, read.offset)
        save_position(directory, resumed)
        return resumed

    async def _directories(self) -> list[Path]:
        found = log_directories(self.log_root)
        for directory in found:
            if directory not in self._positions:
                self._sources[directory] = source_of(directory)
                self._positions[directory] = await self._resume(directory)
        return found

    async def _ship_batch(self, directory: Path) -> int:
        """Publish the directory's next message (up to ``records_per_message`` records) and wait for the
        stream's ack; 0 when there is nothing to ship. A message that was not acknowledged is sent
        again exactly as it was (same records, same message id) before anything else of the directory,
        so the stream's duplicate window drops it if it had been stored, and a source's messages are
        stored one after the other in log order (never a later one before an earlier one)."""
        if str(directory) in self.status.broken:
            return 0
        pending = self._pending.get(directory)
        if pending is None:
            position = self._positions[directory]
            read = read_lines_after(directory, position.as_state(directory), max_records=self.records_per_message,
                                    max_bytes=self.max_message_bytes)
            if read.broken is not None:
                self.status.broken[str(directory)] = read.broken["reason"]
                log.error("%s: not shipped any further: %s", directory, read.broken)
                return 0
            if not read.lines:
                return 0
            if sum(len(line) for line in read.lines) > self.max_message_bytes:
                self.status.broken[str(directory)] = (f"record seq {read.last_seq} is larger than a message may be "
                                                      f"({self.max_message_bytes} bytes)")
                log.error("%s: not shipped any further: %s", directory, self.status.broken[str(directory)])
                return 0
            pending = (b"".join(read.lines), read.first_decision_id, len(read.lines),
                       Position(read.last_seq, read.last_hash, read.segment, read.offset))
            self._pending[directory] = pending
        payload, msg_id, n, moved = pending
        ack = await self._js.publish(subject_for(self._sources[directory]), payload, timeout=self.ack_timeout_s,
                                     headers={"Nats-Msg-Id": msg_id})
        if ack.stream != self.config.stream:
            raise StreamError(f"stored in stream {ack.stream}, not {self.config.stream}: subjects overlap")
        del self._pending[directory]
        self.status.messages += 1
        self.status.duplicates += n if ack.duplicate else 0
        self.status.shipped += n
        self._positions[directory] = moved
        if time.monotonic() - self._saved_at.get(directory, 0.0) >= self.position_interval_s:
            self._save(directory)
        return n

    def _save(self, directory: Path) -> None:
        position = self._positions[directory]
        save_position(directory, position)
        self._saved_at[directory] = time.monotonic()
        self._saved_seq[directory] = position.last_seq

    def save_positions(self) -> None:
        """Write the position of every directory that moved since its last write (when idle, on a
        clean stop)."""
        for directory, position in self._positions.items():
            if position.last_seq >= 0 and self._saved_seq.get(directory) != position.last_seq:
                self._save(directory)

    async def ship_once(self) -> int:
        """Ship everything sealed now (message after message); the number of records acknowledged."""
        total = 0
        for directory in await self._directories():
            while n := await self._ship_batch(directory):
                total += n
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Ship until ``stop`` is set; a message not acknowledged in time (stream unreachable) is retried
        with backoff and nothing moves until the stream acknowledges."""
        delay = self.poll_s
        while not stop.is_set():
            try:
                if not await self.ship_once():
                    self.save_positions()  # idle: the cache catches up with the stream
                delay = self.poll_s
            except StreamError:
                raise
            except Exception as exc:  # a timeout, a connection error, a stream that is not there (yet)
                self.status.failures += 1
                log.warning("shipping failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
                delay = min(2.0, delay * 2 if delay >= 0.1 else 0.1)
            # a pause after every round, also one that shipped: under load the next message then
            # carries ~poll_s of decisions instead of the few that arrived during one ack's round trip
            # (per-message work dominated the shipper's cost: bench/bench_stream.py)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


@dataclass
class StreamMessage:
    stream_seq: int
    subject: str
    data: bytes
    stored_at: float = 0.0  # the stream's timestamp of the message (epoch seconds)


async def read_stream(config: StreamConfig, after: int, *, batch: int = 64,
                      fetch_timeout_s: float = 2.0) -> tuple[list[StreamMessage], int, int]:
    """The stream's decision messages after stream sequence ``after``, up to its last message when the
    read started. Returns (messages, the stream's first sequence, the last sequence read up to).
    ``batch`` messages per fetch (64 of at most 512 KiB: inside nats-py's 128 MiB pending limit of a
    subscription, over which the client drops messages)."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await connect(config, max_reconnect_attempts=3)
    try:
        js = nc.jetstream(timeout=10)
        await ensure_stream(js, config)
        info = await js.stream_info(config.stream)
        first, last = int(info.state.first_seq), int(info.state.last_seq)
        if last <= after:
            return [], first, after
        sub = await js.pull_subscribe(
            config.subjects, stream=config.stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1,
                                  ack_policy=AckPolicy.NONE, inactive_threshold=60.0, mem_storage=True))
        out: list[StreamMessage] = []
        try:
            seen, timeouts = after, 0
            while seen < last:
                try:
                    msgs = await sub.fetch(min(batch, last - seen), timeout=fetch_timeout_s)
                except TimeoutError as exc:
                    # nats-py raises its own TimeoutError or asyncio's (both are TimeoutError): a busy
                    # host can miss one fetch's deadline (seen in CI), three in a row is a stop
                    timeouts += 1
                    if timeouts < 3:
                        continue
                    raise StreamError(f"the stream stopped delivering at sequence {seen} of {last}") from exc
                timeouts = 0
                for m in msgs:
                    s = int(m.metadata.sequence.stream)
                    if s > last:
                        break
                    if s != seen + 1 and seen >= first:
                        # nothing is deleted from this stream but its oldest messages (retention): a
                        # jump means the client dropped messages (a slow consumer), never load past it
                        raise StreamError(f"stream sequence jumped from {seen} to {s} while reading")
                    out.append(StreamMessage(s, m.subject, m.data, m.metadata.timestamp.timestamp()))
                    seen = s
                if msgs and int(msgs[-1].metadata.sequence.stream) > last:
                    break
        finally:
            await sub.unsubscribe()
        return out, first, last
    finally:
        await nc.close()


def source_from_subject(subject: str) -> str:
    return subject[len(SUBJECT_PREFIX) + 1:]


def run_shipper(config: StreamConfig, log_root: Path, *, metrics_port: int | None = None) -> ShipperStatus:
    """The shipper process (``mlp stream ship``): ship until SIGTERM/SIGINT, then finish the message in
    flight and return. With ``metrics_port``, Prometheus series on that port: records shipped,
    duplicates, failed batches, directories not shipped (broken chains)."""
    import signal

    shipper = DecisionShipper(log_root, config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if metrics_port is not None:
            _export_metrics(shipper, metrics_port)
        while not stop.is_set():  # the first connection may wait for the server like any later one
            try:
                await shipper.start()
                break
            except StreamError:
                raise
            except Exception as exc:
                log.warning("stream not reachable yet (%s: %s); retrying", type(exc).__name__, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
        try:
            await shipper.run(stop)
        finally:
            with contextlib.suppress(Exception):
                await shipper.close()

    asyncio.run(main())
    return shipper.status


def _export_metrics(shipper: DecisionShipper, port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self):
            s = shipper.status
            yield CounterMetricFamily("mlp_stream_shipped_records", "Records the stream acknowledged.", s.shipped)
            yield CounterMetricFamily("mlp_stream_duplicate_records", "Acknowledged as already in the stream.",
                                      s.duplicates)
            yield CounterMetricFamily("mlp_stream_failed_publications", "Messages not acknowledged in time, sent again.",
                                      s.failures)
            yield GaugeMetricFamily("mlp_stream_broken_logs", "Log directories not shipped: broken chain.",
                                    len(s.broken))

    registry = CollectorRegistry()
    registry.register(_Collector())
    start_http_server(port, registry=registry)
