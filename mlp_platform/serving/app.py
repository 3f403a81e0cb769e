"""The scoring API (FastAPI): /v1/score, /v1/decisions/{id}, /healthz, /readyz, /metrics, admin reload.

Bad input never produces a 500: a critical field missing or invalid is a 422 naming the field,
an oversized body a 413, a missing or wrong key a 401.

``POST /v1/score`` is served by :class:`ScoringFastPath`, a raw ASGI layer in front of FastAPI:
authenticated, well-formed requests are read, validated in one pass from the JSON bytes
(``TransactionIn.model_validate_json``), scored and answered with orjson-encoded bytes, without
FastAPI's routing, dependency solving and double response validation. Anything else on that route
(a missing/wrong key, a body that does not validate, a non-JSON content type) is handed, body
replayed, to the FastAPI route, which answers exactly as before (same status codes, error bodies
and metrics). FastAPI keeps every other route and the OpenAPI schema.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from orjson import dumps as orjson_dumps
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from mlp_platform.serving.api_models import (
    ApplicationDecisionOut,
    ApplicationIn,
    CounterOfferOut,
    DecisionTrace,
    ErrorOut,
    HealthOut,
    ReadyOut,
    ReloadOut,
    ScoreOut,
    TransactionIn,
    ValidationErrorOut,
)
from mlp_platform.serving.online_store import EventTimeRejected, IdempotencyConflict
from mlp_platform.serving.service import ScoringService, key_matches

log = logging.getLogger("mlp.serving")


#: The two ways to present a key, declared as the document's security schemes (either one suffices).
_BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description="Authorization: Bearer <key>")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="X-API-Key: <key>")


def _presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return x_api_key


def _credentials(bearer: HTTPAuthorizationCredentials | None, x_api_key: str | None) -> str | None:
    """The key FastAPI's security schemes found (the fast path reads the same headers itself)."""
    return bearer.credentials.strip() if bearer is not None else x_api_key


