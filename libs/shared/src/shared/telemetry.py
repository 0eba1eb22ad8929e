"""Traces and logs: OpenTelemetry configured from the standard ``OTEL_*`` variables, JSON logs.

No exporter runs unless ``OTEL_TRACES_EXPORTER`` or an ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variable
asks for one, so a developer's laptop and the test suite send nothing anywhere.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import structlog
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

if TYPE_CHECKING:
    from collections.abc import Mapping

    from litestar.types import ASGIApp, Receive, Scope, Send
    from structlog.typing import EventDict, WrappedLogger

__all__ = ("RouteSpanNameMiddleware", "add_trace_ids", "configure_logging", "configure_tracing")

_configured_service: str | None = None


def configure_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> None:
    """Install the process's tracer provider once, with an OTLP exporter when the env asks for it."""
    global _configured_service  # noqa: PLW0603 - one provider per process is OpenTelemetry's own rule
    if _configured_service is not None:
        return
    env = os.environ if environ is None else environ
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    wants_otlp = env.get("OTEL_TRACES_EXPORTER", "").lower() == "otlp" or any(
        env.get(name) for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if wants_otlp and env.get("OTEL_TRACES_EXPORTER", "").lower() != "none":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured_service = service_name


class RouteSpanNameMiddleware(ASGIMiddleware):
    """Name the server span ``GET /orders/{order_id}``, not the raw path, to keep cardinality low.

    A middleware rather than a ``before_request`` hook, so that answers from guards and
    authentication (401, 403) are named by their route too.
    """

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Rename the current span, then call the next app."""
        span = trace.get_current_span()
        if span.is_recording():
            template = scope.get("path_template") or scope["path"]
            span.update_name(f"{scope.get('method', 'GET')} {template}")
            span.set_attribute("http.route", template)
        await next_app(scope, receive, send)


def add_trace_ids(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Structlog processor: put the current ``trace_id`` and ``span_id`` on every log line."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


def configure_logging(*, level: str = "INFO", json: bool = True) -> None:
    """Structlog for the process: JSON lines with trace ids, or readable lines for a console."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_trace_ids,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
