"""Spans kept for the local stack: one SQLite file under the data directory, written by the collector.

SQLite, not the stack's Postgres: the traces outlive a stopped Postgres (``just traces`` after
``just up`` ended still works) and the collector depends on nothing but the standard library and
``opentelemetry-proto``. WAL mode lets ``just traces`` read while the collector writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = ("KINDS", "SpanRow", "SpanStore", "TraceSummary", "store_path")

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
"""OTLP's span kinds by number."""

_STATUSES = {0: "UNSET", 1: "OK", 2: "ERROR"}

KEEP_SECONDS = 7 * 24 * 3600.0
"""Spans older than this are dropped when the collector starts: a laptop's disk is not an archive."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT NOT NULL,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_message TEXT NOT NULL,
    attributes TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_by_start ON spans (start_ns);
"""


def store_path(data: Path) -> Path:
    """Where the local stack whose data directory is ``data`` keeps its spans."""
    return data / "traces" / "spans.sqlite3"


@dataclass(frozen=True)
class SpanRow:
    """One stored span."""

    trace_id: str
    span_id: str
    parent_span_id: str
    """Empty for a root span."""
    service: str
    name: str
    kind: str
    """``SERVER``, ``CLIENT``, ``PRODUCER``, ``CONSUMER``, ``INTERNAL``."""
    start_ns: int
    end_ns: int
    status: str
    """``UNSET``, ``OK`` or ``ERROR``."""
    status_message: str
    attributes: dict[str, Any]

    @property
    def duration_ms(self) -> float:
        """How long the span took, in milliseconds."""
        return (self.end_ns - self.start_ns) / 1e6


@dataclass(frozen=True)
class TraceSummary:
    """One trace, in a line."""

    trace_id: str
    root: str
    """The name of its first root span (``POST /orders``), or of its earliest span."""
    services: tuple[str, ...]
    start_ns: int
    duration_ms: float
    spans: int
    errors: int


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    items: list[KeyValue] = list(pairs)
    return {pair.key: _value(pair.value) for pair in items}


class SpanStore:
    """The spans of one local stack, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def connect(self) -> sqlite3.Connection:
        """A connection with the schema in place (created on first use)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_SCHEMA)
        return connection

    def prune(self, connection: sqlite3.Connection, keep_seconds: float = KEEP_SECONDS) -> int:
        """Drop spans that started more than ``keep_seconds`` ago; returns how many went."""
        horizon = int((time.time() - keep_seconds) * 1e9)
        with connection:
            return connection.execute("DELETE FROM spans WHERE start_ns < ?", (horizon,)).rowcount

    @staticmethod
    def rows_of(request: ExportTraceServiceRequest) -> list[SpanRow]:
        """Every span of one OTLP export request, with its service from its resource."""
        rows = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            service = str(resource.get("service.name", "unknown_service"))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    rows.append(
                        SpanRow(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            service=service,
                            name=span.name,
                            kind=KINDS.get(span.kind, str(span.kind)),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            status=_STATUSES.get(span.status.code, str(span.status.code)),
                            status_message=span.status.message,
                            attributes=_attributes(span.attributes),
                        )
                    )
        return rows

    def add(self, connection: sqlite3.Connection, rows: list[SpanRow]) -> None:
        """Store spans; a span sent twice (an exporter's retry) is kept once."""
        with connection:
            connection.executemany(
                "INSERT OR REPLACE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        row.trace_id,
                        row.span_id,
                        row.parent_span_id,
                        row.service,
                        row.name,
                        row.kind,
                        row.start_ns,
                        row.end_ns,
                        row.status,
                        row.status_message,
                        json.dumps(row.attributes, default=str),
                    )
                    for row in rows
                ],
            )

    def recent(self, connection: sqlite3.Connection, limit: int = 20) -> list[TraceSummary]:
        """The latest traces (by their first span's start), newest first."""
        traces = connection.execute(
            """
            SELECT trace_id, MIN(start_ns), MAX(end_ns), COUNT(*), SUM(status = 'ERROR'),
                   GROUP_CONCAT(DISTINCT service)
            FROM spans GROUP BY trace_id ORDER BY MIN(start_ns) DESC LIMIT ?
            """,
            (limit,),
        ).fetchall()
        summaries = []
        for trace_id, start, end, count, errors, services in traces:
            spans = self.spans(connection, trace_id)
            summaries.append(
                TraceSummary(
                    trace_id=trace_id,
                    root=_roots(spans)[0].name,
                    services=tuple(dict.fromkeys(span.service for span in spans)) or tuple(services.split(",")),
                    start_ns=start,
                    duration_ms=(end - start) / 1e6,
                    spans=count,
                    errors=int(errors or 0),
                )
            )
        return summaries

    def spans(self, connection: sqlite3.Connection, trace_id: str) -> list[SpanRow]:
        """Every stored span of one trace, by start time."""
        rows = connection.execute(
            "SELECT * FROM spans WHERE trace_id = ? ORDER BY start_ns, end_ns DESC", (trace_id,)
        ).fetchall()
        return [
            SpanRow(
                trace_id=row[0],
                span_id=row[1],
                parent_span_id=row[2],
                service=row[3],
                name=row[4],
                kind=row[5],
                start_ns=row[6],
                end_ns=row[7],
                status=row[8],
                status_message=row[9],
                attributes=json.loads(row[10]),
            )
            for row in rows
        ]

    def resolve(self, connection: sqlite3.Connection, wanted: str) -> str | None:
        """The trace id that ``wanted`` names: ``last`` (the newest trace), a full id or a unique prefix."""
        if wanted == "last":
            row = connection.execute(
                "SELECT trace_id FROM spans GROUP BY trace_id ORDER BY MIN(start_ns) DESC LIMIT 1"
            ).fetchone()
            return None if row is None else str(row[0])
        matches = connection.execute(
            "SELECT DISTINCT trace_id FROM spans WHERE trace_id LIKE ? LIMIT 2", (f"{wanted.lower()}%",)
        ).fetchall()
        return str(matches[0][0]) if len(matches) == 1 else None


def _roots(spans: list[SpanRow]) -> list[SpanRow]:
    """Spans whose parent is not in the trace (a real root, or one whose parent was not received)."""
    known = {span.span_id for span in spans}
    roots = [span for span in spans if span.parent_span_id not in known]
    return roots or spans
