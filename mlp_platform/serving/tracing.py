"""Request tracing of the scoring service (OpenTelemetry spans), off by default.

One ``score`` span per scoring request (kind SERVER) with child spans ``validation``,
``feature_fetch``, ``model_score`` and ``decision_log_append``. Attributes have bounded values only
(model version, routing arm, decision, degraded flag, counts): never a raw identifier or amount.

Switched on by the environment (:func:`tracer_from_env`):

* ``MLP_TRACING`` unset, empty, ``off`` or ``none``: tracing is off. The service then holds no tracer,
  every span site is a ``None`` check, and neither the OpenTelemetry SDK nor an exporter is imported
  (this module imports them only inside the functions that build a tracer). FastAPI itself imports
  the OpenTelemetry *API* for its own native telemetry, which stays disabled unless a global
  provider is configured; the scoring fast path does not go through FastAPI.
* ``MLP_TRACING=otlp``: OTLP over HTTP/protobuf, batched, to the endpoint of the standard variables
  (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``,
  default ``http://localhost:4318/v1/traces``; headers, timeout, compression likewise).
* ``MLP_TRACING=console``: spans printed as JSON to stdout (local debugging).

``OTEL_SERVICE_NAME`` names the service (default ``mlp-scoring``). Tests build a tracer on an
in-memory exporter with :func:`request_tracer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OFF_VALUES = ("", "off", "none", "0", "false")
MODES = ("otlp", "console")


class RequestTracer:
    """What the serving path needs from OpenTelemetry: root and child spans, error status, shutdown."""

    def __init__(self, provider: Any, tracer: Any):
        from opentelemetry import trace

        self.provider, self._tracer = provider, tracer
        self._in_context = trace.set_span_in_context
        self._server, self._internal = trace.SpanKind.SERVER, trace.SpanKind.INTERNAL
        self._error = trace.StatusCode.ERROR
        self._status = trace.Status

    def root(self, name: str):
        """A new root span (a scoring request); the caller ends it."""
        return self._tracer.start_span(name, kind=self._server)

    def child(self, parent, name: str):
        """A child span of ``parent``; the caller ends it."""
        return self._tracer.start_span(name, context=self._in_context(parent), kind=self._internal)

    def failed(self, span, description: str) -> None:
        """Mark a span as failed (status ERROR); it still has to be ended."""
        span.set_status(self._status(self._error, description))

    def shutdown(self) -> None:
        """Flush queued spans and stop the exporter (service shutdown)."""
        self.provider.shutdown()


def request_tracer(exporter: Any, *, batch: bool = True, service_name: str | None = None) -> RequestTracer:
    """A tracer exporting to ``exporter`` (batched off the request path, or one by one when
    ``batch=False``), with its own provider (the process-global provider is left alone)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    name = service_name or "mlp-scoring"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return RequestTracer(provider, provider.get_tracer("mlp_platform.serving"))


def tracer_from_env(environ: Mapping[str, str]) -> RequestTracer | None:
    """The tracer an environment mapping's ``MLP_TRACING`` asks for (tests; the service goes through
    the settings module and :func:`tracer_for`)."""
    return tracer_for(environ.get("MLP_TRACING", ""), environ.get("OTEL_SERVICE_NAME") or None)


def tracer_for(mode: str, service_name: str | None = None) -> RequestTracer | None:
    """The tracer ``mode`` (``MLP_TRACING``) asks for, or None when tracing is off (see the module
    docstring). An unknown value is an error naming it (a typo must not silently disable tracing)."""
    mode = mode.strip().lower()
    if mode in OFF_VALUES:
        return None
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return request_tracer(OTLPSpanExporter(), service_name=service_name)
    if mode == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return request_tracer(ConsoleSpanExporter(), service_name=service_name)
    raise ValueError(f"MLP_TRACING={mode!r}: expected one of {', '.join(MODES)} (or unset/off to disable)")
