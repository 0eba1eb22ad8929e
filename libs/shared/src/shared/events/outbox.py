"""At-least-once out: events commit with the change that caused them, and a relay publishes them.

``Outbox.add`` writes the event in the caller's transaction (so a rollback takes it away too) with
the current trace context. ``OutboxRelay`` claims unpublished rows with ``FOR UPDATE SKIP LOCKED``
(so any number of relays can run), publishes each with ``Nats-Msg-Id`` = event id (so a retry after
an unknown outcome is deduplicated by JetStream), and marks them published in the same transaction.
It wakes on Postgres ``NOTIFY`` at commit, with a slow poll as a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec
import structlog
from nats.errors import Error as NatsError
from nats.js.errors import NoStreamResponseError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from sqlalchemy import bindparam, func, literal, select, update
from sqlalchemy.engine import make_url

from shared.db import DriverStatement, begun_driver_connection
from shared.events.contracts import encode_event, new_envelope
from shared.events.metrics import (
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    OUTBOX_PUBLISH_FAILURES,
    OUTBOX_PUBLISHED,
    start_outbox_series,
)
from shared.events.pacing import pause, wait_for_either

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

    from shared.events.contracts import Envelope, EventPayload
    from shared.events.tables import EventTables

__all__ = ("Outbox", "OutboxRelay", "OutboxStatus", "messaging_attributes", "outbox_status")

log = structlog.get_logger("shared.events.relay")
_headers_json = msgspec.json.Encoder()
tracer = trace.get_tracer("shared.events")


def messaging_attributes(subject: str, message_id: str, operation: str) -> dict[str, str]:
    """OpenTelemetry messaging attributes for a NATS message."""
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.message.id": message_id,
        "messaging.operation.type": operation,
    }


class Outbox:
    """Writes events into a service's outbox, inside the caller's transaction."""

    def __init__(self, tables: EventTables, *, source: str) -> None:
        self.tables = tables
        self.source = source
        outbox = tables.outbox
        # The row and the relay's wake-up in one statement (one round trip in the caller's request):
        # Postgres delivers the NOTIFY at commit, and never for a rollback.
        self._insert = (
            outbox.insert()
            .values(
                id=bindparam("id"), subject=bindparam("subject"), body=bindparam("body"), headers=bindparam("headers")
            )
            .returning(func.pg_notify(tables.notify_channel, literal("")))
        )
        # The same statement for the transaction's asyncpg connection, once it has begun in Postgres
        # (a write path adds its event after its own statements): no statement machinery per event.
        self._insert_on_driver = DriverStatement(self._insert)

    async def add(self, session: AsyncSession, payload: EventPayload, *, sequence: int) -> Envelope:
        """Add ``payload`` as an event of the current transaction; it leaves only if that commits.

        Args:
            session: The session whose transaction carries the domain change.
            payload: The event's data.
            sequence: The aggregate's version after the change.

        Returns:
            The envelope, as it will be published.
        """
        envelope = new_envelope(payload, source=self.source, sequence=sequence)
        headers: dict[str, str] = {}
        propagate.inject(headers)
        row = {"id": uuid.UUID(envelope.id), "subject": envelope.type, "body": encode_event(envelope)}
        driver = await begun_driver_connection(session)
        if driver is None:  # the transaction's first statement: the session sends its BEGIN
            await session.execute(self._insert, row | {"headers": headers})
        else:  # the driver takes JSON as text, as SQLAlchemy hands it over
            arguments = self._insert_on_driver.arguments(row | {"headers": _headers_json.encode(headers).decode()})
            await driver.execute(self._insert_on_driver.sql, *arguments)
        return envelope


class OutboxStatus:
    """How far behind the relay is."""

    def __init__(self, backlog: int, oldest_age_seconds: float) -> None:
        self.backlog = backlog
        self.oldest_age_seconds = oldest_age_seconds


async def outbox_status(engine: AsyncEngine, tables: EventTables) -> OutboxStatus:
    """How many events wait in a service's outbox, and how long the oldest has waited."""
    outbox = tables.outbox
    query = select(
        func.count(), func.coalesce(func.extract("epoch", func.now() - func.min(outbox.c.created_at)), 0)
    ).where(outbox.c.published_at.is_(None))
    async with engine.connect() as connection:
        backlog, age = (await connection.execute(query)).one()
    return OutboxStatus(int(backlog), float(age))


