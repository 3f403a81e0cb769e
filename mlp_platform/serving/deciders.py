"""The application deciders a scoring process hosts beside the fraud decider: per decider its champion
(loaded from the decider's own registered model), its own hash-chained decision log, its API keys
(a key for one decider cannot call another), its metrics label, and hot reload (a promotion of
that decider's champion reaches the process without a restart and without touching the others).

A decider whose registered model has no champion yet answers 503 naming the decider; the others
serve. Loading a new version happens on the reload thread and is swapped in whole; the request
path only reads the current slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from mlp_platform.deciders.declaration import DEFAULT_DECIDER, DeciderDeclaration, load_decider, load_deciders
from mlp_platform.serving.application import ApplicationDecider, CounterOffers
from mlp_platform.serving.decision_log import DecisionLog
from mlp_platform.serving.routing import BUCKETS, RoutingFile, bucket
from mlp_platform.serving.service import key_matches, utc_now_iso

log = logging.getLogger(__name__)
#: Shadow decisions waiting for the shadow worker; beyond this they are dropped (and counted).
SHADOW_QUEUE = 10_000


class DeciderUnavailable(RuntimeError):
    """The decider is hosted but has no champion loaded (503)."""


class UnknownDecider(LookupError):
    """No such decider in this process (404)."""


@dataclass
class _Slot:
    declaration: DeciderDeclaration
    keys: tuple[str, ...]
    log: DecisionLog
    runtime: ApplicationDecider | None = None
    version: str | None = None
    load_error: str | None = None
    #: The staged rollout's arms (from the decider's routing state): a challenger serving
    #: ``share`` of the applicants, a shadow scored beside the champion and logged only.
    challenger: ApplicationDecider | None = None
    share: float = 0.0
    shadow: ApplicationDecider | None = None
    #: version -> loaded runtime (what the routing names stays loaded; the rest is dropped).
    loaded: dict[str, ApplicationDecider] = field(default_factory=dict)


class DeciderMetrics:
    """The per-decider series (labelled ``decider``), in the service's registry."""

    def __init__(self, registry) -> None:
        self.registry = registry
        self.decisions = Counter("mlp_decider_decisions_total", "Application decisions by decider and action",
                                 ["decider", "decision"], registry=registry)
        self.requests = Counter("mlp_decider_requests_total", "Decider requests by route, arm and outcome "
                                "(ok, error: the rollout's error-rate guardrail)", ["decider", "route", "arm", "outcome"],
                                registry=registry)
        self.latency = Histogram("mlp_decider_request_latency_seconds", "Server-side latency by decider, route and arm",
                                 ["decider", "route", "arm"], registry=registry,
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.reloads = Counter("mlp_decider_model_loads_total", "Champion loads by decider and outcome",
                               ["decider", "outcome"], registry=registry)
        self.offers = Counter("mlp_decider_counter_offers_total", "Counter-offer calls by decider and result",
                              ["decider", "result"], registry=registry)
        self.shadows = Counter("mlp_decider_shadow_scores_total", "Shadow decisions by decider and result "
                               "(scored, dropped under overload, failed)", ["decider", "result"], registry=registry)
        self.ready = Gauge("mlp_decider_ready", "1 when the decider serves a champion", ["decider"], registry=registry)
        # the decider's latest monitoring report (<monitoring dir>/<decider>/latest.json)
        self.drifted_share = Gauge("mlp_decider_drifted_feature_share", "Share of features drifted in the latest "
                                   "report", ["decider"], registry=registry)
        self.drift_detected = Gauge("mlp_decider_drift_detected", "1 when the latest report detected drift",
                                    ["decider"], registry=registry)
        self.decay = Gauge("mlp_decider_performance_decay", "1 when the latest report found label performance "
                           "below the recorded expectation", ["decider"], registry=registry)
        self.label_auc = Gauge("mlp_decider_label_auc", "ROC AUC on matured outcomes in the latest report",
                               ["decider"], registry=registry)
        self.skewed = Gauge("mlp_decider_skew_mismatched_features", "Features whose online and offline values "
                            "differ in the latest report", ["decider"], registry=registry)
        self.report_time = Gauge("mlp_decider_report_timestamp_seconds", "When the latest report was computed",
                                 ["decider"], registry=registry)


def serves_fraud(wanted: str) -> bool:
    """Whether a process with MLP_SERVE_DECIDERS=``wanted`` hosts the fraud decider (``/v1/score``):
    "all" and "" (the fraud decider alone) do; a list of names does when it names it."""
    names = {n.strip() for n in wanted.split(",") if n.strip()}
    return wanted.strip() in ("all", "") or DEFAULT_DECIDER in names


def hosted_deciders(directory: Path, wanted: str) -> list[DeciderDeclaration]:
    """The application deciders named by ``wanted`` (MLP_SERVE_DECIDERS: "all" = every declared
    decider; "" = the fraud decider alone; else the names, exactly those: ``credit`` is a
    credit-only process, ``fraud,credit`` both)."""
    if wanted.strip() == "":
        return []
    declared = load_deciders(directory)
    if wanted.strip() == "all":
        return [d for d in declared.values() if d.request.schema_name == "application"]
    out = []
    for name in (n.strip() for n in wanted.split(",") if n.strip()):
        if name == DEFAULT_DECIDER:
            continue  # the fraud decider is the transaction service itself
        decl = load_decider(directory, name)
        if decl.request.schema_name != "application":
            raise ValueError(f"MLP_SERVE_DECIDERS: {name!r} is not an application decider")
        out.append(decl)
    return out


class DeciderHost:
    """Hosts application deciders (see the module docstring). ``loader(decider)`` returns a callable
    loading one version (``registry_loader``); ``champion(decider)`` returns the champion version."""

    def __init__(self, deciders: list[DeciderDeclaration], *, log_root: Path, keys: dict[str, tuple[str, ...]],
                 admin_keys: tuple[str, ...], loader: Callable[[DeciderDeclaration], Callable[[str], Any]],
                 champion: Callable[[DeciderDeclaration], str | None], metrics: DeciderMetrics,
                 group_commit_ms: float = 2.0, log_leaf: str = "", monitoring_dir: Path | None = None,
                 routing: Callable[[DeciderDeclaration], Any] | None = None) -> None:
        self.admin_keys = admin_keys
        self.metrics = metrics
        self.monitoring_dir = monitoring_dir
        self._loader = loader
        self._champion = champion
        #: decider -> its RoutingState (None: no staged rollout ever; the champion alias rules)
        self._routing = routing
        self._shadow_queue: queue.Queue = queue.Queue(maxsize=SHADOW_QUEUE)
        self._shadow_thread: threading.Thread | None = None
        self._loaders: dict[str, Callable[[str], Any]] = {}
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        for decl in deciders:
            # one writer per log: with ``log_leaf`` (the pod's or worker's own directory name) each
            # process of a Deployment keeps its own chain under the decider's directory
            directory = log_root / f"decisions-{decl.name}" / log_leaf if log_leaf else log_root / f"decisions-{decl.name}"
            self._slots[decl.name] = _Slot(decl, keys.get(decl.name, ()),
                                           DecisionLog(directory, group_commit_ms=group_commit_ms))
        self._stop = threading.Event()
        #: A :class:`mlp_platform.review.opener.CaseOpener` (set by the review desk), or None.
        self.case_opener = None
        self._thread: threading.Thread | None = None

    @property
    def names(self) -> list[str]:
        return sorted(self._slots)

    def slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is None:
            raise UnknownDecider(name)
        return slot

    def authorized(self, name: str, presented: str | None) -> bool:
        slot = self.slot(name)
        return key_matches(presented, slot.keys + self.admin_keys)

    # -- loading ------------------------------------------------------------------------------------
    def refresh(self, only: str | None = None) -> dict[str, str | None]:
        """Load what each hosted decider's routing names (champion, and during a staged rollout its
        challenger and shadow) where it changed; a failed load keeps the previous versions serving.
        Returns decider -> champion version now served."""
        out = {}
        for name, slot in self._slots.items():
            if only is not None and name != only:
                continue
            try:
                wanted, share = self._wanted(slot.declaration)
            except Exception as exc:  # registry or routing unreadable: keep serving what is loaded
                slot.load_error = f"registry: {exc}"
                self.metrics.reloads.labels(name, "registry_error").inc()
                out[name] = slot.version
                continue
            try:
                runtimes = {role: self._runtime_of(slot, version) if version else None
                            for role, version in wanted.items()}
            except Exception as exc:
                slot.load_error = f"version {exc.args[0] if exc.args else exc}"
                self.metrics.reloads.labels(name, "refused").inc()
                log.warning("decider %s: %s refused: %s", name, wanted, exc)
                out[name] = slot.version
                continue
            with self._lock:
                champion = runtimes.get("champion")
                if champion is not None:
                    slot.runtime, slot.version, slot.load_error = champion, champion.version, None
                slot.challenger = runtimes.get("challenger") if share > 0 else None
                slot.share = share if slot.challenger is not None else 0.0
                slot.shadow = runtimes.get("shadow")
                keep = {r.version for r in (slot.runtime, slot.challenger, slot.shadow) if r is not None}
                slot.loaded = {v: r for v, r in slot.loaded.items() if v in keep}
            if slot.shadow is not None:
                self._start_shadow_worker()
            out[name] = slot.version
            self.metrics.ready.labels(name).set(1 if slot.runtime is not None else 0)
            self._export_report(name)
        return out

    def _wanted(self, decl: DeciderDeclaration) -> tuple[dict[str, str | None], float]:
        """(role -> version, challenger share) the decider should serve now."""
        state = self._routing(decl) if self._routing is not None else None
        if state is None:
            return {"champion": self._champion(decl)}, 0.0
        return ({"champion": state.champion, "challenger": state.challenger,
                 "shadow": state.shadows[0] if state.shadows else None}, float(state.challenger_share))

    def _runtime_of(self, slot: _Slot, version: str) -> ApplicationDecider:
        """The loaded runtime of ``version`` (loaded now if it is not yet)."""
        runtime = slot.loaded.get(version)
        if runtime is not None:
            return runtime
        name = slot.declaration.name
        try:
            load = self._loaders.get(name)
            if load is None:
                load = self._loaders[name] = self._loader(slot.declaration)
            model = load(version)
            runtime = ApplicationDecider(slot.declaration, model.scorer, model.populations, version=version,
                                         operating_threshold=model.operating_threshold)
        except Exception as exc:
            raise RuntimeError(f"{version}: {exc}") from exc
        slot.loaded[version] = runtime
        self.metrics.reloads.labels(name, "loaded").inc()
        log.info("decider %s: version %s loaded", name, version)
        return runtime

    def _export_report(self, name: str) -> None:
        """The decider's latest monitoring summary as its gauges (absent or unreadable: unchanged)."""
        import datetime as dt
        import json

        if self.monitoring_dir is None:
            return
        path = self.monitoring_dir / name / "latest.json"
        try:
            summary = json.loads(path.read_text())["summary"]
        except (OSError, ValueError, KeyError):
            return
        m = self.metrics
        m.drifted_share.labels(name).set(float(summary.get("drifted_share") or 0.0))
        m.drift_detected.labels(name).set(1 if summary.get("drift_detected") else 0)
        m.decay.labels(name).set(1 if summary.get("performance_decay") else 0)
        auc = summary.get("label_auc")
        m.label_auc.labels(name).set(float("nan") if auc is None else float(auc))
        m.skewed.labels(name).set(len(summary.get("skew_mismatched_features") or []))
        with contextlib.suppress(KeyError, ValueError):
            m.report_time.labels(name).set(dt.datetime.fromisoformat(summary["computed_at"]).timestamp())

    def start(self, interval_s: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="decider-reload", daemon=True)
        self._thread.start()

    def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, s in sorted(self._slots.items()):
            out[name] = {"version": s.version, "ready": s.runtime is not None, "error": s.load_error}
            if s.challenger is not None or s.shadow is not None:
                out[name].update(challenger=s.challenger.version if s.challenger else None, challenger_share=s.share,
                                 shadow=s.shadow.version if s.shadow else None)
        return out

    # -- decisions ----------------------------------------------------------------------------------
    def _runtime(self, name: str, request: dict[str, Any] | None = None) -> tuple[_Slot, ApplicationDecider, str]:
        """(slot, runtime, arm) for ``request``: the challenger for its share of applicants (sticky
        by applicant, else by the entity key) during a canary stage, the champion otherwise."""
        slot = self.slot(name)
        with self._lock:
            runtime, challenger, share = slot.runtime, slot.challenger, slot.share
        if runtime is None:
            raise DeciderUnavailable(f"decider {name!r} has no champion loaded"
                                     + (f" ({slot.load_error})" if slot.load_error else ""))
        if challenger is not None and share > 0 and request is not None:
            who = request.get("applicant_id") or request.get(slot.declaration.entity.key)
            if who is not None and bucket(f"{name}:{who}") < share * BUCKETS:
                return slot, challenger, "challenger"
        return slot, runtime, "champion"

    def _shadow_job(self, slot: _Slot, request: dict[str, Any], decision_id: str, served: str) -> None:
        shadow = slot.shadow
        if shadow is None:
            return
        try:
            self._shadow_queue.put_nowait((slot, shadow, request, decision_id, served))
        except queue.Full:
            self.metrics.shadows.labels(slot.declaration.name, "dropped").inc()

    def _start_shadow_worker(self) -> None:
        if self._shadow_thread is not None:
            return
        self._shadow_thread = threading.Thread(target=self._shadow_loop, name="decider-shadow", daemon=True)
        self._shadow_thread.start()

    def _shadow_loop(self) -> None:
        """Off the request path: the shadow version decides the same application; its record (kind
        ``shadow``, ``of_decision``) is logged in the background, as the fraud service's are."""
        while True:
            job = self._shadow_queue.get()
            if job is None:
                return
            slot, shadow, request, decision_id, served = job
            name = slot.declaration.name
            try:
                decision = shadow.decide(request)
                slot.log.append_many([{
                    "decision_id": f"{decision_id}:shadow:{shadow.version}", "kind": "shadow", "decider": name,
                    "of_decision": decision_id, "time": utc_now_iso(), "model_version": shadow.version,
                    "score": decision.score, "decision": decision.action, "served_decision": served}],
                    background=True)
                self.metrics.shadows.labels(name, "scored").inc()
            except Exception:
                self.metrics.shadows.labels(name, "failed").inc()
                log.exception("decider %s: shadow scoring failed", name)

    @staticmethod
    def _decision_id() -> str:
        return os.urandom(16).hex()

    def _record(self, name: str, runtime: ApplicationDecider, decision, decision_id: str, route: str,
                arm: str = "champion") -> dict[str, Any]:
        names = runtime.featurizer.feature_names
        return {
            "decision_id": decision_id, "kind": "decision", "decider": name, "route": route, "arm": arm,
            "time": utc_now_iso(),
            "application_id": decision.application_id, "decision": decision.action, "score": decision.score,
            "model": runtime.decider.model_name, "model_version": decision.model_version,
            "policy_version": runtime.policy.tag(decision.thresholds),
            "reasons": [{"code": r.code, "feature": r.feature, "text": r.text} for r in decision.reasons],
            "reasons_filtered": decision.reasons_filtered,
            "features": {n: (None if v != v else v) for n, v in zip(names, decision.values, strict=True)},
            "missing": decision.missing,
        }

    async def decide(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        slot, runtime, arm = self._runtime(name, request)
        with self._counted(name, "decide", arm):
            decision = runtime.decide(request)
            decision_id = self._decision_id()
            record = self._record(name, runtime, decision, decision_id, "decide", arm)
            await slot.log.append_async(record)
        if self.case_opener is not None and self.case_opener.opens(name, decision.action):
            self.case_opener.offer(record, name)
        if arm == "champion":
            self._shadow_job(slot, request, decision_id, decision.action)
        self.metrics.decisions.labels(name, decision.action).inc()
        self.metrics.latency.labels(name, "decide", arm).observe(time.perf_counter() - started)
        return _answer(name, decision_id, decision)

    @contextlib.contextmanager
    def _counted(self, name: str, route: str, arm: str):
        """Counts the request by arm and outcome: an exception while deciding or logging is an
        ``error`` (the client gets a 5xx; the rollout's error-rate guardrail reads these)."""
        try:
            yield
        except Exception:
            self.metrics.requests.labels(name, route, arm, "error").inc()
            raise
        self.metrics.requests.labels(name, route, arm, "ok").inc()

    async def counter_offer(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        slot, runtime, arm = self._runtime(name, request)
        if runtime.offer is None:
            raise UnknownDecider(f"decider {name!r} declares no counter-offers")
        with self._counted(name, "counter_offer", arm):
            result: CounterOffers = runtime.counter_offers(request)
            decision = result.decision
            decision_id = self._decision_id()
            record = self._record(name, runtime, decision, decision_id, "counter_offer", arm)
            record["offer"] = None if result.offer is None else _condition(result.offer)
            records = [record] + [
                {"decision_id": f"{decision_id}:candidate:{i}", "kind": "counter_offer_candidate", "decider": name,
                 "of_decision": decision_id, "time": record["time"], **_condition(c),
                 "offered": result.offer is c, "model_version": decision.model_version}
                for i, c in enumerate(result.candidates)]
            failed = [r for r in await asyncio.to_thread(slot.log.append_many, records) if isinstance(r, BaseException)]
            if failed:  # never acknowledge a decision whose trace is not all logged
                raise failed[0]
        if self.case_opener is not None and self.case_opener.opens(name, decision.action):
            self.case_opener.offer(record, name)
        self.metrics.decisions.labels(name, decision.action).inc()
        self.metrics.offers.labels(name, "offer" if result.offer else "none" if result.candidates else "not_needed").inc()
        self.metrics.latency.labels(name, "counter_offer", arm).observe(time.perf_counter() - started)
        answer = _answer(name, decision_id, decision)
        answer["offer"] = None if result.offer is None else _condition(result.offer)
        answer["candidates"] = [_condition(c) for c in result.candidates]
        return answer

    def explain(self, name: str, decision_id: str) -> dict[str, Any] | None:
        return self.slot(name).log.get(decision_id)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._shadow_thread is not None:
            self._shadow_queue.put(None)
            self._shadow_thread.join(timeout=5)
        if self.case_opener is not None:
            self.case_opener.close()
        for slot in self._slots.values():
            slot.log.close()


def _condition(c) -> dict[str, Any]:
    return {"requested_amount": c.amount, "term_months": c.term_months, "score": c.score, "decision": c.action}


def _answer(name: str, decision_id: str, decision) -> dict[str, Any]:
    return {
        "api_version": "v1", "decider": name, "decision_id": decision_id, "application_id": decision.application_id,
        "decision": decision.action, "score": decision.score, "model_version": decision.model_version,
        "reasons": [{"code": r.code, "text": r.text, "feature": r.feature, "value": r.value} for r in decision.reasons],
        "missing": decision.missing,
    }


def build_host(settings, metrics_registry) -> DeciderHost | None:
    """The host of the settings' application deciders (None when it hosts none)."""
    from mlp_platform.registry.tracking_server import read_only_registry
    from mlp_platform.runtime.loading import registry_loader

    deciders = hosted_deciders(settings.deciders_dir, settings.serving.deciders)
    if not deciders:
        return None
    keys: dict[str, list[str]] = {}
    for decider, key in settings.serving.decider_api_keys:
        keys.setdefault(decider, []).append(key)
    unknown = sorted(set(keys) - {d.name for d in deciders} - {DEFAULT_DECIDER})
    if unknown:
        raise ValueError(f"MLP_DECIDER_API_KEYS names decider(s) this process does not host: {unknown}")
    registries: dict[str, object] = {}

    def champion(decl: DeciderDeclaration) -> str | None:
        registry = registries.get(decl.name)
        if registry is None:
            registry = registries[decl.name] = read_only_registry(settings, decl)
        return registry.alias("champion")

    from mlp_platform.registry.roles import routing_path_for

    routing_files = {d.name: RoutingFile(routing_path_for(settings, d)) for d in deciders}

    def routing(decl: DeciderDeclaration):
        file = routing_files[decl.name]  # one per decider: its cache skips unchanged files
        return file.read() if file.path.exists() else None

    # beside the fraud decider's log root (its own chains; the fraud tooling never reads them), one
    # directory per process: decisions-<decider>/<the process's own log directory name>
    host = DeciderHost(deciders, log_root=settings.decision_log_root.parent, log_leaf=settings.decision_log_root.name,
                       monitoring_dir=settings.monitoring_dir, routing=routing,
                       keys={k: tuple(v) for k, v in keys.items()}, admin_keys=settings.serving.admin_keys,
                       loader=lambda decl: registry_loader(settings, settings.serving.scorer_backend, decl,
                                                   batch_kernel="rows"),
                       champion=champion, metrics=DeciderMetrics(metrics_registry),
                       group_commit_ms=settings.serving.log_group_commit_ms)
    host.refresh()
    host.start(settings.serving.reload_interval_s)
    return host
