"""The worker process of a service: its outbox relay, its consumers and its sweeps, until SIGTERM.

Every loop here is safe in any number of replicas: the relay claims rows with SKIP LOCKED,
consumers share a durable consumer, and sweeps claim their rows the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from shared.db import service_engine
from shared.events.connection import NatsConfigurationError, connect_nats, parse_servers
from shared.events.consumer import EventConsumer
from shared.events.metrics import start_consumer_series, start_outbox_series
from shared.events.outbox import OutboxRelay
from shared.events.pacing import pause
from shared.events.permissions import inbox_prefix
from shared.events.streams import DLQ_STREAM, STREAMS, ensure_streams
from shared.health import run_checks
from shared.internal_port import Answer, metrics_answer, start_internal_server
from shared.settings import SettingsError, variable_name
from shared.telemetry import configure_logging, configure_tracing

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from types import FrameType

    from nats.aio.client import Client as NatsClient
    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from shared.events.consumer import EventHandlers
    from shared.events.outbox import Outbox
    from shared.events.streams import ConsumerSpec
    from shared.events.tables import EventTables
    from shared.health import ReadinessCheck
    from shared.settings import ServiceSettings

__all__ = ("Sweep", "Worker", "WorkerPlan", "install_stop_signals", "run_worker_until_signalled")

log = structlog.get_logger("shared.worker")


@dataclass(frozen=True)
class Sweep:
    """A periodic job, such as cancelling orders left unpaid."""

    name: str
    interval_seconds: float
    run: Callable[[async_sessionmaker[AsyncSession]], Awaitable[int]]
    """Does one pass and returns how many rows it changed."""
    drain: bool = False
    """Start the next pass at once while passes change rows, pausing only when one changed none: for a
    queue that must empty at the speed of what it feeds (email), not one batch per interval. Keep each
    pass short: a stop request is seen between passes."""


@dataclass(frozen=True)
class WorkerPlan:
    """What one service's worker runs."""

    settings: ServiceSettings
    outbox: Outbox
    """The service's one outbox: its source names the service, its tables hold outbox and inbox."""
    consumers: Sequence[tuple[ConsumerSpec, EventHandlers]] = ()
    sweeps: Sequence[Sweep] = ()
    owned_streams: tuple[str, ...] = field(default=())
    """Streams this worker creates or updates at start; by default the one it publishes to, and DLQ."""

    @property
    def service(self) -> str:
        """The service's name."""
        return self.outbox.source

    @property
    def tables(self) -> EventTables:
        """The service's event tables."""
        return self.outbox.tables

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
        # The API's engine settings, hide_parameters too: a worker's database errors are logged.
        self.engine: AsyncEngine = service_engine(settings.database_url, pool_size=settings.database_pool_size)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.outbox = plan.outbox
        self.nats: NatsClient | None = None
        self.relay: OutboxRelay | None = None
        self.consumers: list[EventConsumer] = []
        # Every series from the first scrape, before NATS answers, so alerts see zeros, not nothing.
        start_outbox_series(plan.service)
        for spec, _handlers in plan.consumers:
            start_consumer_series(spec.durable)

    async def connect(self) -> JetStreamContext:
        """Connect to NATS and make sure the plan's streams exist.

        Raises:
            SettingsError: The service's NATS URL is not set or not a NATS URL (refused at once).
            NatsUnavailableError: NATS did not answer within the configured connect timeout.
        """
        settings = self.plan.settings
        self.nats = await connect_nats(
            self.nats_servers(),
            name=f"{self.plan.service}-worker",
            user=settings.nats_user,
            password=settings.nats_password,
            inbox_prefix=inbox_prefix(self.plan.service),
            connect_timeout=settings.nats_connect_timeout_seconds,
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
                js=js,
                outbox=self.outbox,
            )
            for spec, handlers in self.plan.consumers
        ]
        return js

    def nats_servers(self) -> str:
        """The NATS URLs of the settings, refused with the variable's name when unusable."""
        variable = variable_name(self.plan.service, "nats_url")
        try:
            parse_servers(self.plan.settings.nats_url)
        except NatsConfigurationError as error:
            if not self.plan.settings.nats_url.strip():
                raise SettingsError(f"{variable} is not set: this command needs NATS") from error
            raise SettingsError(f"{variable}: {error}") from error
        return self.plan.settings.nats_url

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
        self.nats_servers()  # an unusable setting is refused before anything starts or logs
        health = None
        try:
            if not await _unless_stopped(self.connect(), stop):
                log.info("stopped before NATS answered", service=self.plan.service)
                return
            assert self.relay is not None  # noqa: S101 - connect() set it
            if self.plan.settings.worker_health_port:
                health = await start_internal_server(
                    self.plan.settings.worker_health_host,
                    self.plan.settings.worker_health_port,
                    self._health_answer,
                    required=True,
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
                if sweep.drain and changed:
                    continue
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

    async def _health_answer(self, path: str) -> Answer | None:
        if path == "/health/live":
            return "200 OK", "application/json", b'{"status":"ok","checks":{}}'
        if path == "/health/ready":
            report = await run_checks(self.readiness_checks())
            status = "200 OK" if report.status == "ok" else "503 Service Unavailable"
            return status, "application/json", msgspec.json.encode(report)
        if path == "/metrics":
            return metrics_answer()
        return None


def run_worker_until_signalled(plan: WorkerPlan, *, grace_seconds: float = 25.0) -> None:
    """The ``<service> worker`` command: run until SIGTERM or SIGINT, then stop gracefully.

    Args:
        plan: What the worker runs.
        grace_seconds: How long the graceful stop may take after the first signal; then the
            process exits anyway (keep it below the pod's termination grace period).
    """
    configure_logging(level=plan.settings.log_level, json=plan.settings.log_json)
    configure_tracing(plan.service, event_log=plan.settings.access_log)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(
            asyncio.get_running_loop(), stop, grace_seconds=grace_seconds, name=f"{plan.service} worker"
        )
        await Worker(plan).run(stop)

    asyncio.run(main())


def install_stop_signals(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, *, grace_seconds: float, name: str
) -> None:
    """SIGTERM and SIGINT set ``stop``; past ``grace_seconds``, or at a second signal, the process exits.

    Plain ``signal.signal`` handlers, not ``loop.add_signal_handler``: asyncio's handlers run only
    when the event loop gets control back, so a library stuck in a loop that never yields (nats-py
    did, see ``shared.events.connection``) would keep the process deaf to SIGTERM. A Python-level
    handler runs between any two bytecodes of the main thread, and the watchdog is a thread of its
    own, so the process stops within the grace period whatever the loop is doing.
    """
    signalled = threading.Event()

    def give_up(signum: int) -> None:
        sys.stderr.write(f"{name}: did not stop within {grace_seconds:g}s of the signal; exiting\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signalled.is_set():
            give_up(signum)  # a second signal: the operator does not want to wait
        signalled.set()
        loop.call_soon_threadsafe(stop.set)
        watchdog = threading.Timer(grace_seconds, give_up, args=(signum,))
        watchdog.daemon = True
        watchdog.start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


async def _unless_stopped(work: Awaitable[object], stop: asyncio.Event) -> bool:
    """Await ``work`` unless ``stop`` is set first (then cancel it); True when it finished."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        # asyncio.wait_for (in nats-py and around it) can swallow a cancellation that lands just
        # as its inner future completes (CPython bpo-42130): cancel until the task is really done.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()
        return False
    task.result()  # its error, if any, is the caller's
    return True
