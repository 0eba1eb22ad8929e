"""Traces and logs: OpenTelemetry configured from the standard ``OTEL_*`` variables, JSON logs.

The variables are read as the OpenTelemetry specification says (``tracing_plan``), with one
deliberate exception: when ``OTEL_TRACES_EXPORTER`` is not set, spans are exported over OTLP only
if an endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``).
The specification's default (``otlp`` to ``http://localhost:4318``) would make every bare process
(a CLI command, a test, a laptop without a collector) retry for seconds at each batch and at exit,
warning on stderr each time. ``OTEL_TRACES_EXPORTER=otlp`` alone still sends to that default.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import msgspec
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.sampling import Sampler
    from structlog.typing import EventDict, WrappedLogger

__all__ = (
    "DEFAULT_OTLP_ENDPOINT",
    "EVENT_OUTCOME_ATTRIBUTE",
    "EventLogProcessor",
    "JsonInfoLines",
    "TracingPlan",
    "add_trace_ids",
    "build_tracer_provider",
    "configure_logging",
    "configure_tracing",
    "logs_json_info",
    "tracing_plan",
)

log = structlog.get_logger("shared.telemetry")

DEFAULT_OTLP_ENDPOINT = "http://localhost:4318"
"""The specification's default OTLP/HTTP endpoint (the signal path ``/v1/traces`` is appended)."""

_EXPORTERS = ("otlp", "console", "none")
_SUPPORTED_PROTOCOL = "http/protobuf"
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_DEFAULT_SAMPLER = "parentbased_always_on"

_configured_service: str | None = None


@dataclass(frozen=True)
class TracingPlan:
    """What the ``OTEL_*`` variables ask of this process's tracing, read once, applied by ``configure_tracing``."""

    disabled: bool
    """``OTEL_SDK_DISABLED=true``: no SDK at all (the API's no-op tracer stays)."""
    exporters: tuple[str, ...]
    """The exporters that run: ``otlp`` and/or ``console``; empty exports nothing."""
    otlp_endpoint: str | None
    """The full OTLP/HTTP traces URL (``.../v1/traces``) when ``otlp`` runs."""
    sampler: str
    """One of the specification's sampler names."""
    sampler_ratio: float
    """The ratio of the ``traceidratio`` samplers (``OTEL_TRACES_SAMPLER_ARG``, default 1.0)."""
    resource: dict[str, str] = field(default_factory=dict)
    """Resource attributes: ``OTEL_RESOURCE_ATTRIBUTES``, then ``service.name``."""
    warnings: tuple[str, ...] = ()
    """One line per variable that was not understood, and what was done instead."""

    def make_sampler(self) -> Sampler:
        """The SDK sampler this plan names."""
        from opentelemetry.sdk.trace import sampling

        ratio = sampling.TraceIdRatioBased(self.sampler_ratio)
        return {
            "always_on": sampling.ALWAYS_ON,
            "always_off": sampling.ALWAYS_OFF,
            "traceidratio": ratio,
            "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
            "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
            "parentbased_traceidratio": sampling.ParentBased(ratio),
        }[self.sampler]


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _resource_attributes(raw: str, warnings: list[str]) -> dict[str, str]:
    """``key1=value1,key2=value2`` with percent-encoded values (W3C Baggage octets), as the spec says."""
    attributes: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            warnings.append(f"OTEL_RESOURCE_ATTRIBUTES: ignoring {item.strip()!r} (expected key=value)")
            continue
        attributes[key.strip()] = urllib.parse.unquote(value.strip())
    return attributes


def _traces_endpoint(env: Mapping[str, str]) -> str:
    """The signal-specific URL is used as given; the generic one gets ``/v1/traces`` appended."""
    specific = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if specific:
        return specific
    generic = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or DEFAULT_OTLP_ENDPOINT
    return f"{generic.rstrip('/')}/v1/traces"


