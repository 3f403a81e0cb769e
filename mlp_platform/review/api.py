"""The review API (``/v1/review/...``) of the scoring service: list, read, claim and resolve cases;
look a decision up.

Roles, from the key presented (``Authorization: Bearer`` or ``X-API-Key``):

* a **reviewer** key (MLP_REVIEWER_KEYS: ``name:decider+decider:key``) reads, claims and resolves the
  cases of its deciders; another decider's case answers 404, as if it did not exist;
* a **compliance** key (MLP_COMPLIANCE_KEYS) reads cases and decisions of every hosted decider and
  changes nothing;
* scoring and admin keys are not review keys (401 here), and review keys are not scoring keys.

The name recorded with an action is the key's, never a field of the request. Each claim and
resolution is appended to the deciding decider's hash-chained decision log inside the database
transaction (:func:`~mlp_platform.review.cases.case_action_record`): the database never holds an
action the log lacks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from mlp_platform.review.cases import (
    Case,
    CaseConflict,
    CaseError,
    CaseNotFound,
    CaseStore,
    case_action_record,
    engine_for,
)
from mlp_platform.serving.service import key_matches

_BEARER = HTTPBearer(auto_error=False, scheme_name="review key")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="review key (header)")


@dataclass(frozen=True)
class Principal:
    name: str
    role: Literal["reviewer", "compliance"]
    deciders: tuple[str, ...]

    @property
    def may_act(self) -> bool:
        return self.role == "reviewer"


@dataclass
class DeskDecider:
    """What the desk needs of one hosted decider: its declaration, its decision log and, for the
    reviewer's page, the training populations of a model version this process has loaded (the
    typical values its features are shown against; empty for a version not loaded here)."""

    declaration: Any  # DeciderDeclaration
    log: Any  # DecisionLog
    populations: Callable[[str], Mapping[str, Any]] = lambda _version: {}


class NotAllowed(PermissionError):
    """A compliance key asked to act on a case (it only reads)."""


@dataclass
class ReviewDesk:
    """The review desk of one scoring process: who may do what, and the actions on cases (shared by
    the API and the reviewer's pages, which only translate the refusals)."""

    store: CaseStore
    deciders: dict[str, DeskDecider]
    reviewers: tuple[tuple[str, tuple[str, ...], str], ...] = ()
    compliance: tuple[tuple[str, str], ...] = ()
    metrics: Any = None  # ReviewMetrics
    opener: Any = None  # CaseOpener
    _keys: dict[str, Principal] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        hosted = tuple(self.deciders)
        for name, wanted, key in self.reviewers:
            self._keys[key] = Principal(name, "reviewer", tuple(d for d in wanted if d in hosted))
        for name, key in self.compliance:
            self._keys[key] = Principal(name, "compliance", hosted)

    def principal(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        found = None
        for key, principal in self._keys.items():  # every key compared: constant time in the match
            if key_matches(presented, (key,)):
                found = principal
        return found

    @property
    def ready(self) -> bool:
        """False until the review database answered (meanwhile the cases wait in the decision log)."""
        return self.opener is None or self.opener.ready.is_set()

    def scoped(self, who: Principal, decider: str | None) -> list[str]:
        """The deciders a listing covers (CaseNotFound for a decider this key does not see)."""
        if not decider:
            return list(who.deciders)
        if decider not in who.deciders:
            raise CaseNotFound(f"no decider {decider!r} for this key")
        return [decider]

    def visible(self, case_id: str, who: Principal) -> Case:
        """The case, if this key sees its decider (otherwise CaseNotFound: as if it did not exist)."""
        case = self.store.get(case_id)
        if case.decider not in who.deciders:
            raise CaseNotFound(case_id)
        return case

    def allowed(self, case: Case) -> dict[str, Any]:
        """What a reviewer may record on this case (the page's form)."""
        declaration = self.deciders[case.decider].declaration
        return {"outcomes": {k: v.model_dump() for k, v in declaration.review.outcomes.items()},
                "overrides": [a for a in declaration.policy.actions if a != case.decision]}

    def _audit(self, decider: str, action: str) -> Callable[[Case], None]:
        log = self.deciders[decider].log
        return lambda case: log.append(case_action_record(case, action))

    def claim(self, case_id: str, who: Principal) -> Case:
        if not who.may_act:
            raise NotAllowed("a compliance key reads; it does not act on cases")
        case = self.visible(case_id, who)
        return self.store.claim(case_id, who.name, who.deciders, audit=self._audit(case.decider, "claim"))

    def resolve(self, case_id: str, who: Principal, *, outcome: str, comment: str = "", override: str | None = None,
                reason: str | None = None) -> Case:
        if not who.may_act:
            raise NotAllowed("a compliance key reads; it does not act on cases")
        case = self.visible(case_id, who)
        declaration = self.deciders[case.decider].declaration
        done = self.store.resolve(case_id, who.name, who.deciders, declaration.review, outcome=outcome,
                                  comment=comment, override=override, reason=reason,
                                  policy_actions=declaration.policy.actions, audit=self._audit(case.decider, "resolve"))
        if self.metrics is not None:
            self.metrics.resolutions.labels(done.decider, done.outcome, "yes" if done.override_decision else "no").inc()
        return done

    def lookup(self, decision_id: str, who: Principal) -> dict[str, Any]:
        """A decision by id (the compliance lookup): its logged record, its case if it has one, and the
        case's actions in this process's log. CaseNotFound when no decider of this key logged it."""
        for name in who.deciders:
            log = self.deciders[name].log
            record = log.get(decision_id)
            if record is None or record.get("kind") != "decision":
                continue
            try:
                case = self.store.get(decision_id)
            except CaseNotFound:
                case = None
            actions = []
            if case is not None:
                for revision in range(1, case.revision + 1):
                    for action in ("claim", "resolve"):
                        found = log.get(f"{decision_id}.{action}.{revision}")
                        if found is not None:
                            actions.append(found)
            return {"decider": name, "decision": record, "case": case, "actions": actions}
        raise CaseNotFound(f"no decision {decision_id}")


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: str = Field(min_length=1, max_length=32)
    comment: str = Field("", max_length=2000)
    override: str | None = Field(None, max_length=20)
    reason: str | None = Field(None, max_length=2000)


def cursor(text: str | None) -> tuple[dt.datetime, str] | None:
    """The (decided_at, case_id) a ``next_after`` token names (CaseError when it names nothing)."""
    if not text:
        return None
    at, sep, case_id = text.partition("|")
    try:
        when = dt.datetime.fromisoformat(at)
    except ValueError:
        when = None
    if not sep or not case_id or when is None:
        raise CaseError("after: the next_after token of the previous page")
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)), case_id


