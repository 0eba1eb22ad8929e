"""The standard ``OTEL_*`` tracing variables, read as the OpenTelemetry specification says."""

from __future__ import annotations

import http.server
import json
import threading
from typing import TYPE_CHECKING

import pytest
import structlog
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from devtools.stack.servers import free_port
from shared import telemetry
from shared.telemetry import (
    DEFAULT_OTLP_ENDPOINT,
    EVENT_OUTCOME_ATTRIBUTE,
    build_tracer_provider,
    tracing_plan,
)

if TYPE_CHECKING:
    from collections.abc import Iterator


ENDPOINT = "http://collector.example:4318"


@pytest.fixture(autouse=True)
def uncached_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh loggers for ``capture_logs``: it cannot see a logger that already cached its configuration.

    ``configure_logging`` caches each logger at its first use (a per-call saving on every request),
    and an earlier test in the same process may have used these.
    """
    for name, logger_name in (("log", "shared.telemetry"), ("event_log", "events")):
        monkeypatch.setattr(telemetry, name, structlog.get_logger(logger_name))


@pytest.mark.parametrize(
    ("value", "exporters"),
    [
        ("otlp", ("otlp",)),
        ("console", ("console",)),
        ("none", ()),
        ("otlp,console", ("otlp", "console")),
        (" Console , OTLP ", ("console", "otlp")),
        ("otlp,otlp", ("otlp",)),
        ("console,none", ()),
        ("none,otlp", ()),
    ],
)
def test_traces_exporter_is_a_comma_separated_list_where_none_wins(value: str, exporters: tuple[str, ...]) -> None:
    plan = tracing_plan("orders", {"OTEL_TRACES_EXPORTER": value})
    assert plan.exporters == exporters
    assert plan.warnings == ()
    assert plan.otlp_endpoint == (f"{DEFAULT_OTLP_ENDPOINT}/v1/traces" if "otlp" in exporters else None)


@pytest.mark.parametrize("value", ["jaeger", "zipkin", "logging", "prometheus"])
def test_an_unknown_exporter_is_one_warning_and_the_others_still_run(value: str) -> None:
    plan = tracing_plan("orders", {"OTEL_TRACES_EXPORTER": f"console,{value}"})
    assert plan.exporters == ("console",)
    assert len(plan.warnings) == 1
    assert value in plan.warnings[0]
    assert plan.warnings[0].startswith("OTEL_TRACES_EXPORTER:")


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{ENDPOINT}/v1/traces"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, ()),
    ],
)
def test_without_traces_exporter_only_a_configured_endpoint_exports(
    environ: dict[str, str], exporters: tuple[str, ...]
) -> None:
    """The documented exception to the spec's default: a bare process sends nothing anywhere."""
    assert tracing_plan("orders", environ).exporters == exporters


@pytest.mark.parametrize(
    ("environ", "endpoint"),
    [
        ({}, "http://localhost:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, f"{ENDPOINT}/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": f"{ENDPOINT}/"}, f"{ENDPOINT}/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": f"{ENDPOINT}/prefix"}, f"{ENDPOINT}/prefix/v1/traces"),
        # the signal-specific URL is taken as it is, and wins over the generic one
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://other:1234/custom"}, "http://other:1234/custom"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://other:1/x"},
            "http://other:1/x",
        ),
    ],
)
def test_otlp_endpoint_follows_the_spec(environ: dict[str, str], endpoint: str) -> None:
    plan = tracing_plan("orders", {"OTEL_TRACES_EXPORTER": "otlp", **environ})
    assert plan.otlp_endpoint == endpoint


@pytest.mark.parametrize(
    "protocol",
    [
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
    ],
)
def test_an_unsupported_protocol_is_one_warning_and_no_otlp_exporter(protocol: dict[str, str]) -> None:
    plan = tracing_plan(
        "orders", {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT} | protocol
    )
    assert plan.exporters == ("console",)
    assert plan.otlp_endpoint is None
    assert len(plan.warnings) == 1
    assert "only http/protobuf" in plan.warnings[0]


@pytest.mark.parametrize(
    "protocol",
    [
        {},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
    ],
)
def test_http_protobuf_is_the_protocol_spoken(protocol: dict[str, str]) -> None:
    plan = tracing_plan("orders", {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT} | protocol)
    assert plan.exporters == ("otlp",)
    assert plan.warnings == ()


