"""Opening cases off the scoring path.

A decision is acknowledged once its record is in the decision log; the case it opens is written
afterwards by a background thread, in batches (one transaction per batch), so the review database
never sits on the request path (``bench/bench_cases.py`` measures the cost on the full path). The
service hands :meth:`CaseOpener.offer` the logged record; that is a bounded queue put. If the
queue is full or the database fails (down at start included: the schema is migrated from the
background thread, retried), nothing is lost: the log is the record of truth, and
:meth:`CaseOpener.reconcile` (at start and every ``reconcile_every_s``) opens every case the log
holds past the position recorded for it. Opening is idempotent (the case id is the decision id).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlp_platform.review.cases import CaseStore, case_from_decision, migrate

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
BATCH = 256
HEALTH_EVERY_S = 15.0
SCHEMA_RETRY_S = 5.0


class CaseOpener:
    """Opens the cases of one or more decision logs (``sources``: log directory -> its
    :class:`~mlp_platform.serving.decision_log.DecisionLog`; read from where the last reconcile
    stopped, so a reconcile costs what was logged since, not the whole log)."""

    def __init__(self, store: CaseStore, open_for: Mapping[str, Sequence[str]],
                 sources: Mapping[str, Any] | None = None, *,
                 reconcile_every_s: float = 60.0, flush_interval_s: float = 0.25, metrics=None,
                 sla_hours: Mapping[str, float] | None = None):
        self.store = store
        self.open_for = {k: tuple(v) for k, v in open_for.items()}
        self.sources = dict(sources or {})
        self.reconcile_every_s = reconcile_every_s
        self.flush_interval_s = flush_interval_s
        self.metrics = metrics  # ReviewMetrics or None
        self.sla_hours = dict(sla_hours or {})  # decider -> SLA: whose health the metrics show
        self._cursors: dict[str, tuple[int, int]] = {}  # source -> where its last reconcile stopped
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._stop = threading.Event()
        self.ready = threading.Event()  # the review database's schema is in place
        self._thread: threading.Thread | None = None
        self.opened = 0
        self.deferred = 0  # offered while the queue was full: left to reconcile

    def opens(self, decider: str, decision: str) -> bool:
        return decision in self.open_for.get(decider, ())

    def offer(self, record: Mapping[str, Any], decider: str) -> None:
        """The scoring path: a logged decision that opens a case (a queue put; never blocks)."""
        try:
            self._queue.put_nowait((record, decider))
        except queue.Full:
            self.deferred += 1
            if self.metrics is not None:
                self.metrics.deferred.labels(decider).inc()

    def reconcile(self) -> int:
        """Open every case the logs hold past their recorded positions."""
        opened = 0
        for source, log in self.sources.items():
            cursor = self._cursors.get(source)

            def records(log=log, source=source, cursor=cursor) -> Iterable[Mapping[str, Any]]:
                for record, after in log.iter_records_from(cursor):
                    self._cursors[source] = after
                    yield record
            opened += self.store.reconcile(source, records(), self.open_for)
        self.opened += opened
        if self.metrics is not None:
            self.metrics.opened.inc(opened)
        return opened

    def refresh_health(self, sla_hours: Mapping[str, float]) -> None:
        """The queue's health per decider into the metrics (``sla_hours``: decider -> its SLA)."""
        if self.metrics is None:
            return
        try:
            for decider, hours in sla_hours.items():
                self.metrics.publish(self.store.health(decider), hours)
        except Exception:
            self.metrics.refresh_failures.inc()
            log.exception("review: reading the queue's health failed")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="case-opener", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self.ready.is_set():  # else the database never answered: the cases wait in the log
            self.flush()

    def flush(self) -> int:
        """Open whatever is queued now (shutdown, tests)."""
        total = 0
        while batch := self._drain():
            total += self._open(batch)
        return total

    def _drain(self) -> list[tuple[Mapping[str, Any], str]]:
        batch = []
        while len(batch) < BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _open(self, batch) -> int:
        try:
            n = self.store.open_many([case_from_decision(r, d) for r, d in batch])
        except Exception:  # the database is down: the log keeps them; reconcile opens them later
            log.exception("review: could not open %d case(s); the next reconcile opens them", len(batch))
            if self.metrics is not None:
                self.metrics.open_failures.inc(len(batch))
            return 0
        self.opened += n
        if self.metrics is not None:
            self.metrics.opened.inc(n)
        return n

    def ensure_schema(self) -> bool:
        """Migrate the review database if that has not succeeded yet; whether it is usable. Until it
        is, the review API answers 503 and the cases wait in the log (scoring never waits for it)."""
        if self.ready.is_set():
            return True
        try:
            migrate(self.store.engine)
        except Exception as exc:
            log.warning("review: the review database is not usable yet (%s); retrying", exc)
            return False
        self.ready.set()
        return True

    def _run(self) -> None:
        next_reconcile = next_health = 0.0
        while not self._stop.is_set():
            if not self.ensure_schema():
                self._stop.wait(SCHEMA_RETRY_S)
                continue
            now = time.monotonic()
            if self.sources and now >= next_reconcile:
                try:
                    self.reconcile()
                except Exception:
                    log.exception("review: reconciling cases with the decision log failed")
                next_reconcile = now + self.reconcile_every_s
            if self.sla_hours and now >= next_health:
                self.refresh_health(self.sla_hours)
                next_health = now + HEALTH_EVERY_S
            try:
                first = self._queue.get(timeout=self.flush_interval_s)
            except queue.Empty:
                continue
            # linger: under load one transaction carries many cases (its cost is mostly per statement)
            self._stop.wait(self.flush_interval_s)
            batch = [first, *self._drain()]
            self._open(batch)