def review_router(desk: ReviewDesk) -> APIRouter:
    router = APIRouter(prefix="/v1/review", tags=["review"])

    def principal(bearer: HTTPAuthorizationCredentials | None = Security(_BEARER),
                  x_api_key: str | None = Security(_API_KEY)) -> Principal:
        presented = bearer.credentials.strip() if bearer is not None else x_api_key
        found = desk.principal(presented)
        if found is None:
            raise HTTPException(401, "missing or invalid review key", headers={"WWW-Authenticate": "Bearer"})
        if not desk.ready:
            raise HTTPException(503, "the review database is not reachable yet; cases wait in the decision log",
                                headers={"Retry-After": "5"})
        return found

    @router.get("/cases")
    def list_cases(decider: str | None = None, status: str = Query("open,claimed", max_length=40),
                   limit: int = Query(50, ge=1, le=500), after: str | None = Query(None, max_length=200),
                   who: Principal = Depends(principal)) -> dict[str, Any]:
        statuses = [s.strip() for s in status.split(",") if s.strip()]
        with refusals_as_http():
            page = desk.store.queue(desk.scoped(who, decider), statuses=statuses, limit=limit, after=cursor(after))
        return {"cases": [c.as_json() for c in page], "next_after": next_after(page, limit)}

    @router.get("/cases/{case_id}")
    def get_case(case_id: str, who: Principal = Depends(principal)) -> dict[str, Any]:
        with refusals_as_http():
            case = desk.visible(case_id, who)
        return {**case.as_json(), "allowed": desk.allowed(case)}

    @router.post("/cases/{case_id}/claim")
    def claim(case_id: str, who: Principal = Depends(principal)) -> dict[str, Any]:
        with refusals_as_http():
            return desk.claim(case_id, who).as_json()

    @router.post("/cases/{case_id}/resolve")
    def resolve(case_id: str, body: ResolveIn, who: Principal = Depends(principal)) -> dict[str, Any]:
        with refusals_as_http():
            return desk.resolve(case_id, who, outcome=body.outcome, comment=body.comment, override=body.override,
                                reason=body.reason).as_json()

    @router.get("/decisions/{decision_id}")
    def decision(decision_id: str, who: Principal = Depends(principal)) -> dict[str, Any]:
        """A decision by id (the compliance lookup): its logged record, its case if it has one, and the
        case's actions in this process's log."""
        with refusals_as_http():
            found = desk.lookup(decision_id, who)
        return {**found, "case": found["case"].as_json() if found["case"] else None}

    return router


