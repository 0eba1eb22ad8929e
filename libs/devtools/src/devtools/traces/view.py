"""``just traces`` (recent traces, one line each) and ``just trace <id|last>`` (a waterfall across services).

Both read the SQLite store the local stack's collector writes (``<data>/traces/spans.sqlite3``),
so they work while ``just up`` runs and after it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

from devtools.traces.store import SpanRow, SpanStore, TraceSummary, store_path

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("KEY_ATTRIBUTES", "draw_waterfall", "list_traces", "main")

KEY_ATTRIBUTES = {
    "http.response.status_code": "status",
    "http.status_code": "status",
    "messaging.destination.name": "event",
    "messaging.message.id": "id",
    "messaging.consumer.group.name": "consumer",
    "messaging.message.delivery_attempt": "attempt",
    "enduser.id": "user",
}
"""Span attributes shown in the waterfall, by the short name they are shown under."""

BAR_WIDTH = 32
_COLOURS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m")
_RESET = "\033[0m"


def _paint(text: str, colour: str | None) -> str:
    return f"{colour}{text}{_RESET}" if colour else text


def _colours(services: Sequence[str], enabled: bool) -> dict[str, str | None]:
    return {service: (_COLOURS[i % len(_COLOURS)] if enabled else None) for i, service in enumerate(services)}


def list_traces(summaries: Sequence[TraceSummary], out: IO[str], *, colour: bool = False) -> None:
    """One line per trace: when, id, root span, services touched, duration, span and error counts."""
    if not summaries:
        out.write("no traces yet: place an order (uv run just demo) while `just up` runs\n")
        return
    out.write(
        f"{'started':<12} {'trace id':<32}  {'root':<34} {'services':<22} {'duration':>10} {'spans':>5}  errors\n"
    )
    for summary in summaries:
        started = datetime.datetime.fromtimestamp(summary.start_ns / 1e9).strftime("%H:%M:%S.%f")[:12]
        errors = str(summary.errors) if summary.errors else "-"
        if colour and summary.errors:
            errors = _paint(errors, "\033[31m")
        out.write(
            f"{started:<12} {summary.trace_id:<32}  {summary.root[:34]:<34} {','.join(summary.services)[:22]:<22} "
            f"{summary.duration_ms:>8.1f}ms {summary.spans:>5}  {errors}\n"
        )


def _tree(spans: Sequence[SpanRow]) -> list[tuple[int, SpanRow]]:
    """Spans depth first, children by start time; a span whose parent is missing is a root."""
    known = {span.span_id for span in spans}
    children: dict[str, list[SpanRow]] = {}
    roots = []
    for span in spans:
        if span.parent_span_id and span.parent_span_id in known:
            children.setdefault(span.parent_span_id, []).append(span)
        else:
            roots.append(span)
    ordered: list[tuple[int, SpanRow]] = []

    def visit(span: SpanRow, depth: int) -> None:
        ordered.append((depth, span))
        for child in sorted(children.get(span.span_id, []), key=lambda row: row.start_ns):
            visit(child, depth + 1)

    for root in sorted(roots, key=lambda row: row.start_ns):
        visit(root, 0)
    return ordered


def _key_attributes(span: SpanRow) -> str:
    shown = [f"{short}={span.attributes[key]}" for key, short in KEY_ATTRIBUTES.items() if key in span.attributes]
    if span.status == "ERROR" and span.status_message:
        shown.append(f"error={span.status_message!r}")
    return " ".join(dict.fromkeys(shown))


def draw_waterfall(spans: Sequence[SpanRow], out: IO[str], *, colour: bool = False) -> None:
    """The trace as a waterfall, one line per span.

    Each line: start offset, duration, service, kind, status, name (indented under its parent), a
    bar on the trace's time line and the span's key attributes (event type, message id, ...).
    """
    start = min(span.start_ns for span in spans)
    end = max(span.end_ns for span in spans)
    total = max(end - start, 1)
    services = list(dict.fromkeys(span.service for span in spans))
    paints = _colours(services, colour)
    out.write(
        f"trace {spans[0].trace_id}: {len(spans)} spans, {', '.join(services)}, {total / 1e6:.1f}ms\n"
        f"{'offset':>9} {'duration':>9}  {'service':<8} {'kind':<8} {'status':<6} {'span':<44} timeline\n"
    )
    for depth, span in _tree(spans):
        first = int((span.start_ns - start) / total * BAR_WIDTH)
        width = max(1, round((span.end_ns - span.start_ns) / total * BAR_WIDTH))
        bar = (" " * first + "█" * width)[:BAR_WIDTH].ljust(BAR_WIDTH)
        name = ("  " * depth + span.name)[:44]
        status = span.status if span.status != "UNSET" else "-"
        status = _paint(f"{status:<6}", "\033[31m") if colour and span.status == "ERROR" else f"{status:<6}"
        line = (
            f"{(span.start_ns - start) / 1e6:>7.1f}ms {span.duration_ms:>7.1f}ms  "
            f"{_paint(f'{span.service:<8}', paints[span.service])} {span.kind:<8} {status} {name:<44} "
            f"|{_paint(bar, paints[span.service])}| {_key_attributes(span)}"
        )
        out.write(line.rstrip() + "\n")


def _wants_colour(out: IO[str]) -> bool:
    return out.isatty() and not os.environ.get("NO_COLOR")


def main(argv: Sequence[str] | None = None, out: IO[str] = sys.stdout) -> int:
    """``python -m devtools.traces list [-n N] [--data DIR]`` or ``... show <id|last> [--data DIR]``."""
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data", type=Path, default=Path(os.environ.get("RELAY_DATA", ".data")), help="data directory (default .data)"
    )
    parser = argparse.ArgumentParser(prog="just traces", description="The local stack's traces.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", parents=[data], help="recent traces, newest first")
    listing.add_argument("-n", "--limit", type=int, default=20)
    show = commands.add_parser("show", parents=[data], help="one trace as a waterfall")
    show.add_argument("trace", help="a trace id, a unique prefix of one, or 'last'")
    args = parser.parse_args(argv)
    path = store_path(args.data.resolve())
    if not path.exists():
        sys.stderr.write(f"just traces: no traces in {args.data.resolve()}: start the stack with `uv run just up`\n")
        return 1
    store = SpanStore(path)
    connection = store.connect()
    try:
        if args.command == "show":
            trace_id = store.resolve(connection, args.trace)
            if trace_id is None:
                sys.stderr.write(f"just trace: no single trace matches {args.trace!r} (see `uv run just traces`)\n")
                return 1
            draw_waterfall(store.spans(connection, trace_id), out, colour=_wants_colour(out))
        else:
            list_traces(store.recent(connection, getattr(args, "limit", 20)), out, colour=_wants_colour(out))
    finally:
        connection.close()
    return 0