@pytest.mark.parametrize(
    ("value", "disabled"),
    [("true", True), ("TRUE", True), (" True ", True), ("false", False), ("1", False), ("", False)],
)
def test_sdk_disabled_only_by_true(value: str, disabled: bool) -> None:
    plan = tracing_plan("orders", {"OTEL_SDK_DISABLED": value, "OTEL_TRACES_EXPORTER": "console"})
    assert plan.disabled is disabled
    assert plan.exporters == (() if disabled else ("console",))
    assert (build_tracer_provider(plan) is None) is disabled


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        ({}, "orders"),
        ({"OTEL_SERVICE_NAME": "shop-orders"}, "shop-orders"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes"}, "from-attributes"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes", "OTEL_SERVICE_NAME": "wins"}, "wins"),
    ],
)
def test_service_name_precedence(environ: dict[str, str], name: str) -> None:
    plan = tracing_plan("orders", environ)
    assert plan.resource["service.name"] == name
    provider = build_tracer_provider(plan)
    assert provider is not None
    assert provider.resource.attributes["service.name"] == name


def test_resource_attributes_are_parsed_and_percent_decoded() -> None:
    raw = "deployment.environment=dev, team=a%20b%2Cc ,broken,=nokey,,k8s.pod.name=pod-1"
    plan = tracing_plan("orders", {"OTEL_RESOURCE_ATTRIBUTES": raw})
    assert plan.resource == {
        "deployment.environment": "dev",
        "team": "a b,c",
        "k8s.pod.name": "pod-1",
        "service.name": "orders",
    }
    assert len(plan.warnings) == 2
    assert all(warning.startswith("OTEL_RESOURCE_ATTRIBUTES:") for warning in plan.warnings)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("always_on", type(sampling.ALWAYS_ON)),
        ("always_off", type(sampling.ALWAYS_OFF)),
        ("traceidratio", sampling.TraceIdRatioBased),
        ("parentbased_always_on", sampling.ParentBased),
        ("parentbased_always_off", sampling.ParentBased),
        ("parentbased_traceidratio", sampling.ParentBased),
        ("", sampling.ParentBased),
    ],
)
def test_every_spec_sampler_is_honoured(name: str, kind: type) -> None:
    plan = tracing_plan("orders", {"OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert plan.warnings == ()
    assert isinstance(plan.make_sampler(), kind)
    assert plan.sampler == (name or "parentbased_always_on")
    assert plan.sampler_ratio == (0.25 if name.endswith("traceidratio") else 1.0)


def test_ratio_sampler_samples_by_its_argument() -> None:
    plan = tracing_plan("orders", {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"})
    provider = build_tracer_provider(plan)
    assert provider is not None
    assert not provider.get_tracer("t").start_span("x").is_recording()
    plan = tracing_plan("orders", {"OTEL_TRACES_SAMPLER": "always_off"})
    provider = build_tracer_provider(plan)
    assert provider is not None
    assert not provider.get_tracer("t").start_span("x").is_recording()


@pytest.mark.parametrize(
    ("environ", "warned"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER:"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG:"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG:"),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "-1"},
            "OTEL_TRACES_SAMPLER_ARG:",
        ),
    ],
)
def test_a_sampler_setting_not_understood_is_one_warning_and_the_default(environ: dict[str, str], warned: str) -> None:
    plan = tracing_plan("orders", environ)
    assert len(plan.warnings) == 1
    assert plan.warnings[0].startswith(warned)
    assert plan.sampler_ratio == 1.0


def test_console_exporter_prints_one_json_line_per_span_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    provider = build_tracer_provider(tracing_plan("orders", {"OTEL_TRACES_EXPORTER": "console"}))
    assert provider is not None
    with provider.get_tracer("t").start_as_current_span("POST /orders"):
        pass
    with provider.get_tracer("t").start_as_current_span("send orders.order.placed"):
        pass
    provider.shutdown()
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["POST /orders", "send orders.order.placed"]
    assert json.loads(lines[0])["resource"]["attributes"]["service.name"] == "orders"
    assert err == ""


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    received: list[tuple[str, bytes]] = []
    handler = type("Handler", (_Receiver,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_otlp_exporter_posts_protobuf_to_the_traces_path(receiver: tuple[str, list[tuple[str, bytes]]]) -> None:
    url, received = receiver
    provider = build_tracer_provider(tracing_plan("orders", {"OTEL_EXPORTER_OTLP_ENDPOINT": url}))
    assert provider is not None
    with provider.get_tracer("t").start_as_current_span("POST /orders"):
        pass
    provider.shutdown()
    assert [path for path, _ in received] == ["/v1/traces"]
    request = ExportTraceServiceRequest.FromString(received[0][1])
    (resource_spans,) = request.resource_spans
    names = [span.name for scope in resource_spans.scope_spans for span in scope.spans]
    assert names == ["POST /orders"]


def test_an_endpoint_that_does_not_answer_is_one_warning_not_one_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # read by the exporter itself
    endpoint = f"http://127.0.0.1:{free_port()}"
    provider = build_tracer_provider(tracing_plan("orders", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}))
    assert provider is not None
    with capture_logs() as logs:
        for name in ("one", "two", "three"):
            with provider.get_tracer("t").start_as_current_span(name):
                pass
            provider.force_flush()
        provider.shutdown()
    assert [entry["event"] for entry in logs] == ["cannot export spans; dropping them until it answers"]
    assert logs[0]["endpoint"] == f"{endpoint}/v1/traces"


def test_one_log_line_per_event_published_or_consumed_with_its_trace_id() -> None:
    provider = build_tracer_provider(tracing_plan("notify", {"OTEL_TRACES_EXPORTER": "none"}), event_log=True)
    assert provider is not None
    tracer = provider.get_tracer("t")
    message = {"messaging.destination.name": "orders.order.placed", "messaging.message.id": "0190-abc"}
    with capture_logs() as logs:
        with tracer.start_as_current_span(
            "send orders.order.placed", kind=SpanKind.PRODUCER, attributes=message
        ) as sent:
            pass
        consumer = message | {"messaging.consumer.group.name": "notify-order-notifications"}
        with tracer.start_as_current_span(
            "process orders.order.placed",
            kind=SpanKind.CONSUMER,
            attributes=consumer | {"messaging.message.delivery_attempt": 2},
            record_exception=False,
            set_status_on_exception=False,
        ) as failed:
            failed.record_exception(RuntimeError("mail server down"))
            failed.set_status(StatusCode.ERROR)
        with tracer.start_as_current_span(
            "process orders.order.placed",
            kind=SpanKind.CONSUMER,
            attributes=consumer | {"messaging.message.delivery_attempt": 1, EVENT_OUTCOME_ATTRIBUTE: "duplicate"},
        ) as duplicate:
            pass
        with (
            tracer.start_as_current_span("internal work"),
            tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER),
        ):
            pass
    assert logs == [
        {
            "event": "published orders.order.placed ok",
            "log_level": "info",
            "type": "orders.order.placed",
            "event_id": "0190-abc",
            "outcome": "ok",
            "trace_id": format(sent.get_span_context().trace_id, "032x"),
        },
        {
            "event": "consumed orders.order.placed failed",
            "log_level": "warning",
            "type": "orders.order.placed",
            "event_id": "0190-abc",
            "outcome": "failed",
            "trace_id": format(failed.get_span_context().trace_id, "032x"),
            "consumer": "notify-order-notifications",
            "attempt": 2,
            "error": "mail server down",
        },
        {
            "event": "consumed orders.order.placed duplicate",
            "log_level": "info",
            "type": "orders.order.placed",
            "event_id": "0190-abc",
            "outcome": "duplicate",
            "trace_id": format(duplicate.get_span_context().trace_id, "032x"),
            "consumer": "notify-order-notifications",
            "attempt": 1,
        },
    ]


def test_no_event_lines_unless_asked() -> None:
    provider = build_tracer_provider(tracing_plan("notify", {"OTEL_TRACES_EXPORTER": "none"}))
    assert provider is not None
    with capture_logs() as logs, provider.get_tracer("t").start_as_current_span("send x", kind=SpanKind.PRODUCER):
        pass
    assert logs == []


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The logging configuration as it was before the test (which configures its own)."""
    previous = structlog.get_config()
    yield
    structlog.configure(**previous)


@pytest.mark.usefixtures("restored_logging")
def test_json_info_lines_are_the_lines_structlog_writes(capsys: pytest.CaptureFixture[str]) -> None:
    telemetry.configure_logging(level="INFO", json=True)  # here: a fixture's stderr is not the test's
    fields = {"method": "GET", "route": "/orders/{order_id:uuid}", "status": 200, "duration_ms": 1.5, "user_id": None}
    lines = telemetry.JsonInfoLines(fallback=structlog.get_logger("access"))
    provider = build_tracer_provider(tracing_plan("orders", {}))
    assert provider is not None
    with provider.get_tracer("t").start_as_current_span("GET /orders/{order_id:uuid}"):
        structlog.get_logger("access").info("GET /orders/{order_id:uuid} 200 1.5ms", **fields)
        lines.info("GET /orders/{order_id:uuid} 200 1.5ms", **fields)
    with structlog.contextvars.bound_contextvars(request_id="r-1"):  # bound context: merged, as structlog does
        lines.info("GET / 404 0.1ms", status=404)
    written = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(written) == 3
    by_structlog, by_lines, with_context = written
    assert list(by_lines) == list(by_structlog)  # the same keys, in the same order
    assert by_structlog.pop("timestamp")[:10] == by_lines.pop("timestamp")[:10]
    assert by_lines == by_structlog
    assert {"trace_id", "span_id", "event", "level"} <= by_lines.keys()
    assert (with_context["request_id"], with_context["status"]) == ("r-1", 404)


def test_json_info_lines_only_where_info_lines_are_json() -> None:
    assert telemetry.logs_json_info(level="INFO", json=True)
    assert telemetry.logs_json_info(level="debug", json=True)
    assert not telemetry.logs_json_info(level="WARNING", json=True)  # INFO lines are dropped there
    assert not telemetry.logs_json_info(level="INFO", json=False)  # console lines