def next_after(page: list[Case], limit: int) -> str | None:
    """The cursor of the page after a full ``page`` (None: it was the last)."""
    if len(page) < limit or not page:
        return None
    return f"{page[-1].decided_at.isoformat()}|{page[-1].case_id}"


@contextlib.contextmanager
def refusals_as_http() -> Iterator[None]:
    """The desk's refusals as HTTP answers: 404 (not there, or not this key's), 403 (a compliance key
    acting), 409 (the case's state), 422 (the request)."""
    try:
        yield
    except CaseNotFound as err:
        text = str(err)
        raise HTTPException(404, text if text.startswith("no ") else f"no case {text}") from None
    except NotAllowed as err:
        raise HTTPException(403, str(err)) from None
    except CaseConflict as err:
        raise HTTPException(409, str(err)) from None
    except CaseError as err:
        raise HTTPException(422, str(err)) from None


def build_desk(settings, *, service=None, host=None, metrics_registry=None) -> ReviewDesk | None:
    """The review desk of a scoring process: the hosted deciders that open cases (the fraud service's
    and the application deciders'), the case database, the opener (started: its reconcile reads the
    logs from their recorded positions) and the review keys. None when no hosted decider opens cases."""
    from mlp_platform.deciders.declaration import load_decider
    from mlp_platform.review.metrics import ReviewMetrics
    from mlp_platform.review.opener import CaseOpener

    deciders: dict[str, DeskDecider] = {}
    fraud = load_decider(settings.deciders_dir)  # the transaction service's decider
    if service is not None and fraud.review.open_for:
        deciders[fraud.name] = DeskDecider(fraud, service.decisions, _service_populations(service))
    if host is not None:
        for name in host.names:
            slot = host.slot(name)
            if slot.declaration.review.open_for:
                deciders[name] = DeskDecider(slot.declaration, slot.log, _slot_populations(slot))
    if not deciders:
        return None
    # a review database that is down at start must not stop the scoring: the opener migrates it
    # (first here, then from its thread until it answers) and the review API answers 503 meanwhile
    store = CaseStore(engine_for(settings.review_database))
    metrics = ReviewMetrics(metrics_registry) if metrics_registry is not None else None
    opener = CaseOpener(store, {n: d.declaration.review.open_for for n, d in deciders.items()},
                        {str(d.log.directory): d.log for d in deciders.values()}, metrics=metrics,
                        sla_hours={n: d.declaration.review.sla_hours for n, d in deciders.items()})
    fraud_desk = deciders.get(fraud.name) if service is not None else None
    if fraud_desk is not None:
        service.case_opener, service.opens_cases = opener, frozenset(fraud_desk.declaration.review.open_for)
    if host is not None:
        host.case_opener = opener
    opener.ensure_schema()
    opener.start()
    return ReviewDesk(store, deciders, settings.serving.reviewer_keys, settings.serving.compliance_keys,
                      metrics=metrics, opener=opener)


def _service_populations(service) -> Callable[[str], Mapping[str, Any]]:
    def populations(version: str) -> Mapping[str, Any]:
        model = service.pool.snapshot[1].get(version)
        return model.populations if model is not None else {}
    return populations


def _slot_populations(slot) -> Callable[[str], Mapping[str, Any]]:
    def populations(version: str) -> Mapping[str, Any]:
        runtime = slot.loaded.get(version)
        return getattr(runtime, "populations", {}) if runtime is not None else {}
    return populations
