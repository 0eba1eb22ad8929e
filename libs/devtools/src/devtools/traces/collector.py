"""The local stack's trace collector: OTLP/HTTP on ``/v1/traces``, spans into ``SpanStore``.

Dev only: ``just up`` runs it as one of its processes and points every service's
``OTEL_EXPORTER_OTLP_ENDPOINT`` at it; the services keep exporting standard OTLP, exactly as they
would to an OpenTelemetry Collector in Kubernetes. Protobuf bodies (what the services' exporter
sends), gzip- or deflate-compressed or not, and OTLP/JSON bodies are accepted. ``GET /health``
answers 200 once the store is open.

``python -m devtools.traces.collector --port 4318 --store .data/traces/spans.sqlite3``
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import signal
import sys
import threading
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import json_format  # type: ignore[import-untyped]  # protobuf ships no stubs; types-protobuf is not a dependency
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # the same
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from devtools.traces.store import SpanStore

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

__all__ = ("TRACES_PATH", "CollectorServer", "main")

TRACES_PATH = "/v1/traces"
MAX_BODY_BYTES = 32 * 1024 * 1024
"""A larger export is refused (413): the services' batches are far smaller."""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: CollectorServer
    protocol_version = "HTTP/1.1"  # keep-alive: the exporter reuses its connection

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/health":
            self._answer(200, b"ok\n", "text/plain")
        else:
            self._answer(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        if self.path.split("?")[0] != TRACES_PATH:
            self._answer(404, b"not found\n", "text/plain")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._answer(413, b"too large\n", "text/plain")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        try:
            request = _decode(body, self.headers.get("Content-Encoding", ""), self.headers.get("Content-Type", ""))
        except (DecodeError, json_format.ParseError, OSError, zlib.error, EOFError, ValueError) as error:
            self._answer(400, f"not an OTLP traces request: {error}\n".encode(), "text/plain")
            return
        self.server.record(request)
        json_answer = "json" in self.headers.get("Content-Type", "")
        response = ExportTraceServiceResponse()
        if json_answer:
            self._answer(200, json_format.MessageToJson(response).encode(), "application/json")
        else:
            self._answer(200, response.SerializeToString(), "application/x-protobuf")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        # One line per export would bury the services' own lines in the `just up` console.
        pass


def _decode(body: bytes, encoding: str, content_type: str) -> ExportTraceServiceRequest:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    request = ExportTraceServiceRequest()
    if "json" in content_type.lower():
        json_format.Parse(body, request)
    else:
        request.ParseFromString(body)
    return request


class CollectorServer(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP traces receiver that stores what it receives."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: SpanStore) -> None:
        self.store = store
        self._connection: sqlite3.Connection = store.connect()
        self._writing = threading.Lock()
        store.prune(self._connection)
        super().__init__(address, _Handler)

    def record(self, request: ExportTraceServiceRequest) -> None:
        """Store every span of one export request (one writer at a time: SQLite's rule)."""
        rows = SpanStore.rows_of(request)
        with self._writing:
            self.store.add(self._connection, rows)

    def server_close(self) -> None:
        """Stop listening and close the store."""
        super().server_close()
        self._connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="collector", description="OTLP/HTTP traces receiver for the local stack.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--store", type=Path, required=True, help="the SQLite file spans go to")
    args = parser.parse_args(argv)
    try:
        server = CollectorServer((args.host, args.port), SpanStore(args.store))
    except OSError as error:
        sys.stderr.write(f"collector: cannot listen on {args.host}:{args.port} or open {args.store}: {error}\n")
        return 1

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write(
        f"receiving OTLP/HTTP traces on http://{args.host}:{args.port}{TRACES_PATH}, stored in {args.store}\n"
    )
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
