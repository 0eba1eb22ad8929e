"""The worker process of a service: its outbox relay, its consumers and its sweeps, until SIGTERM.

Every loop here is safe in any number of replicas: the relay claims rows with SKIP LOCKED,
consumers share a durable consumer, and sweeps claim their rows the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from shared.events.connection import connect_nats
from shared.events.consumer import EventConsumer
from shared.events.outbox import Outbox, OutboxRelay
from shared.events.pacing import pause
from shared.events.permissions import inbox_prefix
from shared.events.streams import DLQ_STREAM, STREAMS, ensure_streams
from shared.health import run_checks
from shared.telemetry import configure_logging, configure_tracing

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from nats.aio.client import Client as NatsClient
    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from shared.events.consumer import EventHandlers
    from shared.events.streams import ConsumerSpec
    from shared.events.tables import EventTables
    from shared.health import ReadinessCheck
    from shared.settings import ServiceSettings

__all__ = ("Sweep", "Worker", "WorkerPlan", "run_worker_until_signalled")

log = structlog.get_logger("shared.worker")


@dataclass(frozen=True)
class Sweep:
    """A periodic job, such as cancelling orders left unpaid."""

    name: str
    interval_seconds: float
    run: Callable[[async_sessionmaker[AsyncSession]], Awaitable[int]]
    """Does one pass and returns how many rows it changed."""


@dataclass(frozen=True)
class WorkerPlan:
    """What one service's worker runs."""

    service: str
    settings: ServiceSettings
    tables: EventTables
    consumers: Sequence[tuple[ConsumerSpec, EventHandlers]] = ()
    sweeps: Sequence[Sweep] = ()
    owned_streams: tuple[str, ...] = field(default=())
    """Streams this worker creates or updates at start; by default the one it publishes to, and DLQ."""

    def streams(self) -> tuple[str, ...]:
        """The streams to ensure at start."""
        if self.owned_streams:
            return self.owned_streams
        return (*(spec.name for spec in STREAMS if spec.owner == self.service), DLQ_STREAM)


class Worker:
    """Runs a plan against the service's database and NATS until stopped."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        settings = plan.settings
        self.engine: AsyncEngine = create_async_engine(
            settings.database_url, pool_size=settings.database_pool_size, pool_pre_ping=True
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.outbox = Outbox(plan.tables, source=plan.service)
        self.nats: NatsClient | None = None
        self.relay: OutboxRelay | None = None
        self.consumers: list[EventConsumer] = []

    async def connect(self) -> JetStreamContext:
        """Connect to NATS and make sure the plan's streams exist."""
        settings = self.plan.settings
        self.nats = await connect_nats(
            settings.nats_url,
            name=f"{self.plan.service}-worker",
            user=settings.nats_user,
            password=settings.nats_password,
            inbox_prefix=inbox_prefix(self.plan.service),
        )
        js = self.nats.jetstream()
        await self.ensure_streams(js)
        self.relay = OutboxRelay(
            engine=self.engine,
            tables=self.plan.tables,
            js=js,
            service=self.plan.service,
            poll_interval=settings.outbox_poll_seconds,
            retention_seconds=settings.outbox_retention_seconds,
            on_missing_stream=lambda: self.ensure_streams(js),
        )
        self.consumers = [
            EventConsumer(
                spec=spec,
                handlers=handlers,
                session_maker=self.sessions,
                tables=self.plan.tables,
                js=js,
                outbox=self.outbox,
            )
            for spec, handlers in self.plan.consumers
        ]
        return js

    async def ensure_streams(self, js: JetStreamContext) -> None:
        """Create or update the plan's streams (idempotent; also after a server lost its store)."""
        settings = self.plan.settings
        await ensure_streams(
            js,
            duplicate_window_seconds=settings.events_duplicate_window_seconds,
            max_age_seconds=settings.events_max_age_seconds,
            replicas=settings.events_stream_replicas,
            names=self.plan.streams(),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Relay, consume and sweep until ``stop`` is set; then finish in-flight work and close."""
        health = None
        try:
            await self.connect()
            assert self.relay is not None  # noqa: S101 - connect() set it
            if self.plan.settings.worker_health_port:
                health = await asyncio.start_server(
                    self._serve_health, self.plan.settings.worker_health_host, self.plan.settings.worker_health_port
                )
            log.info("worker running", service=self.plan.service, consumers=[c.spec.durable for c in self.consumers])
            loops = [self.relay.run(stop), *(consumer.run(stop) for consumer in self.consumers)]
            loops += [self._sweep(sweep, stop) for sweep in self.plan.sweeps]
            await asyncio.gather(*loops)
        finally:
            if health is not None:
                health.close()
                await health.wait_closed()
            if self.nats is not None and not self.nats.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.nats.drain(), 10)
            await self.engine.dispose()
            log.info("worker stopped", service=self.plan.service)

    async def _sweep(self, sweep: Sweep, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                changed = await sweep.run(self.sessions)
                if changed:
                    log.info("sweep", sweep=sweep.name, changed=changed)
            except Exception as error:  # noqa: BLE001 - a failed pass is retried at the next interval
                log.warning("sweep failed", sweep=sweep.name, error=repr(error))
            await pause(stop, sweep.interval_seconds)

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        """Database reachable and NATS connected."""

        async def database() -> str | None:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return None

        async def nats() -> str | None:
            return None if self.nats is not None and self.nats.is_connected else "not connected"

        return {"database": database, "nats": nats}

    async def _serve_health(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A few lines of HTTP instead of a web framework: probes and Prometheus need nothing more.
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            status, content_type, body = await self._health_answer(path)
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

    async def _health_answer(self, path: str) -> tuple[str, str, bytes]:
        if path == "/health/live":
            return "200 OK", "application/json", b'{"status":"ok","checks":{}}'
        if path == "/health/ready":
            report = await run_checks(self.readiness_checks())
            status = "200 OK" if report.status == "ok" else "503 Service Unavailable"
            return status, "application/json", msgspec.json.encode(report)
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest()
        return "404 Not Found", "application/json", b'{"status":404,"title":"Not found"}'


def run_worker_until_signalled(plan: WorkerPlan) -> None:
    """The ``<service> worker`` command: run until SIGTERM or SIGINT, then stop gracefully."""
    configure_logging(level=plan.settings.log_level, json=plan.settings.log_json)
    configure_tracing(plan.service)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await Worker(plan).run(stop)

    asyncio.run(main())