class OutboxRelay:
    """Publishes a service's outbox to JetStream. Safe to run in any number of replicas.

    Args:
        engine: The service's database engine.
        tables: The service's event tables.
        js: The JetStream context to publish with.
        service: The service's name (for logs and metrics).
        batch_size: Rows claimed per transaction.
        poll_interval: Seconds between polls when no NOTIFY arrives.
        publish_timeout: Seconds to wait for a publish acknowledgement before calling it unknown.
        retention_seconds: How long published rows are kept before they are pruned.
        on_missing_stream: Called when JetStream answers that no stream takes the subject
            (the server lost its store): re-create the streams.
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        tables: EventTables,
        js: JetStreamContext,
        service: str,
        batch_size: int = 100,
        poll_interval: float = 2.0,
        publish_timeout: float = 5.0,
        retention_seconds: float = 86_400.0,
        on_missing_stream: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.engine = engine
        self.tables = tables
        self.js = js
        self.service = service
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self.retention_seconds = retention_seconds
        self.on_missing_stream = on_missing_stream
        self._wake = asyncio.Event()
        start_outbox_series(service)
        outbox = tables.outbox
        self._claim = (
            select(outbox.c.id, outbox.c.subject, outbox.c.body, outbox.c.headers)
            .where(outbox.c.published_at.is_(None))
            .order_by(outbox.c.created_at, outbox.c.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        self._mark_published = (
            update(outbox)
            .where(outbox.c.id.in_(bindparam("ids", expanding=True)))
            .values(published_at=func.clock_timestamp())
        )
        self._mark_failed = (
            update(outbox)
            .where(outbox.c.id.in_(bindparam("ids", expanding=True)))
            .values(attempts=outbox.c.attempts + 1, last_error=bindparam("error"))
        )
        self._prune = outbox.delete().where(outbox.c.published_at < bindparam("cutoff"))

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; errors (database or NATS down) back off and retry."""
        listener = asyncio.create_task(self._listen(stop), name=f"{self.service}-outbox-listen")
        failures = 0
        last_housekeeping = 0.0
        try:
            while not stop.is_set():
                # Cleared before the claim, not after it: a NOTIFY for a row committed while this
                # cycle runs must wake the next one instead of waiting for the poll.
                self._wake.clear()
                try:
                    published, failed = await self.relay_once()
                    if time.monotonic() - last_housekeeping > self.poll_interval:
                        await self.housekeeping()
                        last_housekeeping = time.monotonic()
                except Exception as error:  # noqa: BLE001 - the relay outlives any outage
                    log.warning("relay cycle failed", service=self.service, error=repr(error))
                    published, failed = 0, 1
                if failed:
                    failures += 1
                    await pause(stop, min(0.2 * 2**failures, 10.0))
                    continue
                failures = 0
                if published < self.batch_size:
                    await wait_for_either(stop, self._wake, self.poll_interval)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def relay_once(self) -> tuple[int, int]:
        """Claim one batch, publish it, and mark what was acknowledged.

        Returns:
            How many events were published, and how many failed (and stay for a retry).
        """
        async with self.engine.begin() as connection:
            rows = (await connection.execute(self._claim, {"limit": self.batch_size})).all()
            if not rows:
                return 0, 0
            results = await asyncio.gather(*(self._publish(row) for row in rows), return_exceptions=True)
            published = [row.id for row, result in zip(rows, results, strict=True) if result is None]
            failures = [(row.id, result) for row, result in zip(rows, results, strict=True) if result is not None]
            if published:
                await connection.execute(self._mark_published, {"ids": published})
            if failures:
                await self._record_failures(connection, failures)
        OUTBOX_PUBLISHED.labels(self.service).inc(len(published))
        if failures:
            OUTBOX_PUBLISH_FAILURES.labels(self.service).inc(len(failures))
            if any(isinstance(error, NoStreamResponseError) for _, error in failures) and self.on_missing_stream:
                await self.on_missing_stream()
        return len(published), len(failures)

    async def _record_failures(self, connection: AsyncConnection, failures: list[tuple[Any, BaseException]]) -> None:
        error = repr(failures[0][1])[:500]
        log.warning(
            "publish failed; will retry with the same ids", service=self.service, count=len(failures), error=error
        )
        await connection.execute(self._mark_failed, {"ids": [row_id for row_id, _ in failures], "error": error})

    async def _publish(self, row: Any) -> None:
        message_id = str(row.id)
        parent = propagate.extract(row.headers or {})
        with tracer.start_as_current_span(
            f"send {row.subject}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=messaging_attributes(row.subject, message_id, "send"),
        ) as span:
            headers = {"Nats-Msg-Id": message_id}
            propagate.inject(headers)
            try:
                await self.js.publish(row.subject, row.body, timeout=self.publish_timeout, headers=headers)
            except (NatsError, TimeoutError) as error:
                # A timeout means "unknown": the server may have stored it. The retry carries the
                # same Nats-Msg-Id, so JetStream drops it if it did.
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR)
                raise

    async def status(self) -> OutboxStatus:
        """The backlog and the age of its oldest event."""
        return await outbox_status(self.engine, self.tables)

    async def housekeeping(self) -> None:
        """Update the backlog gauges and prune published rows past their retention."""
        current = await self.status()
        OUTBOX_BACKLOG.labels(self.service).set(current.backlog)
        OUTBOX_OLDEST_AGE.labels(self.service).set(current.oldest_age_seconds)
        async with self.engine.begin() as connection:
            cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=self.retention_seconds)
            await connection.execute(self._prune, {"cutoff": cutoff})

    async def _listen(self, stop: asyncio.Event) -> None:
        """Keep a LISTEN connection open (re-opening it after a Postgres restart)."""
        url = self.engine.url
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            connection: asyncpg.Connection[Any] | None = None
            closed = asyncio.Event()
            try:
                connection = await asyncpg.connect(dsn, timeout=5)
                connection.add_termination_listener(lambda _connection, closed=closed: closed.set())
                await connection.add_listener(self.tables.notify_channel, lambda *_: self._wake.set())
                self._wake.set()  # events may have committed while nobody listened
                await wait_for_either(stop, closed, None)
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                log.info("outbox listener reconnecting", service=self.service, error=repr(error))
                await pause(stop, 1.0)
            finally:
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
