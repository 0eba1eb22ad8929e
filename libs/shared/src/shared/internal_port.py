"""A tiny HTTP listener for what only the cluster may see: Prometheus ``/metrics`` (and worker health).

The API serves clients on its public port; its metrics live on a second, internal port that only
Prometheus is allowed to reach (the NetworkPolicies say so), as the workers' health port does.
"""

from __future__ import annotations

import asyncio
import errno
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ("Answer", "metrics_answer", "start_internal_server")

Answer = tuple[str, str, bytes]
"""An HTTP status line's tail (``"200 OK"``), a content type and a body."""

log = structlog.get_logger("shared.internal_port")

NOT_FOUND: Answer = ("404 Not Found", "application/problem+json", b'{"status":404,"title":"Not found"}')
"""What a path nobody answers gets."""


def metrics_answer() -> Answer:
    """The process's Prometheus metrics in the text exposition format."""
    return "200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY)


async def start_internal_server(
    host: str, port: int, answer: Callable[[str], Awaitable[Answer | None]], *, required: bool = False
) -> asyncio.Server | None:
    """Listen on ``host:port`` and answer each GET with ``answer(path)`` (None: 404).

    A few lines of HTTP instead of a web framework: probes and Prometheus need nothing more, and
    nothing here shares the API's middleware, routes or documentation. The API serves its metrics
    here, the worker its health probes and metrics.

    Args:
        host: The address to listen on.
        port: The port to listen on.
        answer: What to answer for a path; None answers 404.
        required: A taken port is an error (the worker: its probes must reach this very process)
            rather than a warning (the API: a second granian worker of the same API finds the
            first one's listener there; the first one's metrics are served, this one's are not).

    Returns:
        The server; None when the port is taken and not ``required``.

    Raises:
        OSError: The port cannot be bound (taken, when ``required``; or any other reason).
    """

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) > 1 else "/"
            status, content_type, body = await answer(path) or NOT_FOUND
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    try:
        return await asyncio.start_server(serve, host, port)
    except OSError as error:
        if required or error.errno != errno.EADDRINUSE:
            raise
        log.warning("internal port taken: this process's metrics are not served", host=host, port=port)
        return None
