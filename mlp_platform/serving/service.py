"""The scoring service core (no HTTP here): model pool with hot swap, routing, features with
fallbacks, decision policy, reason codes, durable decision log, shadow scoring, metrics.

Imports neither dagster nor dbt. The FastAPI layer in :mod:`mlp_platform.serving.app` is thin.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from orjson import OPT_SORT_KEYS
from orjson import dumps as orjson_dumps
from orjson import loads as orjson_loads

from mlp_platform.deciders.declaration import (
    DEFAULT_DECIDER,
    DeciderDeclaration,
    PolicyDecl,
    default_decider,
    load_decider,
)
from mlp_platform.features.spec import FeatureSpec, default_spec
from mlp_platform.runtime.loading import LoadedModel
from mlp_platform.serving.api_models import ScoreOut, TransactionIn
from mlp_platform.serving.decision_log import DecisionLog
from mlp_platform.serving.metrics import ServiceMetrics
from mlp_platform.serving.online_store import (
    EventTimeRejected,
    FeatureStoreUnavailable,
    IdempotencyConflict,
    IdempotentReplay,
    OnlineFeatureStore,
    from_us,
)
from mlp_platform.serving.reasons import ReasonBook
from mlp_platform.serving.routing import RoutingFile, RoutingState, choose_arm

log = logging.getLogger("mlp.serving")


@dataclass(frozen=True)
class ServingConfig:
    feature_store_url: str
    decision_log_dir: Path
    routing_path: Path
    api_keys: tuple[str, ...]
    admin_keys: tuple[str, ...]
    id_hash_key: bytes
    #: The decider's decision policy (bands, degraded decision, which actions carry reasons).
    policy: PolicyDecl = field(default_factory=lambda: default_decider().policy)
    #: Band bounds that replace the declared ones (action -> lower score bound), e.g. in a test.
    threshold_overrides: tuple[tuple[str, float], ...] = ()
    max_body_bytes: int = 64 * 1024
    reload_interval_s: float = 5.0
    shadow_queue_max: int = 10_000
    #: Group-commit window of the decision log under concurrent appenders (0: commit as soon as the
    #: writer is free; a lone appender never waits, shadow records do not count as appenders).
    log_group_commit_ms: float = 2.0
    #: A request that is the only one in flight commits its decision record itself when the log's
    #: writer is idle (one write + fdatasync on the event loop, no thread wake-ups: lower latency at
    #: low concurrency); False: always through the writer thread.
    log_inline_commit: bool = True
    #: Bytes the log's writer keeps zero-filled on disk after the last record, so a commit overwrites
    #: allocated blocks and its fdatasync skips the filesystem journal (0: commits append).
    log_zero_ahead_bytes: int = 1024 * 1024
    batch_snapshot_dir: Path | None = None
    #: Set when several workers each write their own log directory under this root.
    decision_log_root: Path | None = None
    #: The drift asset's latest summary, exported as drift/skew gauges (None: not exported).
    drift_report_path: Path | None = None

    #: An event_time more than this far ahead of the server clock is a 422 (the store also refuses it).
    event_time_max_future_s: float = 300.0
    #: An event_time older than this (against the server clock) is a 422; None: no such bound.
    event_time_max_age_s: float | None = None
    #: The online store refuses an event older than its newest accepted one by more (a 422).
    late_grace_s: float = 3600.0
    #: A retry of a transaction (same transaction_id or Idempotency-Key, same body) within this long
    #: gets the original answer back; 0 switches idempotency off.
    idempotency_window_s: float = 900.0
    #: The server clock (seconds since the epoch); tests pin it to the time of their data.
    clock: Callable[[], float] = time.time

    @classmethod
    def from_settings(cls, settings, decider: DeciderDeclaration | None = None) -> ServingConfig:
        """The service's configuration from :class:`mlp_platform.settings.Settings` (its ``serving``
        knobs) and the decider's declaration (its policy, spec and label delay; default: the settings'
        default decider); nothing here reads the environment."""
        decider = decider or load_decider(settings.deciders_dir)
        knobs = settings.serving
        serving = settings.data_dir / "serving"
        key_file = serving / "id_hash.key"
        key = knobs.id_hash_key.encode()
        if not key:
            serving.mkdir(parents=True, exist_ok=True)
            if not key_file.exists():
                key_file.write_bytes(secrets.token_bytes(32))
                key_file.chmod(0o600)
            key = key_file.read_bytes()
        log_root = settings.decision_log_root
        # one writer per log: with several workers each gets its own chain under the root
        log_dir = log_root / f"worker-{os.getpid()}" if knobs.workers > 1 else log_root
        max_age = knobs.event_time_max_age_s
        if knobs.event_time_max_age_default:  # the longest lookback plus the label delay
            max_age = (max(v.lookback_seconds or 0 for v in decider.spec.views)
                       + decider.labels.delay_days * 86_400)
        return cls(
            feature_store_url=settings.feature_store_url,
            decision_log_dir=log_dir, decision_log_root=log_root if knobs.workers > 1 else None,
            routing_path=serving / "routing.json",
            api_keys=knobs.api_keys, admin_keys=knobs.admin_keys, id_hash_key=key,
            policy=decider.policy,
            reload_interval_s=knobs.reload_interval_s,
            log_group_commit_ms=knobs.log_group_commit_ms,
            log_inline_commit=knobs.log_inline_commit,
            log_zero_ahead_bytes=knobs.log_zero_ahead_bytes,
            batch_snapshot_dir=settings.batch_snapshot_dir,
            drift_report_path=_optional_path(knobs.drift_report_path or str(settings.monitoring_dir / "drift_latest.json")),
            event_time_max_future_s=knobs.event_time_max_future_s,
            event_time_max_age_s=max_age,
            late_grace_s=knobs.late_grace_s,
            idempotency_window_s=knobs.idempotency_window_s,
        )

    def store_options(self) -> dict:
        """The online store's options that follow from this configuration (bounds, clock, window)."""
        return {"late_grace": dt.timedelta(seconds=self.late_grace_s),
                "max_future": dt.timedelta(seconds=self.event_time_max_future_s),
                "idempotency_window": dt.timedelta(seconds=self.idempotency_window_s), "clock": self.clock}