def tracing_plan(service_name: str, environ: Mapping[str, str]) -> TracingPlan:  # noqa: PLR0912 - one branch per variable
    """Read the standard ``OTEL_*`` tracing variables from ``environ``.

    ``OTEL_SDK_DISABLED``, ``OTEL_TRACES_EXPORTER`` (comma-separated ``otlp``, ``console``,
    ``none``), ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` and ``_PROTOCOL`` (only ``http/protobuf``
    is supported: another one is a warning and no OTLP exporter), ``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``. A value
    that is not understood is a warning line and the specification's default.

    Args:
        service_name: The name used when neither ``OTEL_SERVICE_NAME`` nor the resource attributes give one.
        environ: The variables (``os.environ`` in a process).
    """
    warnings: list[str] = []
    resource = _resource_attributes(environ.get("OTEL_RESOURCE_ATTRIBUTES", ""), warnings)
    resource["service.name"] = (
        environ.get("OTEL_SERVICE_NAME", "").strip() or resource.get("service.name") or service_name
    )

    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or _DEFAULT_SAMPLER
    if sampler not in _SAMPLERS:
        warnings.append(f"OTEL_TRACES_SAMPLER: unknown sampler {sampler!r}, using {_DEFAULT_SAMPLER}")
        sampler = _DEFAULT_SAMPLER
    ratio = 1.0
    raw_ratio = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if raw_ratio and sampler.endswith("traceidratio"):
        try:
            ratio = float(raw_ratio)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            warnings.append(f"OTEL_TRACES_SAMPLER_ARG: {raw_ratio!r} is not a ratio in [0, 1], using 1.0")
            ratio = 1.0

    if _true(environ.get("OTEL_SDK_DISABLED")):
        return TracingPlan(True, (), None, sampler, ratio, resource, tuple(warnings))

    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if raw:
        names: list[str] = []
        for name in (part.strip() for part in raw.split(",")):
            if name not in _EXPORTERS:
                warnings.append(
                    f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r} ignored (known: otlp, console, none)"
                )
            elif name not in names:
                names.append(name)
        exporters = () if "none" in names else tuple(names)
    else:
        configured = any(
            environ.get(name, "").strip()
            for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        exporters = ("otlp",) if configured else ()

    endpoint = None
    if "otlp" in exporters:
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
            or _SUPPORTED_PROTOCOL
        ).lower()
        if protocol == _SUPPORTED_PROTOCOL:
            endpoint = _traces_endpoint(environ)
        else:
            warnings.append(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (only http/protobuf): no OTLP export"
            )
            exporters = tuple(name for name in exporters if name != "otlp")
    return TracingPlan(False, exporters, endpoint, sampler, ratio, resource, tuple(warnings))


class _QuietExporter(SpanExporter):
    """The OTLP exporter, saying once (not at every batch) that its endpoint does not answer."""

    def __init__(self, inner: SpanExporter, endpoint: str) -> None:
        self.inner = inner
        self.endpoint = endpoint
        self.failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is SpanExportResult.FAILURE and not self.failing:
            log.warning("cannot export spans; dropping them until it answers", endpoint=self.endpoint)
        self.failing = result is SpanExportResult.FAILURE
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _one_line_span(span: ReadableSpan) -> str:
    return f"{span.to_json(indent=None)}\n"


event_log = structlog.get_logger("events")


EVENT_OUTCOME_ATTRIBUTE = "relay.event.outcome"
"""What became of a consumed event, on its CONSUMER span: ``applied``, ``duplicate`` (already in the
inbox: acked, nothing done), ``retried`` (handed back after a failure) or ``dead-lettered``."""


class EventLogProcessor(SpanProcessor):
    """One log line per event published (the relay's PRODUCER span) or consumed (a CONSUMER span).

    Read from the messaging spans the relay and the consumers already make, when each ends: the
    event type (its subject), the event id, the consumer, the delivery attempt, the outcome (a
    consumer's ``EVENT_OUTCOME_ATTRIBUTE``; else ``ok``, or ``failed`` with the error) and the trace id
    of that span, so an event's line leads to its trace.
    """

    def on_end(self, span: ReadableSpan) -> None:
        """Write the line of a messaging span; other spans pass."""
        kind = span.kind
        if kind not in (trace.SpanKind.PRODUCER, trace.SpanKind.CONSUMER):
            return
        attributes = span.attributes or {}
        failed = span.status.status_code is trace.StatusCode.ERROR
        error = next(
            (str(event.attributes.get("exception.message", "")) for event in span.events if event.attributes), ""
        )
        verb = "published" if kind is trace.SpanKind.PRODUCER else "consumed"
        fields: dict[str, Any] = {
            "type": attributes.get("messaging.destination.name"),
            "event_id": attributes.get("messaging.message.id"),
            "outcome": attributes.get(EVENT_OUTCOME_ATTRIBUTE) or ("failed" if failed else "ok"),
            "trace_id": format(span.context.trace_id, "032x") if span.context is not None else None,
        }
        if kind is trace.SpanKind.CONSUMER:
            fields["consumer"] = attributes.get("messaging.consumer.group.name")
            fields["attempt"] = attributes.get("messaging.message.delivery_attempt")
        if failed:
            fields["error"] = error or span.status.description
        log_line = event_log.warning if failed else event_log.info
        log_line(f"{verb} {fields['type']} {fields['outcome']}", **fields)


