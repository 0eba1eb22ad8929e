"""The local stack's trace collector, its store, ``just traces`` / ``just trace``, and how ``just up`` wires them."""

from __future__ import annotations

import gzip
import io
import os
import sys
import threading
import urllib.error
import urllib.request
import zlib
from typing import TYPE_CHECKING

import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]  # protobuf ships no stubs
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devtools.stack.servers import free_port
from devtools.stack.supervisor import DevStack, ServiceProcess, StackPorts
from devtools.traces.collector import CollectorServer
from devtools.traces.store import SpanStore, store_path
from devtools.traces.view import main as traces_main
from shared.settings import ServiceSettings, load_settings
from shared.telemetry import build_tracer_provider, tracing_plan

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def _order_trace() -> list[ReadableSpan]:
    """A request in orders, its event published by the relay, processed by notify: three services' spans."""
    exported = InMemorySpanExporter()
    providers = {}
    for service in ("orders", "notify"):
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(exported))
        providers[service] = provider.get_tracer("test")
    carrier: dict[str, str] = {}
    with providers["orders"].start_as_current_span(
        "POST /orders", kind=trace.SpanKind.SERVER, attributes={"http.response.status_code": 201}
    ):
        propagate.inject(carrier)
    message = {"messaging.destination.name": "orders.order.placed", "messaging.message.id": "0190-abc"}
    with providers["orders"].start_as_current_span(
        "send orders.order.placed", context=propagate.extract(carrier), kind=trace.SpanKind.PRODUCER, attributes=message
    ):
        propagate.inject(carrier)
    with providers["notify"].start_as_current_span(
        "process orders.order.placed",
        context=propagate.extract(carrier),
        kind=trace.SpanKind.CONSUMER,
        attributes=message | {"messaging.consumer.group.name": "notify-order-notifications"},
    ) as span:
        span.set_status(trace.Status(trace.StatusCode.ERROR, "mail server down"))
    return list(exported.get_finished_spans())


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[str, SpanStore]]:
    store = SpanStore(store_path(tmp_path))
    server = CollectorServer(("127.0.0.1", free_port()), store)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", store
    server.shutdown()
    server.server_close()


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def _stored(store: SpanStore) -> list[tuple[str, str, str]]:
    connection = store.connect()
    try:
        (trace_id,) = {row[0] for row in connection.execute("SELECT trace_id FROM spans")}
        return [(span.service, span.kind, span.name) for span in store.spans(connection, trace_id)]
    finally:
        connection.close()


EXPECTED = [
    ("orders", "SERVER", "POST /orders"),
    ("orders", "PRODUCER", "send orders.order.placed"),
    ("notify", "CONSUMER", "process orders.order.placed"),
]


@pytest.mark.parametrize(
    ("encode", "headers"),
    [
        (lambda body: body, {"Content-Type": "application/x-protobuf"}),
        (gzip.compress, {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}),
        (zlib.compress, {"Content-Type": "application/x-protobuf", "Content-Encoding": "deflate"}),
        (None, {"Content-Type": "application/json"}),
    ],
    ids=["protobuf", "gzip", "deflate", "json"],
)
def test_collector_stores_every_otlp_http_encoding(
    collector: tuple[str, SpanStore], encode: object, headers: dict[str, str]
) -> None:
    url, store = collector
    request = encode_spans(_order_trace())
    body = json_format.MessageToJson(request).encode() if encode is None else encode(request.SerializeToString())  # type: ignore[operator]
    assert _post(f"{url}/v1/traces", body, headers) == 200
    assert _stored(store) == EXPECTED


def test_collector_keeps_a_span_sent_twice_once(collector: tuple[str, SpanStore]) -> None:
    url, store = collector
    body = encode_spans(_order_trace()).SerializeToString()
    for _ in range(2):  # an exporter's retry after an unknown outcome
        assert _post(f"{url}/v1/traces", body, {"Content-Type": "application/x-protobuf"}) == 200
    assert _stored(store) == EXPECTED


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/traces", b"\xff\xff not protobuf", 400),
        ("/v1/metrics", b"", 404),
        ("/", b"", 404),
    ],
)
def test_collector_refuses_what_is_not_a_traces_export(
    collector: tuple[str, SpanStore], path: str, body: bytes, status: int
) -> None:
    url, _ = collector
    assert _post(f"{url}{path}", body, {"Content-Type": "application/x-protobuf"}) == status


def test_the_services_own_exporter_reaches_the_collector(collector: tuple[str, SpanStore]) -> None:
    url, store = collector
    provider = build_tracer_provider(tracing_plan("orders", {"OTEL_EXPORTER_OTLP_ENDPOINT": url}))
    assert provider is not None
    with provider.get_tracer("t").start_as_current_span("GET /orders/{order_id}", kind=trace.SpanKind.SERVER):
        pass
    provider.shutdown()
    assert _stored(store) == [("orders", "SERVER", "GET /orders/{order_id}")]


