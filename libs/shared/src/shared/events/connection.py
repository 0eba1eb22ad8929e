"""Connecting to NATS without the traps: a bounded first connect, quick ping, endless reconnects."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats
import structlog

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = ("NatsUnavailableError", "connect_nats")


class NatsUnavailableError(ConnectionError):
    """NATS could not be reached (or refused us) at start-up."""


log = structlog.get_logger("shared.events")


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
    """
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))
        log.warning("nats error", error=str(error))

    async def on_disconnected() -> None:
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=[server.strip() for server in servers.split(",") if server.strip()],
                name=name,
                user=user or None,
                password=password or None,
                inbox_prefix=inbox_prefix,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                ping_interval=10,
                max_outstanding_pings=3,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            ),
            timeout=connect_timeout,
        )
    except TimeoutError as error:
        # With endless reconnects a refused password looks like a hang: name the last error seen.
        # The server's refusal is the cause; a reset that follows it is only its echo.
        refusals = [error for error in errors if "Authorization" in error or "Authentication" in error]
        reason = (refusals or errors or ["no answer"])[-1]
        raise NatsUnavailableError(f"could not connect to NATS at {servers} in {connect_timeout}s: {reason}") from error