def build_tracer_provider(plan: TracingPlan, *, event_log: bool = False) -> TracerProvider | None:
    """The SDK tracer provider ``plan`` asks for, with its exporters; ``None`` when the SDK is disabled.

    Args:
        plan: What the ``OTEL_*`` variables ask for.
        event_log: Also write a log line per event published or consumed (``EventLogProcessor``).
    """
    if plan.disabled:
        return None
    from opentelemetry.sdk.resources import Resource

    resource: Resource = Resource.create(plan.resource)
    provider = TracerProvider(resource=resource, sampler=plan.make_sampler())
    if event_log:
        provider.add_span_processor(EventLogProcessor())
    if "otlp" in plan.exporters and plan.otlp_endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter's own log lines repeat every retry of every batch; _QuietExporter says it once.
        logging.getLogger("opentelemetry.exporter.otlp.proto.http").setLevel(logging.CRITICAL)
        logging.getLogger("opentelemetry.exporter.otlp.common").setLevel(logging.CRITICAL)
        exporter = _QuietExporter(OTLPSpanExporter(endpoint=plan.otlp_endpoint), plan.otlp_endpoint)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if "console" in plan.exporters:
        # One JSON line per span on stdout (logs go to stderr), as soon as the span ends.
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout, formatter=_one_line_span)))
    return provider


def configure_tracing(service_name: str, environ: Mapping[str, str] | None = None, *, event_log: bool = False) -> None:
    """Install the process's tracer provider once, as the ``OTEL_*`` variables ask (``tracing_plan``).

    With ``event_log``, every event published or consumed is also a log line (``EventLogProcessor``).
    """
    global _configured_service  # noqa: PLW0603 - one provider per process is OpenTelemetry's own rule
    if _configured_service is not None:
        return
    plan = tracing_plan(service_name, os.environ if environ is None else environ)
    for warning in plan.warnings:
        log.warning(warning)
    provider = build_tracer_provider(plan, event_log=event_log)
    if provider is not None:
        trace.set_tracer_provider(provider)
    _configured_service = service_name


def add_trace_ids(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Structlog processor: put the current ``trace_id`` and ``span_id`` on every log line."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


_line_encoder = msgspec.json.Encoder(enc_hook=repr)


def _json_line(event: EventDict, **_options: Any) -> str:
    """The JSON serializer of structlog's renderer: msgspec, several times cheaper than ``json.dumps`` per line.

    A value JSON has no type for is written as its ``repr``, as structlog's own renderer does.
    """
    return _line_encoder.encode(event).decode()


class JsonInfoLines:
    """INFO lines exactly as ``configure_logging(json=True)`` renders them, without structlog's chain.

    For a line written on every request (the access log): structlog's bound logger, its five
    processors and its renderer were a tenth of a cached read's CPU. The same keys in the same
    order (the fields, ``event``, ``level``, ``timestamp``, the trace ids), the same encoder, and
    the same output under structlog's lock for that file, so lines from both never interleave. While
    any structlog context variable is bound it hands the line to ``fallback``, which merges them.
    Only for a process whose logging is JSON at INFO or below (``logs_json_info``).
    """

    def __init__(self, fallback: Any, file: TextIO | None = None) -> None:
        self.fallback = fallback
        self._output = structlog.PrintLogger(sys.stderr if file is None else file)  # where configure_logging writes

    def info(self, event: str, **fields: Any) -> None:
        """Write one line: ``event`` and ``fields`` as structlog's ``info`` would."""
        if structlog.contextvars.get_contextvars():
            self.fallback.info(event, **fields)
            return
        fields["event"] = event
        fields["level"] = "info"
        fields["timestamp"] = datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z")
        self._output.msg(_json_line(add_trace_ids(None, "info", fields)))


def logs_json_info(*, level: str, json: bool) -> bool:
    """Whether ``configure_logging`` with these settings writes INFO lines as JSON (so ``JsonInfoLines`` may)."""
    return json and logging.getLevelName(level.upper()) <= logging.INFO


def configure_logging(*, level: str = "INFO", json: bool = True) -> None:
    """Structlog for the process: JSON lines with trace ids, or readable lines for a console."""
    renderer: Any = structlog.dev.ConsoleRenderer(colors=False)
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
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