def test_traces_lists_and_draws_the_waterfall(tmp_path: Path, collector: tuple[str, SpanStore]) -> None:
    url, _ = collector
    spans = _order_trace()
    trace_id = format(spans[0].context.trace_id, "032x")
    assert (
        _post(f"{url}/v1/traces", encode_spans(spans).SerializeToString(), {"Content-Type": "application/x-protobuf"})
        == 200
    )

    listed = io.StringIO()
    assert traces_main(["list", "--data", str(tmp_path)], out=listed) == 0
    (line,) = listed.getvalue().splitlines()[1:]
    assert line.split()[1:5] == [trace_id, "POST", "/orders", "orders,notify"]
    assert line.split()[-2:] == ["3", "1"]  # spans, errors

    for wanted in (trace_id, trace_id[:6], "last"):
        drawn = io.StringIO()
        assert traces_main(["show", wanted, "--data", str(tmp_path)], out=drawn) == 0
        lines = drawn.getvalue().splitlines()
        assert lines[0] == f"trace {trace_id}: 3 spans, orders, notify, {lines[0].split(', ')[-1]}"
        rows = lines[2:]
        assert [row.split()[2:5] for row in rows] == [
            ["orders", "SERVER", "-"],
            ["orders", "PRODUCER", "-"],
            ["notify", "CONSUMER", "ERROR"],
        ]
        # each span indented under its parent
        names = ("POST /orders", "send orders.order.placed", "process orders.order.placed")
        assert [row.index(name) for row, name in zip(rows, names, strict=True)] == sorted(
            row.index(name) for row, name in zip(rows, names, strict=True)
        )
        assert len({row.index(name) for row, name in zip(rows, names, strict=True)}) == 3
        assert "status=201" in rows[0]
        assert "event=orders.order.placed id=0190-abc" in rows[1]
        assert "consumer=notify-order-notifications" in rows[2]
        assert "error='mail server down'" in rows[2]


def test_traces_without_a_store_or_a_match_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert traces_main(["list", "--data", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err.startswith("just traces: no traces in ")
    store = SpanStore(store_path(tmp_path))
    store.connect().close()
    assert traces_main(["show", "abc", "--data", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "just trace: no single trace matches 'abc' (see `uv run just traces`)\n"


def _ports() -> StackPorts:
    return StackPorts(**{name: 20000 + number for number, name in enumerate(StackPorts.names())})


def test_up_points_every_service_at_its_collector(tmp_path: Path) -> None:
    ports = _ports()
    stack = DevStack(tmp_path, ports, environ={"OTEL_TRACES_EXPORTER": "otlp,console", "PATH": "/bin"})
    assert stack.own_otlp_endpoint() == ""
    for service in ("users", "orders", "notify"):
        env = stack.service_env(service, "postgresql+asyncpg://x@y/z")
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://127.0.0.1:{ports.collector}"
        assert env["OTEL_TRACES_EXPORTER"] == "otlp,console"  # the person's choice of exporters stays
        plan = tracing_plan(service, env)
        assert plan.otlp_endpoint == f"http://127.0.0.1:{ports.collector}/v1/traces"


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_up_keeps_the_persons_own_endpoint(tmp_path: Path, variable: str) -> None:
    stack = DevStack(tmp_path, _ports(), environ={variable: "http://collector.example:4318"})
    assert stack.own_otlp_endpoint() == "http://collector.example:4318"
    assert stack.telemetry_env() == {}
    env = stack.service_env("orders", "postgresql+asyncpg://x@y/z")
    assert env[variable] == "http://collector.example:4318"
    assert tracing_plan("orders", env).otlp_endpoint is not None
    assert "collector.example" in str(tracing_plan("orders", env).otlp_endpoint)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("output", "coloured"), [(_Terminal(), True), (io.StringIO(), False)])
def test_console_prefixes_are_coloured_by_service_only_in_a_terminal(
    output: io.StringIO, coloured: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    lines = {}
    for name in ("users-api", "orders-worker", "orders-api"):
        process = ServiceProcess(name, [sys.executable, "-c", "print('hello')"], dict(os.environ))
        before = output.tell()
        process.start(output)
        assert process.process is not None
        process.process.wait(30)
        for thread in threading.enumerate():  # the copying thread ends at the child's end of output
            if thread.name == f"log-{name}":
                thread.join(30)
        assert process.process.stdout is not None
        process.process.stdout.close()
        lines[name] = output.getvalue()[before:]
    assert lines["users-api"].endswith("users-api" + ("\033[0m" if coloured else "") + " | hello\n")
    if coloured:
        colour = {name: line.split("m", 1)[0] for name, line in lines.items()}
        assert all(code.startswith("\033[") for code in colour.values()), lines
        assert colour["orders-api"] == colour["orders-worker"] != colour["users-api"]
    else:
        assert "\033[" not in output.getvalue()


@pytest.mark.parametrize(
    ("quiet", "mine", "expected"),
    [(False, {}, None), (True, {}, "false"), (True, {"ORDERS_ACCESS_LOG": "true"}, "true")],
)
def test_up_quiet_turns_the_access_log_off_unless_the_person_asks_for_it(
    tmp_path: Path, quiet: bool, mine: dict[str, str], expected: str | None
) -> None:
    stack = DevStack(tmp_path, _ports(), environ=mine, quiet=quiet)
    env = stack.service_env("orders", "postgresql+asyncpg://x@y/z")
    assert env.get("ORDERS_ACCESS_LOG") == expected
    settings = load_settings(ServiceSettings, "ORDERS", {"ORDERS_DATABASE_URL": "postgresql+asyncpg://x@y/z"} | env)
    assert settings.access_log is (expected != "false")
