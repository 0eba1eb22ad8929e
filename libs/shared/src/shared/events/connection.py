"""Connecting to NATS without the traps: a bounded first connect, quick ping, endless reconnects.

Why nats-py needs guarding here: ``nats.connect(servers=[])`` (what a blank URL setting split on
commas gives) leaves the client's server pool empty, so ``_select_next_server`` raises
``NoServersError`` at once, without awaiting anything, and ``connect`` catches it and — with
``max_reconnect_attempts=-1`` — loops straight back. That loop never yields to the event loop:
``asyncio.wait_for`` cannot fire and asyncio signal handlers never run, so the process burns a
core and ignores SIGTERM. A non-empty pool always awaits (a connect, or the back-off sleep), so
the bounded connect below works. Hence: never call nats-py without at least one parsed URL.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import nats
import nats.errors
import structlog

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = (
    "NatsConfigurationError",
    "NatsUnavailableError",
    "connect_nats",
    "is_nats_unavailable",
    "parse_servers",
)

_SCHEMES = ("nats", "tls", "ws", "wss")


class NatsUnavailableError(ConnectionError):
    """NATS could not be reached (or refused us) at start-up."""


class NatsConfigurationError(ValueError):
    """The NATS server setting is empty or is not a list of NATS URLs."""


log = structlog.get_logger("shared.events")


def parse_servers(servers: str) -> list[str]:
    """The comma-separated NATS URLs of a setting, each checked the way nats-py will use it.

    Raises:
        NatsConfigurationError: No URL at all, or one that nats-py could not connect to.
    """
    urls = [server.strip() for server in servers.split(",") if server.strip()]
    if not urls:
        raise NatsConfigurationError("no NATS server URL given")
    for url in urls:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        try:
            port = parts.port
        except ValueError:
            raise NatsConfigurationError(f"{url!r} has an invalid port") from None
        if parts.scheme not in _SCHEMES:
            raise NatsConfigurationError(f"{url!r} is not a NATS URL (nats://host:port)")
        if not parts.hostname:
            raise NatsConfigurationError(f"{url!r} names no host")
        if port == 0:
            raise NatsConfigurationError(f"{url!r} has an invalid port")
    websockets = [url.startswith(("ws://", "wss://")) for url in urls]
    if any(websockets) and not all(websockets):
        raise NatsConfigurationError("websocket and plain NATS URLs cannot be mixed")
    return urls


def is_nats_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means NATS is unreachable right now (worth a 503 and a retry later)."""
    return isinstance(
        error,
        NatsUnavailableError
        | nats.errors.ConnectionClosedError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.NoServersError
        | nats.errors.OutboundBufferLimitError
        | nats.errors.StaleConnectionError
        | nats.errors.TimeoutError,
    )


async def connect_nats(
    servers: str,
    *,
    name: str,
    user: str = "",
    password: str = "",
    inbox_prefix: str = "_INBOX",
    connect_timeout: float = 10.0,
) -> NatsClient:
    """Connect to NATS, giving up after ``connect_timeout`` when the server is down at start.

    With ``max_reconnect_attempts=-1`` nats-py would otherwise block forever on a dead server.
    After the first connect, the client reconnects without end and buffers publishes meanwhile.

    Raises:
        NatsConfigurationError: ``servers`` holds no usable URL (refused before nats-py can spin).
        NatsUnavailableError: No server answered (or one refused us) within ``connect_timeout``.
    """
    urls = parse_servers(servers)
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error) or type(error).__name__)
        log.warning("nats error", error=str(error) or type(error).__name__)

    async def on_disconnected() -> None:
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    log.info("connecting to nats", servers=urls, timeout=connect_timeout)
    # Not asyncio.wait_for: nats-py's attempts are themselves wait_for calls whose inner connect
    # fails at once on a refused port, and Python 3.11's wait_for drops a cancellation that lands
    # just then (bpo-42130). One cancel can be lost; cancelling until the task is done cannot.
    attempt = asyncio.ensure_future(
        nats.connect(
            servers=urls,
            name=name,
            user=user or None,
            password=password or None,
            inbox_prefix=inbox_prefix,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=min(connect_timeout, 2.0),
            ping_interval=10,
            max_outstanding_pings=3,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
    )
    try:
        await asyncio.wait({attempt}, timeout=connect_timeout)
    except asyncio.CancelledError:
        await _cancel_until_done(attempt)
        raise
    if not attempt.done():
        await _cancel_until_done(attempt)
        # With endless reconnects a refused password looks like a hang: name the last error seen.
        # The server's refusal is the cause; a reset that follows it is only its echo.
        refusals = [error for error in errors if "Authorization" in error or "Authentication" in error]
        reason = (refusals or errors or ["no answer"])[-1]
        raise NatsUnavailableError(
            f"could not connect to NATS at {', '.join(urls)} within {connect_timeout:g}s: {reason}"
        )
    try:
        return attempt.result()
    except (nats.errors.Error, OSError) as error:
        raise NatsUnavailableError(f"could not connect to NATS at {', '.join(urls)}: {error}") from error


async def _cancel_until_done(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` again and again until it has really finished (see connect_nats)."""
    while not task.done():
        task.cancel()
        try:
            await asyncio.wait({task}, timeout=0.2)
        except asyncio.CancelledError:
            continue  # the caller is being cancelled too: finish this first, the caller re-raises
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
