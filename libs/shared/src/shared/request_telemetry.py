"""Each HTTP request's server span, Prometheus metrics and access-log line, recorded by one wrapper.

One ASGI wrapper around the whole app instead of four middlewares (OpenTelemetry's ASGI middleware,
Litestar's Prometheus middleware, a span-renaming and an access-log middleware). Each of those wrapped
``send``, read the request again and built its own attribute or label dictionaries; together they
were a quarter of a cached read's CPU (issue 15's profile). This one reads the scope once, keeps the
Prometheus series of each (method, route, status) it has seen, and does nothing more for a span the
sampler dropped than create it.

It wraps routing, so a request no route matches (404, or 405 for a method the path lacks) gets its
span, its metrics and its line too. The route template, the caller and the status are read once
the app has answered: the router writes ``path_template`` into the scope, authentication ``user``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import structlog
from litestar.enums import ScopeType
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ("UNMATCHED_ROUTE", "HttpMetrics", "RequestTelemetry", "access_log")

access_log = structlog.get_logger("access")

UNMATCHED_ROUTE: Final = "(unmatched)"
"""The ``path`` label of a request no route matched: its raw path would be unbounded label values."""

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
_OTHER_METHOD = "_OTHER"  # OpenTelemetry's name for a method it does not know; also bounds the label
_NO_PARENT = otel_context.Context()


class HttpMetrics:
    """A service's HTTP metrics, under the names Litestar's Prometheus middleware used.

    ``<service>_requests_total``, ``<service>_request_duration_seconds`` and
    ``<service>_requests_error_total`` (5xx) by ``method``, ``path`` (the route template),
    ``status_code`` and ``app_name``; ``<service>_requests_in_progress`` by ``method`` and ``app_name``.
    """

    _made: Final[dict[str, HttpMetrics]] = {}

    def __init__(self, service: str) -> None:
        labels = ("method", "path", "status_code", "app_name")
        self.requests = Counter(f"{service}_requests_total", "Requests answered", labels)
        self.duration = Histogram(f"{service}_request_duration_seconds", "Request duration, in seconds", labels)
        self.errors = Counter(f"{service}_requests_error_total", "Requests answered with a 5xx status", labels)
        self.in_progress = Gauge(f"{service}_requests_in_progress", "Requests being answered", ("method", "app_name"))

    @classmethod
    def of(cls, service: str) -> HttpMetrics:
        """The service's metrics, made once per process (the registry refuses a name twice; tests build apps often)."""
        if service not in cls._made:
            cls._made[service] = cls(service)
        return cls._made[service]


class _Series:
    """The metric children of one (method, route, status): labels are resolved once, not per request."""

    __slots__ = ("duration", "errors", "requests")

    def __init__(self, metrics: HttpMetrics, labels: tuple[str, str, str, str], *, failed: bool) -> None:
        self.requests = metrics.requests.labels(*labels)
        self.duration = metrics.duration.labels(*labels)
        self.errors = metrics.errors.labels(*labels) if failed else None


class RequestTelemetry:
    """Wraps an ASGI app: a SERVER span, the HTTP metrics and an access-log line for every HTTP request.

    The span continues the caller's trace (the global propagator's headers, W3C ``traceparent`` by
    default) and is named ``GET /orders/{order_id}`` by route template (``GET`` alone when no route
    matched). The line names method, route (or the raw path, escaped, when none matched), status,
    duration and user id; ``shared.telemetry.add_trace_ids`` adds the span's trace id. Paths under
    ``exclude`` (health probes, the docs) get none of the three.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        exclude: tuple[str, ...] = (),
        access_log: bool = True,
        access_logger: Any = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self.exclude = exclude
        self.access_log = access_log
        self.access_logger = access_logger
        """What writes the lines (anything with structlog's ``info``); by default the ``access`` logger."""
        self.tracer = trace.get_tracer("shared.request_telemetry", tracer_provider=tracer_provider)
        self.metrics = HttpMetrics.of(service)
        self._series: dict[tuple[str, str, int], _Series] = {}
        self._in_progress: dict[str, Any] = {}
        self._propagated = frozenset(name.encode("latin-1") for name in propagate.get_global_textmap().fields)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the request through the app inside its span; then record its metrics and its line."""
        if scope["type"] != ScopeType.HTTP or scope["path"].startswith(self.exclude):
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else _OTHER_METHOD
        status = 500  # what the server answers when the app fails before starting a response

        async def send_and_remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        span = self.tracer.start_span(
            method,
            context=self._parent(scope),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        in_progress = self._in_progress.get(method)
        if in_progress is None:
            in_progress = self._in_progress[method] = self.metrics.in_progress.labels(method, self.service)
        in_progress.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_remember_status)
        except BaseException as error:
            if span.is_recording():
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            duration = time.perf_counter() - started
            in_progress.dec()
            route: str | None = scope.get("path_template")
            self._end_span(span, method, route, status)
            self._count(method, route, status, duration)
            if self.access_log:
                self._log(scope, method, route, status, duration)
            otel_context.detach(token)
            span.end()

    def _parent(self, scope: Scope) -> otel_context.Context:
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in self._propagated
        }
        # No propagation header: a new trace, whatever context the server's task happens to carry.
        return propagate.extract(carrier, context=_NO_PARENT) if carrier else _NO_PARENT

    @staticmethod
    def _end_span(span: trace.Span, method: str, route: str | None, status: int) -> None:
        if not span.is_recording():
            return
        span.set_attribute("http.response.status_code", status)
        if route is not None:
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
        if status >= 500:  # noqa: PLR2004 - a server error; a 4xx is the client's, not the span's
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))

    def _count(self, method: str, route: str | None, status: int, duration: float) -> None:
        key = (method, route or UNMATCHED_ROUTE, status)
        series = self._series.get(key)
        if series is None:
            labels = (method, key[1], str(status), self.service)
            series = self._series[key] = _Series(self.metrics, labels, failed=status >= 500)  # noqa: PLR2004
        series.requests.inc()
        series.duration.observe(duration)
        if series.errors is not None:
            series.errors.inc()

    def _log(self, scope: Scope, method: str, route: str | None, status: int, duration: float) -> None:
        logger = self.access_logger or access_log
        duration_ms = round(duration * 1000, 1)
        user_id = getattr(scope.get("user"), "id", None)
        if route is not None:
            logger.info(
                f"{method} {route} {status} {duration_ms}ms",
                method=method,
                route=route,
                status=status,
                duration_ms=duration_ms,
                user_id=str(user_id) if user_id is not None else None,
            )
            return
        # No route matched: the path is the client's own text, escaped so a newline cannot forge a line.
        path = scope["path"][:200].encode("unicode_escape").decode("ascii")
        logger.info(
            f"{method} {path} {status} {duration_ms}ms",
            method=method,
            route=None,
            path=path,
            status=status,
            duration_ms=duration_ms,
        )
