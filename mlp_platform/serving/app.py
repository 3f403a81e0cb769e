"""The scoring API (FastAPI): /v1/score, /v1/decisions/{id}, /healthz, /readyz, /metrics, admin reload.

Bad input never produces a 500: a critical field missing or invalid is a 422 naming the field,
an oversized body a 413, a missing or wrong key a 401.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlp_platform.serving.api_models import DecisionTrace, ScoreOut, TransactionIn
from mlp_platform.serving.service import ScoringService, key_matches

log = logging.getLogger("mlp.serving")


def _presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return x_api_key


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
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(service: ScoringService) -> FastAPI:
    config, metrics = service.config, service.metrics

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await service.close()

    app = FastAPI(title="mlp-platform scoring API", version="1", lifespan=lifespan,
                  description="Real-time fraud scoring: decision, score, model version, reason codes.")

    async def require_scoring_key(authorization: str | None = Header(default=None),
                            x_api_key: str | None = Header(default=None)) -> None:
        if not key_matches(_presented_key(authorization, x_api_key), config.api_keys + config.admin_keys):
            metrics.errors.labels("unauthorized").inc()
            raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})

    async def require_admin_key(authorization: str | None = Header(default=None),
                          x_api_key: str | None = Header(default=None)) -> None:
        if not key_matches(_presented_key(authorization, x_api_key), config.admin_keys):
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
              summary="Score one transaction and decide")
    async def score(transaction: TransactionIn) -> ScoreOut:
        try:
            out = await service.score(transaction)
        except LookupError as err:
            metrics.requests.labels("/v1/score", "503").inc()
            raise HTTPException(503, f"not ready: {err}") from err
        metrics.requests.labels("/v1/score", "200").inc()
        return out

    @app.get("/v1/decisions/{decision_id}", response_model=DecisionTrace,
             dependencies=[Depends(require_scoring_key)], summary="The stored decision trace, explained")
    async def decision(decision_id: str) -> DecisionTrace:
        found = service.explain(decision_id)
        if found is None:
            raise HTTPException(404, f"no decision {decision_id}")
        record, text = found
        return DecisionTrace(decision_id=decision_id, record=record, explanation=text)

    @app.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", summary="A champion is loaded and the feature store answers")
    async def readyz():
        ok, reason = service.ready()
        state, models = service.pool.snapshot
        body = {"ready": ok, "reason": reason, "champion": state.champion, "loaded": sorted(models),
                "routing_revision": state.revision}
        return JSONResponse(status_code=200 if ok else 503, content=body)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/admin/reload", dependencies=[Depends(require_admin_key)],
              summary="Re-read the routing state and load the models it names now")
    async def reload():
        changed = service.pool.refresh()
        service.refresh_periodic()
        state, models = service.pool.snapshot
        return {"changed": changed, "champion": state.champion, "loaded": sorted(models),
                "error": service.pool.last_error}

    return BodyLimit(app, config.max_body_bytes)


def build_service(settings=None) -> ScoringService:
    """The service on the configured store, decision log and registry (used by `mlp serve`)."""
    from mlp_platform.serving.decision_log import DecisionLog
    from mlp_platform.serving.metrics import ServiceMetrics
    from mlp_platform.serving.online_store import store_from_url
    from mlp_platform.serving.routing import RoutingFile
    from mlp_platform.serving.service import ModelPool, ServingConfig, registry_loader
    from mlp_platform.settings import load_settings

    settings = settings or load_settings()
    config = ServingConfig.from_env(settings)
    metrics = ServiceMetrics()
    pool = ModelPool(registry_loader(settings), RoutingFile(config.routing_path), metrics)
    pool.refresh()
    store = store_from_url(config.feature_store_url)
    decisions = DecisionLog(config.decision_log_dir, group_commit_ms=config.log_group_commit_ms)
    service = ScoringService(config, store, decisions, pool, metrics)
    pool.on_tick = service.refresh_periodic
    pool.start(config.reload_interval_s)
    return service


def app_from_env():
    """uvicorn factory: `uvicorn --factory mlp_platform.serving.app:app_from_env`."""
    logging.basicConfig(level=logging.INFO)
    return create_app(build_service())
