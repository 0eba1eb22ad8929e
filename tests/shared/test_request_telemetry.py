"""Every HTTP request's server span, metrics and access-log line (``shared.request_telemetry``)."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
import structlog
from litestar import Litestar, get
from litestar.middleware import ASGIMiddleware
from litestar.params import FromPath
from litestar.testing import TestClient
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from orders.app import create_app
from orders.settings import OrdersSettings
from shared import request_telemetry
from shared.auth import AccessTokenSigner, generate_private_key_pem
from shared.request_telemetry import UNMATCHED_ROUTE, RequestTelemetry
from shared.telemetry import JsonInfoLines, add_trace_ids, configure_logging

if TYPE_CHECKING:
    from collections.abc import Iterator

    from litestar.types import ASGIApp, Receive, Scope, Send

USER_ID = uuid.UUID("01a23bc4-0000-7000-8000-000000000001")
REMOTE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE_SPAN = "00f067aa0ba902b7"


@pytest.fixture(autouse=True)
def uncached_access_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh logger for ``capture_logs``: ``configure_logging`` caches a logger at its first use."""
    monkeypatch.setattr(request_telemetry, "access_log", structlog.get_logger("access"))


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The logging configuration as it was before the test (which configures its own)."""
    previous = structlog.get_config()
    yield
    structlog.configure(**previous)


def _recorded_app(provider: TracerProvider, service: str) -> Litestar:
    @get("/orders/{order_id:str}", sync_to_thread=False)
    def read(order_id: FromPath[str]) -> dict[str, str]:
        return {"id": order_id}

    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError

    @get("/health/live", sync_to_thread=False)
    def live() -> str:
        return "ok"

    class SignedIn(ASGIMiddleware):
        # stands in for shared.auth's middleware: the caller is in scope["user"]
        async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
            if b"authorization" in dict(scope["headers"]):
                scope["user"] = SimpleNamespace(id=USER_ID)
            await next_app(scope, receive, send)

    app = Litestar([read, boom, live], middleware=[SignedIn()], logging_config=None)
    app.asgi_handler = RequestTelemetry(
        app.asgi_handler, service=service, exclude=("/health",), tracer_provider=provider
    )
    return app


def _provider(sampler: sampling.Sampler = sampling.ALWAYS_ON) -> tuple[TracerProvider, InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider, exported


def _service() -> str:
    return f"t{uuid.uuid4().hex[:8]}"  # a metric name of its own per test: the registry is the process's


def test_one_access_log_line_per_request_carries_its_route_status_user_and_trace_id() -> None:
    provider, exported = _provider()
    app = _recorded_app(provider, _service())
    with capture_logs(processors=[add_trace_ids]) as logs, TestClient(app) as client:
        assert client.get("/orders/42", headers={"Authorization": "Bearer x"}).status_code == 200
        assert client.get("/orders/43").status_code == 200
        assert client.get("/boom").status_code == 500
        assert client.get("/nowhere").status_code == 404
        assert client.post("/boom").status_code == 405
        assert client.get("/no%0AGET%20/forged%20200").status_code == 404
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/nowhere").status_code == 404
    lines = [entry for entry in logs if entry.get("route") is not None]
    unrouted = [entry for entry in logs if "path" in entry]
    assert [(line["event"].rsplit(" ", 1)[0], line["status"], line["route"]) for line in unrouted] == [
        ("GET /nowhere 404", 404, None),
        ("POST /boom 405", 405, None),
        ("GET /no\\nGET /forged 200 404", 404, None),  # the client's newline, escaped: no forged line
    ]
    assert [(line["method"], line["route"], line["status"], line["user_id"]) for line in lines] == [
        ("GET", "/orders/{order_id}", 200, str(USER_ID)),
        ("GET", "/orders/{order_id}", 200, None),
        ("GET", "/boom", 500, None),
    ]
    assert lines[0]["event"].startswith("GET /orders/{order_id} 200 ")
    server_spans = [span for span in exported.get_finished_spans() if span.kind == SpanKind.SERVER]
    # each line names the trace of its own request's server span (health has neither span nor line)
    assert len(server_spans) == 6
    spans_by_trace = {format(span.context.trace_id, "032x"): span for span in server_spans}
    assert [spans_by_trace[line["trace_id"]].name for line in lines] == [
        "GET /orders/{order_id}",
        "GET /orders/{order_id}",
        "GET /boom",
    ]
    # a request no route matched is named by its method alone: raw paths would be unbounded names
    assert [spans_by_trace[line["trace_id"]].name for line in unrouted] == ["GET", "POST", "GET"]
    assert len({line["trace_id"] for line in logs}) == 6
    assert all(isinstance(line["duration_ms"], float) for line in logs)


def test_the_server_span_continues_the_callers_trace_and_says_what_was_answered() -> None:
    provider, exported = _provider()
    with TestClient(_recorded_app(provider, _service())) as client:
        client.get("/orders/7?secret=1", headers={"traceparent": f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01"})
        client.get("/boom")
        client.get("/orders/8")
    continued, failed, fresh = exported.get_finished_spans()
    assert format(continued.context.trace_id, "032x") == REMOTE_TRACE
    assert continued.parent is not None
    assert format(continued.parent.span_id, "016x") == REMOTE_SPAN
    assert continued.parent.is_remote
    assert dict(continued.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/orders/7",  # the query string stays out: it may carry what a trace should not
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.route": "/orders/{order_id}",
        "http.response.status_code": 200,
    }
    assert continued.status.status_code == StatusCode.UNSET
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "500"
    assert fresh.parent is None  # no traceparent: a trace of its own
    assert format(fresh.context.trace_id, "032x") != REMOTE_TRACE


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_each_route_and_status_with_bounded_labels() -> None:
    service = _service()
    provider, _ = _provider()
    with TestClient(_recorded_app(provider, service)) as client:
        for _ in range(3):
            client.get("/orders/1")
        client.get("/boom")
        client.get("/nowhere-1")
        client.get("/nowhere-2")
        client.request("BREW", "/orders/1")  # a method nobody knows: one bounded label, not a new series per name
        client.request("FOO", "/elsewhere")
        client.get("/health/live")

    def requests(method: str, path: str, status: str) -> float:
        labels = {"method": method, "path": path, "status_code": status, "app_name": service}
        return _sample(f"{service}_requests_total", labels)

    assert requests("GET", "/orders/{order_id}", "200") == 3
    assert requests("GET", "/boom", "500") == 1
    assert requests("GET", UNMATCHED_ROUTE, "404") == 2
    assert requests("_OTHER", UNMATCHED_ROUTE, "405") == 1
    assert requests("_OTHER", UNMATCHED_ROUTE, "404") == 1
    errors = {"method": "GET", "path": "/boom", "status_code": "500", "app_name": service}
    assert _sample(f"{service}_requests_error_total", errors) == 1
    durations = {"method": "GET", "path": "/orders/{order_id}", "status_code": "200", "app_name": service}
    assert _sample(f"{service}_request_duration_seconds_count", durations) == 3
    assert _sample(f"{service}_requests_in_progress", {"method": "GET", "app_name": service}) == 0
    paths = {
        sample.labels["path"]
        for metric in REGISTRY.collect()
        if metric.name == f"{service}_requests"
        for sample in metric.samples
    }
    assert paths == {"/orders/{order_id}", "/boom", UNMATCHED_ROUTE}  # no raw path, no health probe


def test_a_request_the_sampler_drops_still_gets_its_metrics_and_line() -> None:
    service = _service()
    provider, exported = _provider(sampling.ALWAYS_OFF)
    with capture_logs() as logs, TestClient(_recorded_app(provider, service)) as client:
        assert client.get("/orders/5").status_code == 200
    assert exported.get_finished_spans() == ()
    assert [line["route"] for line in logs] == ["/orders/{order_id}"]
    labels = {"method": "GET", "path": "/orders/{order_id}", "status_code": "200", "app_name": service}
    assert _sample(f"{service}_requests_total", labels) == 1


@pytest.mark.parametrize(
    ("log_json", "level", "fast"), [(True, "INFO", True), (False, "INFO", False), (True, "WARNING", False)]
)
def test_a_service_writes_its_access_lines_without_structlogs_chain_where_they_are_json_info(
    log_json: bool, level: str, fast: bool
) -> None:
    settings = OrdersSettings(
        database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none",  # never connected: the app is only built
        jwt_public_keys=AccessTokenSigner(
            generate_private_key_pem(), issuer="users", audiences=["orders"], ttl_seconds=60
        ).public_key_pem(),
        log_json=log_json,
        log_level=level,
    )
    previous = structlog.get_config()
    try:
        telemetry = create_app(settings).asgi_handler
    finally:
        structlog.configure(**previous)
    assert isinstance(telemetry, RequestTelemetry)
    assert isinstance(telemetry.access_logger, JsonInfoLines) is fast


@pytest.mark.usefixtures("restored_logging")
def test_json_info_lines_write_each_requests_access_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="INFO", json=True)
    provider, _ = _provider()
    app = _recorded_app(provider, _service())
    assert isinstance(app.asgi_handler, RequestTelemetry)
    app.asgi_handler.access_logger = JsonInfoLines(fallback=request_telemetry.access_log)
    with TestClient(app) as client:
        client.get("/orders/42", headers={"Authorization": "Bearer x"})
        client.get("/nowhere%0Aforged")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    read, missing = [line for line in lines if line.get("status") in (200, 404)]
    assert (read["route"], read["user_id"]) == ("/orders/{order_id}", str(USER_ID))
    assert read["event"] == f"GET /orders/{{order_id}} 200 {read['duration_ms']}ms"
    assert len(read["trace_id"]) == 32
    assert (missing["route"], missing["path"]) == (None, "/nowhere\\nforged")  # escaped: no forged line