class BodyLimit:
    """ASGI middleware: refuse bodies above the limit with 413 (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_413(send, self.max_bytes)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            return await self.app(scope, limited, send)
        except _TooLarge:
            return await _send_413(send, self.max_bytes)


class _TooLarge(Exception):
    pass


async def _send_413(send, limit: int) -> None:
    body = f'{{"detail":"request body larger than {limit} bytes"}}'.encode()
    await _send_json_bytes(send, 413, body)


async def _send_json_bytes(send, status: int, body: bytes, extra_headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra_headers]})
    await send({"type": "http.response.body", "body": body})


#: An Idempotency-Key header: 1-128 printable ASCII characters.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def valid_idempotency_key(value: str) -> bool:
    return _IDEMPOTENCY_KEY.match(value) is not None


def event_time_error(err: EventTimeRejected) -> dict:
    """The 422 body of an out-of-bounds event time (the shape of every 422: ValidationErrorOut)."""
    return {"detail": [{"field": "event_time", "message": str(err)}], "fields": ["event_time"],
            "message": f"invalid or missing: event_time ({err.bound} bound {err.limit.isoformat()} UTC)"}


def _is_json_content_type(value: bytes | None) -> bool:
    """As FastAPI decides whether to parse a body as JSON: no content type, or application/json or
    application/*+json."""
    if value is None:
        return True
    mime = value.split(b";", 1)[0].strip().lower()
    return mime == b"application/json" or (mime.startswith(b"application/") and mime.endswith(b"+json"))


class ScoringFastPath:
    """Raw ASGI in front of the FastAPI app for ``POST /v1/score`` (see the module docstring).

    Same duties as the FastAPI route: body limit (413), API key (401), validation (422 naming the
    field), 503 when no model is loaded, request metrics. The happy path is handled here; every
    refusal except 413 is delegated to the FastAPI route with the body replayed, so error bodies,
    their order of checks and metrics are the route's own.
    """

    def __init__(self, app, service: ScoringService, max_bytes: int):
        self.app, self.service, self.max_bytes = app, service, max_bytes
        self._metrics = service._bound_metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/score" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        authorization = api_key = content_type = declared = idempotency_key = None
        for name, value in scope["headers"]:
            if name == b"idempotency-key":
                idempotency_key = value if idempotency_key is None else idempotency_key
            elif name == b"authorization":
                authorization = value if authorization is None else authorization
            elif name == b"x-api-key":
                api_key = value if api_key is None else api_key
            elif name == b"content-type":
                content_type = value if content_type is None else content_type
            elif name == b"content-length":
                declared = value
        limit = self.max_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_413(send, limit)
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before sending its body
                return None
            body += message.get("body", b"")
            if len(body) > limit:
                return await _send_413(send, limit)
            if not message.get("more_body", False):
                break
        service = self.service
        config = service.config
        presented = _presented_key(authorization.decode("latin-1") if authorization is not None else None,
                                   api_key.decode("latin-1") if api_key is not None else None)
        if not key_matches(presented, config.api_keys + config.admin_keys) or not _is_json_content_type(content_type):
            return await self._delegate(scope, receive, send, body)
        if idempotency_key is not None:
            idempotency_key = idempotency_key.decode("latin-1")
            if not valid_idempotency_key(idempotency_key):
                return await self._delegate(scope, receive, send, body)  # the route's 422 naming the header
        tracer = service.tracer
        span = tracer.root("score") if tracer is not None else None
        try:
            child = tracer.child(span, "validation") if span is not None else None
            try:
                request = TransactionIn.model_validate_json(body)
            except ValidationError as err:
                if child is not None:  # field names only, never values
                    tracer.failed(child, "invalid or missing: " + ", ".join(sorted(
                        {".".join(str(p) for p in e["loc"]) or "body" for e in err.errors()})))
                    child.end()
                    tracer.failed(span, "invalid request")
                return await self._delegate(scope, receive, send, body)  # the route's 422 naming the field
            txn, defaults = request.canonical()
            if child is not None:
                child.set_attribute("mlp.defaults_applied", len(defaults))
                child.end()
            try:
                result = await service.score_canonical(txn, defaults, span, idempotency_key)
            except LookupError as err:
                self._metrics.request("/v1/score", "503").inc()
                if span is not None:
                    tracer.failed(span, "not ready")
                return await _send_json_bytes(send, 503, orjson_dumps({"detail": f"not ready: {err}"}))
            except EventTimeRejected as err:
                self._metrics.request("/v1/score", "422").inc()
                if span is not None:
                    tracer.failed(span, "event_time out of bounds")
                return await _send_json_bytes(send, 422, orjson_dumps(event_time_error(err)))
            except IdempotencyConflict as err:
                self._metrics.request("/v1/score", "409").inc()
                if span is not None:
                    tracer.failed(span, "idempotency conflict")
                return await _send_json_bytes(send, 409, orjson_dumps({"detail": str(err)}),
                                              [(b"retry-after", b"1")] if err.in_progress else ())
            self._metrics.request("/v1/score", "200").inc()
            if result["replayed"]:
                return await _send_json_bytes(send, 200, orjson_dumps(result), [(b"idempotent-replayed", b"true")])
            return await _send_json_bytes(send, 200, orjson_dumps(result))
        finally:
            if span is not None:
                span.end()

    async def _delegate(self, scope, receive, send, body: bytes):
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


_401 = {"model": ErrorOut, "description": "Missing or invalid API key (Authorization: Bearer or X-API-Key)"}
_413 = {"model": ErrorOut, "description": "Request body larger than the limit (64 KiB by default)"}
_422 = {"model": ValidationErrorOut,
        "description": "A critical field is missing or invalid, or event_time is out of bounds: every "
                       "offending field is named"}
SCORE_RESPONSES: dict = {
    200: {"description": "The decision (``replayed`` true: the original decision of a retry)",
          "headers": {"Idempotent-Replayed": {"description": "true when the answer is a replay of the original "
                                                             "decision", "schema": {"type": "string"}}}},
    401: _401, 413: _413, 422: _422,
    409: {"model": ErrorOut, "description": "The transaction_id (or Idempotency-Key) was already used with a "
                                            "different request, or its first request is still being decided "
                                            "(then with Retry-After)"},
    503: {"model": ErrorOut, "description": "No model loaded yet"},
}
DECISION_RESPONSES: dict = {401: _401, 404: {"model": ErrorOut, "description": "No decision with this id"},
                            422: _422}
METRICS_RESPONSES: dict = {200: {"description": "Prometheus text exposition format",
                                 "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}}


def create_app(service: ScoringService, fast_path: bool = True, host=None, desk=None):
    """The ASGI app: FastAPI behind the body limit, with :class:`ScoringFastPath` in front of it for
    ``POST /v1/score`` (``fast_path=False``: FastAPI serves that route too; same contract).
    ``host``: the application deciders this process also serves (a
    :class:`~mlp_platform.serving.deciders.DeciderHost`), under ``/v1/deciders/{name}/...``;
    ``desk``: the review desk (:mod:`mlp_platform.review.api`), under ``/v1/review/...``."""
    config, metrics = service.config, service.metrics

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await service.close()
        if host is not None:
            host.close()

    app = FastAPI(title="mlp-platform scoring API", version="1", lifespan=lifespan,
                  description="Real-time fraud scoring: decision, score, model version, reason codes.")

    async def require_scoring_key(bearer: HTTPAuthorizationCredentials | None = Security(_BEARER),
                                  x_api_key: str | None = Security(_API_KEY)) -> None:
        if not key_matches(_credentials(bearer, x_api_key), config.api_keys + config.admin_keys):
            metrics.errors.labels("unauthorized").inc()
            raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})

    async def require_admin_key(bearer: HTTPAuthorizationCredentials | None = Security(_BEARER),
                                x_api_key: str | None = Security(_API_KEY)) -> None:
        if not key_matches(_credentials(bearer, x_api_key), config.admin_keys):
            metrics.errors.labels("unauthorized_admin").inc()
            raise HTTPException(401, "missing or invalid admin key", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        fields = sorted({".".join(str(p) for p in e["loc"] if p != "body") or "body" for e in exc.errors()})
        metrics.errors.labels("validation").inc()
        metrics.requests.labels(request.url.path if request.url.path.startswith("/v1/score") else "other",
                                "422").inc()
        detail = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail, "fields": fields,
                                                      "message": f"invalid or missing: {', '.join(fields)}"})

    @app.post("/v1/score", response_model=ScoreOut, dependencies=[Depends(require_scoring_key)],
              summary="Score one transaction and decide", responses=SCORE_RESPONSES)
    async def score(transaction: TransactionIn, response: Response,
                    idempotency_key: str | None = Header(default=None, pattern=IDEMPOTENCY_KEY_PATTERN,
                                                         description="Optional key of this request: a retry "
                                                         "with the same key and body gets the original "
                                                         "decision back (default key: the transaction_id)")):
        tracer = service.tracer
        span = tracer.root("score") if tracer is not None else None
        try:
            out = await service.score(transaction, span, idempotency_key)
        except LookupError as err:
            metrics.requests.labels("/v1/score", "503").inc()
            raise HTTPException(503, f"not ready: {err}") from err
        except EventTimeRejected as err:
            metrics.requests.labels("/v1/score", "422").inc()
            return JSONResponse(status_code=422, content=event_time_error(err))
        except IdempotencyConflict as err:
            metrics.requests.labels("/v1/score", "409").inc()
            raise HTTPException(409, str(err), headers={"Retry-After": "1"} if err.in_progress else None) from err
        finally:
            if span is not None:
                span.end()
        metrics.requests.labels("/v1/score", "200").inc()
        if out.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return out

    app.post("/v1/deciders/fraud/decide", response_model=ScoreOut, dependencies=[Depends(require_scoring_key)],
             summary="The fraud decider: the same route as POST /v1/score", responses=SCORE_RESPONSES)(score)
    if host is not None:
        _decider_routes(app, host, metrics)

    @app.get("/v1/decisions/{decision_id}", response_model=DecisionTrace, responses=DECISION_RESPONSES,
             dependencies=[Depends(require_scoring_key)], summary="The stored decision trace, explained")
    async def decision(decision_id: str) -> DecisionTrace:
        found = service.explain(decision_id)
        if found is None:
            raise HTTPException(404, f"no decision {decision_id}")
        record, text = found
        return DecisionTrace(decision_id=decision_id, record=record, explanation=text)

    @app.get("/healthz", summary="The process is alive", response_model=HealthOut)
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", summary="A champion is loaded and the feature store answers", response_model=ReadyOut,
             responses={503: {"model": ReadyOut, "description": "Not ready (the reason says why)"}})
    async def readyz():
        ok, reason = service.ready()
        state, models = service.pool.snapshot
        body = {"ready": ok, "reason": reason, "champion": state.champion, "loaded": sorted(models),
                "routing_revision": state.revision}
        return JSONResponse(status_code=200 if ok else 503, content=body)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
             responses=METRICS_RESPONSES)
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/admin/reload", dependencies=[Depends(require_admin_key)], response_model=ReloadOut,
              responses={401: {"model": ErrorOut, "description": "Missing or invalid admin key"}, 413: _413},
              summary="Re-read the routing state and load the models it names now")
    async def reload():
        changed = service.pool.refresh()
        service.refresh_periodic()
        if host is not None:
            await asyncio.to_thread(host.refresh)
        state, models = service.pool.snapshot
        return {"changed": changed, "champion": state.champion, "loaded": sorted(models),
                "error": service.pool.last_error}

    _include_review(app, desk)
    limited = BodyLimit(app, config.max_body_bytes)
    if not fast_path:
        return limited
    return ScoringFastPath(limited, service, config.max_body_bytes)


def create_decider_app(host, admin_keys: tuple[str, ...], max_body_bytes: int = 64 * 1024, desk=None):
    """The ASGI app of a process that hosts application deciders only (no fraud decider: one
    Deployment per decider, ``MLP_SERVE_DECIDERS=credit``): ``/v1/deciders/...``, ``/healthz``,
    ``/readyz`` (ready once every hosted decider serves a champion), ``/metrics`` and the admin
    reload. The decider routes, keys and logs are those of :func:`create_app`."""
    from mlp_platform.serving.metrics import ServiceMetrics

    metrics = ServiceMetrics(host.metrics.registry)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        host.close()

    app = FastAPI(title="mlp-platform decider API", version="1", lifespan=lifespan,
                  description=f"Application decisions of {', '.join(host.names)}: decision, score, model version, "
                              "adverse-action reasons, counter-offers.")

    async def require_admin_key(bearer: HTTPAuthorizationCredentials | None = Security(_BEARER),
                                x_api_key: str | None = Security(_API_KEY)) -> None:
        if not key_matches(_credentials(bearer, x_api_key), admin_keys):
            metrics.errors.labels("unauthorized_admin").inc()
            raise HTTPException(401, "missing or invalid admin key", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        metrics.errors.labels("validation").inc()
        detail = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    _decider_routes(app, host, metrics)

    @app.get("/healthz", summary="The process is alive", response_model=HealthOut)
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", summary="Every hosted decider serves a champion")
    async def readyz():
        status = host.status()
        waiting = [n for n, s in status.items() if not s["ready"]]
        body = {"ready": not waiting, "reason": "ok" if not waiting else f"no champion loaded: {', '.join(waiting)}",
                "deciders": status}
        return JSONResponse(status_code=503 if waiting else 200, content=body)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
             responses=METRICS_RESPONSES)
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/admin/reload", dependencies=[Depends(require_admin_key)],
              summary="Load each hosted decider's champion now where it changed")
    async def reload():
        return await asyncio.to_thread(host.refresh)

    _include_review(app, desk)
    return BodyLimit(app, max_body_bytes)


def _decider_routes(app: FastAPI, host, metrics) -> None:
    """``/v1/deciders``: the hosted application deciders, each behind its own keys. The ``name`` path
    parameter admits exactly the hosted names (the document says which)."""
    from fastapi import Path as PathParam

    from mlp_platform.serving.deciders import DeciderUnavailable, UnknownDecider

    names = "|".join(re.escape(n) for n in host.names)
    name_param = PathParam(pattern=f"^({names})$", description=f"A hosted decider: {', '.join(host.names)}")
    responses = {401: _401, 404: {"model": ErrorOut, "description": "No such decider in this process"},
                 413: _413, 422: _422, 503: {"model": ErrorOut, "description": "The decider has no champion loaded"}}

    async def authorized_decider(name: str = name_param,
                                 bearer: HTTPAuthorizationCredentials | None = Security(_BEARER),
                                 x_api_key: str | None = Security(_API_KEY)) -> str:
        """The path's decider, when the presented key may call it."""
        if name not in host.names:
            raise HTTPException(404, f"no decider {name!r} in this process")
        if not host.authorized(name, _credentials(bearer, x_api_key)):
            metrics.errors.labels("unauthorized").inc()
            raise HTTPException(401, f"missing or invalid API key for decider {name!r}",
                                headers={"WWW-Authenticate": "Bearer"})
        return name

    async def run(call, route: str):
        try:
            out = await call
        except DeciderUnavailable as err:
            metrics.requests.labels(route, "503").inc()
            raise HTTPException(503, str(err)) from err
        except UnknownDecider as err:
            metrics.requests.labels(route, "404").inc()
            raise HTTPException(404, str(err)) from err
        metrics.requests.labels(route, "200").inc()
        return JSONResponse(content=out)

    @app.get("/v1/deciders", summary="The application deciders this process hosts and the versions they serve")
    async def deciders() -> dict[str, dict]:
        return host.status()

    @app.post("/v1/deciders/{name}/decide", response_model=ApplicationDecisionOut, responses=responses,
              summary="Decide one application (e.g. approve, counter-offer, refer, decline) with its "
                      "adverse-action reasons")
    async def decide(application: ApplicationIn, name: str = Depends(authorized_decider)):
        return await run(host.decide(name, application.model_dump()), "/v1/deciders/decide")

    @app.post("/v1/deciders/{name}/counter-offer", response_model=CounterOfferOut, responses=responses,
              summary="Decide one application and propose the nearest conditions the policy approves "
                      "(candidates scored in one call, each logged)")
    async def counter_offer(application: ApplicationIn, name: str = Depends(authorized_decider)):
        return await run(host.counter_offer(name, application.model_dump()), "/v1/deciders/counter-offer")

    @app.get("/v1/deciders/{name}/decisions/{decision_id}", response_model=dict[str, Any],
             responses={**responses, 404: {"model": ErrorOut, "description": "No such decider or decision"}},
             summary="A stored application decision (its decision-log record)")
    async def decider_decision(decision_id: str, name: str = Depends(authorized_decider)):
        record = host.explain(name, decision_id)
        if record is None:
            raise HTTPException(404, f"no decision {decision_id} of decider {name!r}")
        return record


def _include_review(app: FastAPI, desk) -> None:
    """The review desk's routes (the API ``/v1/review/...`` and the reviewer's pages ``/review``) when
    the process hosts a decider with cases."""
    if desk is not None:
        from mlp_platform.review.api import review_router
        from mlp_platform.review.pages import review_pages

        app.include_router(review_router(desk))
        app.include_router(review_pages(desk))


def build_service(settings=None, *, clock=None) -> ScoringService:
    """The service on the configured store, decision log and registry (used by `mlp serve`);
    ``clock``: the server clock (seconds since the epoch), for a replay of past traffic (the demo)."""
    from mlp_platform.deciders.declaration import load_decider
    from mlp_platform.runtime.loading import registry_loader
    from mlp_platform.serving.decision_log import DecisionLog
    from mlp_platform.serving.metrics import ServiceMetrics
    from mlp_platform.serving.routing import RoutingFile
    from mlp_platform.serving.service import ModelPool, ServingConfig
    from mlp_platform.serving.store_url import store_from_url
    from mlp_platform.settings import load_settings

    settings = settings or load_settings()
    decider = load_decider(settings.deciders_dir)
    config = ServingConfig.from_settings(settings, decider)
    if clock is not None:
        import dataclasses

        config = dataclasses.replace(config, clock=clock)
    metrics = ServiceMetrics()
    pool = ModelPool(registry_loader(settings, settings.serving.scorer_backend, decider, batch_kernel="rows"),
                     RoutingFile(config.routing_path), metrics)
    pool.refresh()
    store = store_from_url(config.feature_store_url, **config.store_options())
    decisions = DecisionLog(config.decision_log_dir, group_commit_ms=config.log_group_commit_ms,
                            zero_ahead_bytes=config.log_zero_ahead_bytes)
    from mlp_platform.serving.tracing import tracer_for

    service = ScoringService(config, store, decisions, pool, metrics, spec=decider.spec,
                             tracer=tracer_for(settings.serving.tracing, settings.serving.otel_service_name))
    pool.on_tick = service.refresh_periodic
    pool.start(config.reload_interval_s)
    return service


def app_from_env():
    """uvicorn factory: `uvicorn --factory mlp_platform.serving.app:app_from_env`."""
    from mlp_platform.settings import load_settings

    logging.basicConfig(level=logging.INFO)
    from prometheus_client import CollectorRegistry

    from mlp_platform.review.api import build_desk
    from mlp_platform.serving.deciders import build_host, serves_fraud

    settings = load_settings()
    if not serves_fraud(settings.serving.deciders):
        host = build_host(settings, CollectorRegistry())
        if host is None:
            raise ValueError("MLP_SERVE_DECIDERS names no decider to host")
        desk = build_desk(settings, host=host, metrics_registry=host.metrics.registry)
        app = create_decider_app(host, settings.serving.admin_keys, desk=desk)
        log.info("hosting %s only; start-up heap frozen: %d objects", ", ".join(host.names), freeze_start_up_heap())
        return app
    service = build_service(settings)
    host = build_host(settings, service.metrics.registry)
    desk = build_desk(settings, service=service, host=host, metrics_registry=service.metrics.registry)
    app = create_app(service, fast_path=settings.serving.fast_path, host=host, desk=desk)
    log.info("start-up heap frozen: %d objects kept out of full garbage collections", freeze_start_up_heap())
    return app


def freeze_start_up_heap() -> int:
    """Hide everything built at start-up (imported modules, loaded models, the app) from the garbage
    collector's full collections: ``gc.collect()`` then ``gc.freeze()``.

    The service imports a lot (FastAPI, pydantic, NumPy, LightGBM, the MLflow client): about 360,000
    container objects that live as long as the process. Left in the oldest generation, every full
    collection walks them all, and on a shared 2-vCPU machine that took 100-300 ms with the GIL held:
    every request in flight waited (the 150 ms p99 under load in docs/benchmarks.md). The cycle
    collector never looks at frozen objects again; reference counting still frees them. So a start-up
    object that becomes garbage inside a reference cycle (say, a model replaced by a hot swap) stays in
    memory; what is created later (requests, reloaded models) is collected as usual."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