def _optional_path(value: str) -> Path | None:
    """A path from the environment; empty or "none" switches the feature off."""
    return None if value.strip().lower() in ("", "none", "off") else Path(value)


def key_matches(presented: str | None, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison against every configured key."""
    if not presented or not keys:
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented.encode(), key.encode())
    return found


class _Clock:
    """``datetime.now(UTC).isoformat()`` for the decision records, 4-5x cheaper: the text of the current
    second is made once per second, the microseconds appended (floored, as datetime.now does; no
    fraction when they are 0, as isoformat does). Thread-safe: the cached pair is replaced whole."""

    __slots__ = ("_second", "_time_ns")

    def __init__(self, time_ns: Callable[[], int] = time.time_ns) -> None:
        self._second: tuple[int, str] = (-1, "")
        self._time_ns = time_ns

    def __call__(self) -> str:
        us = self._time_ns() // 1000
        second, micro = divmod(us, 1_000_000)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        return f"{cached[1]}.{micro:06d}+00:00" if micro else f"{cached[1]}+00:00"


utc_now_iso = _Clock()
_EPOCH = dt.datetime(1970, 1, 1)


class ModelPool:
    """The versions the routing state names, loaded and swapped atomically. A version that fails to
    load (registry down, corrupt, incompatible) is refused and the previous set keeps serving."""

    def __init__(self, loader: Callable[[str], LoadedModel], routing: RoutingFile, metrics: ServiceMetrics):
        self._loader, self._routing, self._metrics = loader, routing, metrics
        self._snapshot: tuple[RoutingState, dict[str, LoadedModel]] = (RoutingState(), {})
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.on_tick: Callable[[], object] | None = None  # extra work per poll (batch-feature snapshots)

    @property
    def snapshot(self) -> tuple[RoutingState, dict[str, LoadedModel]]:
        return self._snapshot

    def refresh(self) -> bool:
        """Re-read the routing state and load what it needs. True when the served set changed."""
        with self._lock:
            try:
                state = self._routing.read()
            except FileNotFoundError:
                self.last_error = f"no routing state at {self._routing.path}"
                return False
            except (ValueError, OSError) as err:
                self._metrics.model_events.labels("routing_invalid").inc()
                self.last_error = f"routing state refused: {err}"
                log.error(self.last_error)
                return False
            current_state, models = self._snapshot
            if state == current_state:
                return False
            wanted = [v for v in (state.champion, state.challenger, *state.shadows) if v]
            new_models = {}
            for version in wanted:
                if version in models:
                    new_models[version] = models[version]
                    continue
                try:
                    new_models[version] = self._loader(version)
                    self._metrics.model_events.labels("loaded").inc()
                    log.info("loaded model version %s", version)
                except Exception as err:  # registry down, corrupt or incompatible: keep serving
                    self._metrics.model_events.labels("refused").inc()
                    self.last_error = f"version {version} refused: {err}"
                    log.error(self.last_error)
                    return False
            self._snapshot = (state, new_models)
            self._metrics.models_loaded.set(len(new_models))
            self._metrics.routing_revision.set(state.revision)
            self.last_error = None
            return True

    def start(self, interval_s: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.refresh()
                    if self.on_tick:
                        self.on_tick()
                except Exception:  # never let the poller die
                    log.exception("model refresh failed")

        self._thread = threading.Thread(target=loop, name="model-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


@dataclass
class ScoringService:
    config: ServingConfig
    store: OnlineFeatureStore
    decisions: DecisionLog
    pool: ModelPool
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    spec: FeatureSpec = field(default_factory=default_spec)
    #: A :class:`mlp_platform.serving.tracing.RequestTracer` when tracing is on; None (default) = off.
    tracer: object | None = None
    #: A :class:`mlp_platform.review.opener.CaseOpener`: the decisions whose action is in
    #: ``opens_cases`` open a review case after they are logged (off the request path); None = none.
    case_opener: object | None = None
    opens_cases: frozenset[str] = frozenset()

    #: The shadow worker waits this long after waking before it drains the queue, so that under load
    #: it scores and logs a batch per wake-up instead of one job (measured: +2-6% req/s).
    SHADOW_LINGER_S: ClassVar[float] = 0.002

    def __post_init__(self) -> None:
        self._hmac = hmac.new(self.config.id_hash_key, digestmod=hashlib.sha256)
        self._pseudonyms: dict[str, str] = {}
        self._policies: dict[tuple, tuple[dict[str, float], str]] = {}
        self._ids: list[str] = []
        self._in_flight = 0  # requests in score_canonical (event loop only)
        self._inline_unsettled = False  # an inline commit's loop iteration is still running (see _lone)
        self._bound_metrics = self.metrics.bound()
        from mlp_platform.serving.batch_push import SnapshotLoader

        self._snapshots = SnapshotLoader(self.config.batch_snapshot_dir) if self.config.batch_snapshot_dir else None
        self.refresh_batch_features()
        self._drift_mtime: int | None = None
        self._drift_problem_seen: tuple | None = None
        self.refresh_drift_report()
        self._reasons = ReasonBook(self.spec)
        self._names = self.spec.feature_names
        self._shadow_queue: queue.Queue = queue.Queue(maxsize=self.config.shadow_queue_max)
        self._shadow_thread = threading.Thread(target=self._shadow_worker, name="shadow", daemon=True)
        self._shadow_thread.start()

    def refresh_batch_features(self) -> int:
        """Load batch-feature snapshots pushed since the last call (embedded store)."""
        if self._snapshots is None or not self.config.feature_store_url.startswith(("embedded", "memory")):
            return 0
        try:
            return self._snapshots.load_new(self.store)
        except Exception:
            self.metrics.errors.labels("batch_snapshot").inc()
            log.exception("loading batch feature snapshots failed")
            return 0

    def refresh_periodic(self) -> None:
        """The pool's poll tick: batch-feature snapshots and the drift summary."""
        self.refresh_batch_features()
        self.refresh_drift_report()

    def refresh_drift_report(self) -> bool:
        """Export the drift summary as gauges when its file changed (by mtime). A missing or unreadable
        file keeps the last exported values; each new problem is logged once and counted once as error
        type ``drift_report`` (not again on every poll). True when new values were exported."""
        path = self.config.drift_report_path
        if path is None:
            return False
        try:
            mtime = path.stat().st_mtime_ns
        except OSError as err:
            self._drift_problem(("missing", None), f"no readable drift report at {path} ({err.strerror})")
            return False
        if mtime == self._drift_mtime:
            return False
        try:
            report = json.loads(path.read_bytes())
            self.metrics.export_drift_report(report, self.spec.feature_names)
        except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
            self._drift_problem(("unreadable", mtime), f"drift report {path} unreadable: {err}")
            return False
        self._drift_mtime, self._drift_problem_seen = mtime, None
        return True

    def _drift_problem(self, key: tuple, message: str) -> None:
        if key == self._drift_problem_seen:
            return
        self._drift_problem_seen = key
        self.metrics.errors.labels("drift_report").inc()
        log.warning("%s; keeping the last exported drift values", message)

    def hash_id(self, value: str | None) -> str | None:
        """Keyed pseudonym of an identifier (HMAC-SHA256, 128 bits in hex): never the raw id.
        Customers, merchants and devices recur, so pseudonyms are remembered (up to 100,000 ids,
        then the memory starts afresh)."""
        if value is None:
            return None
        known = self._pseudonyms.get(value)
        if known is not None:
            return known
        mac = self._hmac.copy()  # the key schedule is computed once, not per call
        mac.update(value.encode())
        if len(self._pseudonyms) >= 100_000:
            self._pseudonyms = {}
        known = self._pseudonyms[value] = mac.hexdigest()[:32]
        return known

    def ready(self) -> tuple[bool, str]:
        state, models = self.pool.snapshot
        if not state.champion or state.champion not in models:
            return False, self.pool.last_error or "no champion loaded"
        try:
            if not self.store.ping():
                return False, "feature store unreachable"
        except Exception as err:
            return False, f"feature store unreachable: {err}"
        return True, "ok"

    def thresholds(self, model: LoadedModel) -> dict[str, float]:
        """The lower bound of each band of the policy for this version (its operating threshold where
        the declaration says so), in the order of the bands."""
        return self.config.policy.thresholds(model.operating_threshold, dict(self.config.threshold_overrides))

    def _policy(self, state: RoutingState, model: LoadedModel) -> tuple[dict[str, float], str]:
        """(thresholds, policy version) of this routing state and model, worked out once per pair.
        The thresholds dict is shared by every answer and record of the pair: never mutate it."""
        config = self.config
        key = (state.policy_version, model.version, model.operating_threshold, config.policy,
               config.threshold_overrides)
        found = self._policies.get(key)
        if found is None:
            thresholds = self.thresholds(model)
            found = (thresholds, f"{state.policy_version}/{config.policy.tag(thresholds)}")
            if len(self._policies) >= 1000:  # a handful in practice (policy versions x loaded models)
                self._policies = {}
            self._policies[key] = found
        return found

    def decide(self, score: float, thresholds: dict[str, float]) -> str:
        return self.config.policy.decide(score, thresholds)

    async def score(self, request: TransactionIn, span=None, idempotency_key: str | None = None) -> ScoreOut:
        """Score a validated request (the FastAPI route and in-process callers)."""
        txn, defaults = request.canonical()
        return ScoreOut(**await self.score_canonical(txn, defaults, span, idempotency_key))

    def check_event_time(self, event_time: dt.datetime) -> None:
        """Refuse an event time too far ahead of the server clock or older than the maximum age
        (:class:`EventTimeRejected`, counted by bound). The online store enforces the future bound
        and its late grace as well; this check also covers decisions taken on fallback features."""
        config = self.config
        t = (event_time - _EPOCH).total_seconds()
        now = config.clock()
        if t > now + config.event_time_max_future_s:
            limit = from_us(int((now + config.event_time_max_future_s) * 1e6))
            self.metrics.event_time_rejected.labels("future").inc()
            raise EventTimeRejected("future", f"event_time {event_time.isoformat()} is more than "
                                    f"{config.event_time_max_future_s:g} s ahead of the server clock; the bound is "
                                    f"{limit.isoformat()} UTC", limit)
        max_age = config.event_time_max_age_s
        if max_age is not None and t < now - max_age:
            limit = from_us(int((now - max_age) * 1e6))
            self.metrics.event_time_rejected.labels("too_old").inc()
            raise EventTimeRejected("too_old", f"event_time {event_time.isoformat()} is older than the maximum age "
                                    f"of {max_age:g} s (the longest feature window plus the label delay); the "
                                    f"bound is {limit.isoformat()} UTC", limit)

    @staticmethod
    def request_hash(txn: dict) -> str:
        """A digest of the canonical request: a retry must carry the same transaction to be replayed."""
        return hashlib.sha256(orjson_dumps(txn, option=OPT_SORT_KEYS)).hexdigest()[:32]

    def _decision_id(self) -> str:
        """A fresh random 128-bit id (hex). Drawn from a pool filled 512 at a time from os.urandom:
        the same randomness as uuid4 without a syscall (and a GIL release) per request. list.pop is
        atomic, so concurrent callers never get the same id."""
        try:
            return self._ids.pop()
        except IndexError:
            raw = os.urandom(16 * 512).hex()
            ids = [raw[i:i + 32] for i in range(0, len(raw), 32)]
            self._ids = ids
            return ids.pop()

    def _lone(self) -> bool:
        """Whether the request now at the decision log is alone, so that committing its record inline
        (in the event loop, blocking it for one fdatasync) cannot hold up another request
        (``ServingConfig.log_inline_commit``).

        Alone: no other request is in :meth:`score_canonical`, none was already waiting to run when
        the previous inline commit ended, and the log's latest commit carried at most one decision
        (not a group commit of concurrent requests). The last two matter when scoring does not await
        before the log (the embedded store, approve decisions): then every request runs to the log
        before the next one starts and looks alone by the count, and under load inline commits would
        serialise every request behind its own fdatasync instead of sharing one (measured: half the
        throughput). After an inline commit a callback is queued behind the requests already ready
        to run; a request that reaches the log before that callback ran arrived meanwhile, so it
        goes through the writer thread, which group-commits it with the others; inline commits
        resume once a commit carries one decision again (the load has gone)."""
        return (self._in_flight == 1 and not self._inline_unsettled and self.config.log_inline_commit
                and self.decisions.last_commit_foreground <= 1)

    def _settled(self) -> None:
        self._inline_unsettled = False

    async def score_canonical(self, txn: dict, defaults: list[str], span=None,
                              idempotency_key: str | None = None) -> dict:
        """:meth:`_score_canonical`, counting the requests in flight (a lone request commits its own
        decision record: :meth:`_lone`).

        Idempotent per ``transaction_id`` (or ``idempotency_key``, the Idempotency-Key header) within
        ``idempotency_window_s``: a retry with the same canonical request returns the original answer
        with ``replayed: true`` and writes no record; a different request under the same key raises
        :class:`IdempotencyConflict` (409), as does a retry while the first is still being decided.
        Out-of-bounds event times raise :class:`EventTimeRejected` (422)."""
        self._in_flight += 1
        try:
            return await self._score_canonical(txn, defaults, span, idempotency_key)
        except IdempotentReplay as replay:
            self.metrics.idempotent_replays.inc()
            answer = orjson_loads(replay.response)
            answer["replayed"] = True
            return answer
        except IdempotencyConflict as conflict:
            self.metrics.idempotency_conflicts.labels("in_progress" if conflict.in_progress else "different_body").inc()
            raise
        except EventTimeRejected as rejected:
            if rejected.bound == "late":  # the store's bound (the service counts its own where it raises)
                self.metrics.event_time_rejected.labels("late").inc()
            raise
        finally:
            self._in_flight -= 1

    async def _score_canonical(self, txn: dict, defaults: list[str], span=None,
                               idempotency_key: str | None = None) -> dict:
        """Score a canonical transaction: routing, online features (fallbacks when the store is down),
        champion score, policy, reason codes for review/decline, durable decision record, shadow work
        queued, metrics. Returns the response body (the fields of :class:`ScoreOut`, in its order).

        ``span``: the request's trace span when tracing is on (children per stage); None costs nothing.
        """
        started = time.perf_counter()
        tracer = self.tracer if span is not None else None
        state, models = self.pool.snapshot
        arm, version = choose_arm(state, txn["customer_id"])
        model = models.get(version)
        if model is None:  # routing names a version that is not loaded (yet): serve the champion
            arm, version = "champion", state.champion
            model = models.get(version)
        if model is None:
            raise LookupError("no model loaded")
        m = self._bound_metrics
        self.check_event_time(txn["event_time"])
        idem = None
        digest = self.request_hash(txn)
        if self.config.idempotency_window_s > 0:
            idem = ("k:" + idempotency_key if idempotency_key is not None else "t:" + txn["transaction_id"], digest)
        child = tracer.child(span, "feature_fetch") if tracer else None
        degraded = False
        try:
            features = await self.store.score_features_async(txn, idem)
        except FeatureStoreUnavailable as err:
            degraded = True
            idem = None  # nothing was claimed: a decision on fallbacks is not deduplicated
            m.error("feature_store_unavailable").inc()
            log.warning("feature store unavailable, serving fallbacks: %s", err)
            features = self.store.fallback_features(txn)
        except EventTimeRejected:
            if child is not None:
                child.end()
            raise
        if idem is None:
            return await self._decide(txn, defaults, span, started, state, models, arm, version, model,
                                      features, degraded, digest, child)
        try:
            answer = await self._decide(txn, defaults, span, started, state, models, arm, version, model,
                                        features, degraded, digest, child)
        except BaseException:
            self.store.forget_pending(idem[0])  # a retry is decided afresh
            raise
        try:
            await self.store.remember_response_async(idem[0], digest, orjson_dumps(answer))
        except Exception:  # the decision stands (it is logged); retries wait for the pending mark to expire
            self.metrics.errors.labels("idempotency_store").inc()
            log.exception("could not keep the answer for retries")
        return answer

    async def _decide(self, txn: dict, defaults: list[str], span, started: float, state, models, arm: str,
                      version: str, model: LoadedModel, features, degraded: bool, digest: str, child) -> dict:
        """From the features on: score, policy, reasons, durable record, shadows, metrics, answer."""
        m = self._bound_metrics
        tracer = self.tracer if span is not None else None
        t1 = time.perf_counter()
        m.store_latency.observe(t1 - started)
        if child is not None:
            child.set_attribute("mlp.degraded", degraded)
            child.set_attribute("mlp.fallbacks", len(features.missing))
            child.end()
            child = tracer.child(span, "model_score")
        row = np.asarray(features.values, dtype=np.float64)
        score = float(model.scorer.score(row))
        thresholds, policy_version = self._policy(state, model)
        decision = self.decide(score, thresholds)
        fallbacks = sorted(features.missing) if features.missing else []
        if degraded:
            m.degraded.inc()
            policy = self.config.policy
            if policy.rank(decision) < policy.rank(policy.degraded_action):
                decision = policy.degraded_action
        reasons = []
        if decision in self.config.policy.reasons_for:  # TreeSHAP (~1 ms) runs off the event loop (the C call releases the GIL)
            contributions = list(await asyncio.to_thread(model.scorer.contributions, row))
            reasons = [r.__dict__ for r in self._reasons.reasons(features.values, contributions, model.populations,
                                                                 self.config.policy.max_reasons)]
        if child is not None:
            child.set_attribute("mlp.model_version", version)
            child.set_attribute("mlp.arm", arm)
            child.set_attribute("mlp.decision", decision)
            child.set_attribute("mlp.reasons", len(reasons))
            child.end()
            child = tracer.child(span, "decision_log_append")
        decision_id = self._decision_id()
        record = {
            "decision_id": decision_id, "kind": "decision",
            "time": utc_now_iso(), "transaction_id": txn["transaction_id"],
            "event_time": txn["event_time"].isoformat(),
            "customer_hash": self.hash_id(txn["customer_id"]), "merchant_hash": self.hash_id(txn["merchant_id"]),
            "device_hash": self.hash_id(txn["device_id"]),
            "request": {"amount": txn["amount"], "currency": txn["currency"], "channel": txn["channel"],
                        "country": txn["country"], "merchant_category": txn["merchant_category"]},
            "arm": arm, "model_version": version, "model_sha256": model.artifact_sha256,
            "routing_revision": state.revision,
            "features": dict(zip(self._names, [None if v != v else v for v in features.values], strict=True)),
            "fallbacks": fallbacks, "defaults_applied": defaults, "degraded": degraded,
            "score": score, "thresholds": thresholds, "policy_version": policy_version, "decision": decision,
            "reasons": reasons, "request_sha256": digest,
        }
        if self._lone():
            await self.decisions.append_async(record, trusted=True, inline=True)  # str keys only
            self._inline_unsettled = True
            asyncio.get_running_loop().call_soon(self._settled)
        else:
            await self.decisions.append_async(record, trusted=True)
        if decision in self.opens_cases:  # the record is durable: its case opens in the background
            self.case_opener.offer(record, DEFAULT_DECIDER)
        if child is not None:
            child.end()
        for shadow in state.shadows:
            if shadow in models and shadow != version:
                self._submit_shadow(models[shadow], row, decision_id, decision)
        for name in fallbacks:
            m.fallback(name).inc()
        for name in defaults:
            m.default(name).inc()
        m.decision(decision, arm).inc()
        m.score(version).observe(score)
        latency = time.perf_counter() - started
        m.latency("score", arm).observe(latency)
        if span is not None:
            span.set_attribute("mlp.model_version", version)
            span.set_attribute("mlp.arm", arm)
            span.set_attribute("mlp.decision", decision)
            span.set_attribute("mlp.degraded", degraded)
        return {
            "api_version": "v1", "decision_id": decision_id, "decision": decision, "score": score,
            "policy_version": policy_version, "thresholds": thresholds,
            "model": {"arm": arm, "version": version, "score": score}, "reasons": reasons,
            "fallbacks": fallbacks, "defaults_applied": defaults, "degraded": degraded,
            "latency_ms": latency * 1000.0, "replayed": False,
        }

    def _submit_shadow(self, model: LoadedModel, row: np.ndarray, decision_id: str, served: str) -> None:
        """Queue a shadow scoring for the shadow worker; when the queue is full (overload) the shadow
        work is dropped and counted, never allowed to grow without bound or to slow a decision."""
        try:
            self._shadow_queue.put_nowait((model, row, decision_id, served))
        except queue.Full:
            self._bound_metrics.shadow_dropped(model.version).inc()

    def _shadow_worker(self) -> None:
        """Off the critical path: drains queued shadow scorings in batches (one log commit per batch);
        the shadows' scores are logged for comparison, never served."""
        while True:
            job = self._shadow_queue.get()
            if job is None:
                return
            time.sleep(self.SHADOW_LINGER_S)  # let a few more arrive: fewer wake-ups and commits under load
            jobs = [job]
            while len(jobs) < 512:
                try:
                    nxt = self._shadow_queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._shadow_queue.put(None)
                    break
                jobs.append(nxt)
            records = []
            m = self._bound_metrics
            scores = self._shadow_scores(jobs)
            for (model, row, decision_id, served), score in zip(jobs, scores, strict=True):
                try:
                    if score is None:  # not scored in a batch: on its own (its error is its own)
                        score = float(model.scorer.score(row))
                    decision = self.decide(score, self.thresholds(model))
                except Exception:
                    self.metrics.errors.labels("shadow").inc()
                    log.exception("shadow scoring failed")
                    continue
                records.append({
                    "decision_id": f"{decision_id}:shadow:{model.version}", "kind": "shadow",
                    "of_decision": decision_id, "time": utc_now_iso(),
                    "model_version": model.version, "model_sha256": model.artifact_sha256, "score": score,
                    "decision": decision, "served_decision": served})
                m.shadow_score(model.version).inc()
                if decision != served:
                    m.shadow_disagreement(model.version).inc()
            try:
                self.decisions.append_many(records, trusted=True, background=True)
            except Exception:
                self.metrics.errors.labels("shadow").inc()
                log.exception("logging shadow scores failed")
            finally:
                for _ in jobs:
                    self._shadow_queue.task_done()

    @staticmethod
    def _shadow_scores(jobs: list) -> list[float | None]:
        """The scores of a batch of shadow jobs, one matrix per model through ``score_matrix``: the
        compiled trees score the rows in one C call that releases the GIL, so the event loop goes on
        meanwhile (per row, the GIL would be held). Same function, same scores as ``score(row)``.
        None where a batch could not be scored (the caller scores that job on its own)."""
        scores: list[float | None] = [None] * len(jobs)
        by_model: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            by_model.setdefault(id(job[0]), []).append(i)
        for indexes in by_model.values():
            scorer = jobs[indexes[0]][0].scorer
            score_matrix = getattr(scorer, "score_matrix", None)
            if score_matrix is None or len(indexes) < 2:
                continue
            try:
                values = score_matrix(np.stack([jobs[i][1] for i in indexes]))
            except Exception:  # scored row by row instead
                log.exception("shadow batch scoring failed, scoring row by row")
                continue
            for i, v in zip(indexes, values.tolist(), strict=True):
                scores[i] = v
        return scores

    def flush_shadows(self) -> None:
        """Wait for queued shadow scorings (tests, shutdown)."""
        self._shadow_queue.join()

    def explain(self, decision_id: str) -> tuple[dict, str] | None:
        record = self.decisions.get(decision_id)
        if record is None and self.config.decision_log_root is not None:  # decided by another worker
            from mlp_platform.serving.decision_log import find_decision

            record = find_decision(self.config.decision_log_root, decision_id, skip=self.config.decision_log_dir)
        if record is None:
            return None
        reasons = record.get("reasons") or []
        if not reasons and record.get("kind") == "decision":
            _, models = self.pool.snapshot
            model = models.get(record["model_version"])
            if model is not None:  # contributions computed on demand from the features as served
                values = [np.nan if record["features"][n] is None else record["features"][n] for n in self._names]
                contributions = list(model.scorer.contributions(np.asarray(values, dtype=np.float64)))
                reasons = [r.__dict__ for r in self._reasons.reasons(values, contributions, model.populations,
                                                                     self.config.policy.max_reasons)]
        return record, explanation_text(record, reasons)

    async def close(self) -> None:
        self.pool.stop()
        self._shadow_queue.put(None)
        self._shadow_thread.join(timeout=30)
        if self.case_opener is not None:
            await asyncio.to_thread(self.case_opener.close)  # the queued cases, before the log closes
        await asyncio.to_thread(self.decisions.close)
        await self.store.aclose()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # flush the spans still queued


def explanation_text(record: dict, reasons: list[dict]) -> str:
    t = record.get("thresholds", {})
    parts = [
        f"On {record.get('time', '?')} transaction {record.get('transaction_id')} received the decision "
        f"'{record.get('decision')}' under policy {record.get('policy_version')}.",
        f"Model version {record.get('model_version')} ({record.get('arm')} arm) gave a fraud score of "
        f"{record.get('score', 0):.4f}; transactions scoring at least {t.get('review', 0):.4f} go to review "
        f"and at least {t.get('decline', 0):.4f} are declined.",
    ]
    if reasons:
        parts.append("The factors that raised the score most: " + "; ".join(
            f"{r['text']} ({r['feature']} = {r['value']})" for r in reasons) + ".")
    else:
        parts.append("No factor pushed the score towards fraud.")
    if record.get("degraded"):
        parts.append("The feature store could not be reached: stored features were replaced by documented "
                     f"fallbacks ({', '.join(record.get('fallbacks', []))}) and the decision was made at least "
                     "'review' so that a person checks it.")
    elif record.get("fallbacks"):
        parts.append(f"Fallback values were used for: {', '.join(record['fallbacks'])}.")
    if record.get("defaults_applied"):
        parts.append(f"Missing request fields received defaults: {', '.join(record['defaults_applied'])}.")
    return " ".join(parts)


