"""Connecting to NATS without the traps: a bounded first connect, quick ping, endless reconnects."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats
import structlog

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = ("connect_nats",)

log = structlog.get_logger("shared.events")


async def connect_nats(
    servers: str,
    *,
    name: str,
    user: str = "",
    password: str = "",
    connect_timeout: float = 10.0,
) -> NatsClient:
    """Connect to NATS, giving up after ``connect_timeout`` when the server is down at start.

    With ``max_reconnect_attempts=-1`` nats-py would otherwise block forever on a dead server.
    After the first connect, the client reconnects without end and buffers publishes meanwhile.
    """

    async def on_error(error: Exception) -> None:
        log.warning("nats error", error=str(error))

    async def on_disconnected() -> None:
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    return await asyncio.wait_for(
        nats.connect(
            servers=[server.strip() for server in servers.split(",") if server.strip()],
            name=name,
            user=user or None,
            password=password or None,
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
