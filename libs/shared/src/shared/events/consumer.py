"""Exactly-once effect in: durable pull consumers whose every message is one database transaction.

Each message: insert its event id into the service's inbox (a duplicate is acknowledged and
skipped), run the handler in the same transaction (it may add outbox events), commit, run what the
handler left for after the commit, then ack.
A failure is handed back with ``nak(delay)`` on an exponential schedule; the last allowed attempt,
or a message that cannot be decoded at all, goes to ``dlq.<stream>.<consumer>`` and is terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError, ServiceUnavailableError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from sqlalchemy import bindparam
from sqlalchemy.dialects.postgresql import insert

from shared.events.contracts import DecodedEvent, EventPayload, UndecodableEventError, decode_event
from shared.events.metrics import (
    CONSUMER_DEAD_LETTERED,
    CONSUMER_DUPLICATES,
    CONSUMER_PROCESSED,
    CONSUMER_RETRIED,
    start_consumer_series,
)
from shared.events.outbox import messaging_attributes
from shared.events.pacing import pause
from shared.events.streams import dead_letter_subject, ensure_consumer

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.events.contracts import Envelope
    from shared.events.outbox import Outbox
    from shared.events.streams import ConsumerSpec

__all__ = ("EventConsumer", "EventContext", "EventHandlers", "HandlerOutcome")

log = structlog.get_logger("shared.events.consumer")
tracer = trace.get_tracer("shared.events")
PayloadT = TypeVar("PayloadT", bound=EventPayload)


@dataclass(frozen=True)
class EventContext:
    """What a handler may touch: the transaction's session, the envelope, the service's outbox."""

    session: AsyncSession
    envelope: Envelope
    outbox: Outbox
    after_commit: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Effects outside the database that must wait for the commit (a core NATS publish, say).

    The consumer runs them in order once the transaction committed, and never after a rollback or
    for a duplicate. They are best effort: a failing one is logged and neither undoes the event
    nor makes it retried, so anything that must not be lost belongs in the transaction instead.
    """


Handler = Callable[[Any, EventContext], Awaitable[None]]


class EventHandlers:
    """Handlers of one consumer, registered by payload type.

    Handlers never commit: the consumer commits once, with the inbox row, after the handler returns.
    """

    def __init__(self) -> None:
        self._handlers: dict[type[EventPayload], Handler] = {}

    def on(
        self, payload_type: type[PayloadT]
    ) -> Callable[
        [Callable[[PayloadT, EventContext], Awaitable[None]]], Callable[[PayloadT, EventContext], Awaitable[None]]
    ]:
        """Decorator: handle events whose payload is ``payload_type``."""

        def register(
            handler: Callable[[PayloadT, EventContext], Awaitable[None]],
        ) -> Callable[[PayloadT, EventContext], Awaitable[None]]:
            if payload_type in self._handlers:
                raise ValueError(f"{payload_type.__name__} already has a handler")
            self._handlers[payload_type] = handler
            return handler

        return register

    def get(self, payload_type: type[EventPayload]) -> Handler | None:
        """The handler for a payload type, if any."""
        return self._handlers.get(payload_type)


class HandlerOutcome:
    """What became of one message."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


class EventConsumer:
    """Runs one durable pull consumer of one service.

    Args:
        spec: The consumer's declaration (stream, filter, attempts, backoff).
        handlers: What to do with each payload type.
        session_maker: Opens sessions on the service's database.
        js: JetStream.
        outbox: The service's outbox: offered to handlers that publish in turn, and it names the
            service's event tables, whose inbox records what was applied.
        batch_size: Messages fetched at once.
        fetch_timeout: Seconds a fetch waits for messages.
    """

    def __init__(
        self,
        *,
        spec: ConsumerSpec,
        handlers: EventHandlers,
        session_maker: async_sessionmaker[AsyncSession],
        js: JetStreamContext,
        outbox: Outbox,
        batch_size: int = 50,
        fetch_timeout: float = 1.0,
    ) -> None:
        self.spec = spec
        self.handlers = handlers
        self.session_maker = session_maker
        self.js = js
        self.outbox = outbox
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        start_consumer_series(spec.durable)
        tables = outbox.tables
        self._record = (
            insert(tables.inbox)
            .values(consumer=spec.durable, event_id=bindparam("event_id"), event_type=bindparam("event_type"))
            .on_conflict_do_nothing()
            .returning(tables.inbox.c.event_id)
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and process until ``stop`` is set, then finish in-flight work and unsubscribe."""
        subscription: Any = None
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if subscription is None:
                        await ensure_consumer(self.js, self.spec)
                        subscription = await self.js.pull_subscribe_bind(
                            durable=self.spec.durable, stream=self.spec.stream
                        )
                    messages = await subscription.fetch(self.batch_size, timeout=self.fetch_timeout)
                except (NatsTimeoutError, TimeoutError):
                    continue  # nothing to do right now
                except (ServiceUnavailableError, NotFoundError) as error:
                    # The server lost the consumer (or its stream): re-create it, without spinning.
                    log.warning("consumer missing; re-creating", consumer=self.spec.durable, error=repr(error))
                    await _unsubscribe(subscription)
                    subscription = None
                    failures += 1
                    await pause(stop, min(0.5 * failures, 5.0))
                    continue
                except NatsError as error:
                    log.warning("fetch failed", consumer=self.spec.durable, error=repr(error))
                    failures += 1
                    await pause(stop, min(0.5 * failures, 5.0))
                    continue
                failures = 0
                for message in messages:
                    await self.process(message)  # in order; a stop waits for the batch in hand
        finally:
            await _unsubscribe(subscription)

    async def process(self, message: Msg) -> str:
        """Apply one message exactly once, or hand it back, or dead-letter it."""
        attempt = message.metadata.num_delivered
        try:
            decoded = decode_event(message.data)
        except UndecodableEventError as error:
            await self.dead_letter(message, f"undecodable: {error}")
            return HandlerOutcome.IGNORED
        handler = self.handlers.get(type(decoded.payload))
        if handler is None:
            await message.ack()
            return HandlerOutcome.IGNORED
        parent = propagate.extract(message.headers or {})
        with tracer.start_as_current_span(
            f"process {message.subject}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **messaging_attributes(message.subject, decoded.envelope.id, "process"),
                "messaging.consumer.group.name": self.spec.durable,
                "messaging.message.delivery_attempt": attempt,
            },
        ) as span:
            keep_alive = asyncio.create_task(self._keep_alive(message))
            try:
                outcome = await self.apply(decoded, handler)
            except Exception as error:  # noqa: BLE001 - any handler failure is retried or dead-lettered
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR)
                await self._retry_or_give_up(message, attempt, error)
                return HandlerOutcome.IGNORED
            finally:
                keep_alive.cancel()
            await message.ack()
        (CONSUMER_DUPLICATES if outcome == HandlerOutcome.DUPLICATE else CONSUMER_PROCESSED).labels(
            self.spec.durable
        ).inc()
        return outcome

    async def apply(self, decoded: DecodedEvent, handler: Handler) -> str:
        """The inbox row and the handler's effects in one transaction, then its after-commit effects."""
        async with self.session_maker() as session, session.begin():
            recorded = await session.execute(
                self._record, {"event_id": decoded.envelope.id, "event_type": decoded.envelope.type}
            )
            if recorded.first() is None:
                return HandlerOutcome.DUPLICATE
            context = EventContext(session=session, envelope=decoded.envelope, outbox=self.outbox)
            await handler(decoded.payload, context)
        await self._run_after_commit(decoded, context.after_commit)
        return HandlerOutcome.APPLIED

    async def _run_after_commit(self, decoded: DecodedEvent, effects: list[Callable[[], Awaitable[None]]]) -> None:
        for effect in effects:
            try:
                await effect()
            except Exception as error:  # noqa: BLE001 - committed is committed: log, never retry the event
                log.warning(
                    "after-commit effect failed",
                    consumer=self.spec.durable,
                    event_id=decoded.envelope.id,
                    error=repr(error),
                )

    async def _retry_or_give_up(self, message: Msg, attempt: int, error: Exception) -> None:
        if attempt >= self.spec.max_deliver:
            await self.dead_letter(message, f"failed {attempt} times: {error!r}")
            return
        delay = self.spec.delay_after(attempt)
        log.warning(
            "handler failed; retrying", consumer=self.spec.durable, attempt=attempt, delay=delay, error=repr(error)
        )
        CONSUMER_RETRIED.labels(self.spec.durable).inc()
        await message.nak(delay=delay)

    async def dead_letter(self, message: Msg, reason: str) -> None:
        """Publish the message to the DLQ stream with the reason, then terminate it.

        If the DLQ publish itself fails, the message is handed back instead: never dropped.
        """
        sequence = message.metadata.sequence.stream
        headers = {key: value for key, value in (message.headers or {}).items() if key != "Nats-Msg-Id"}
        headers |= {
            "Nats-Msg-Id": f"dlq:{self.spec.stream}:{self.spec.durable}:{sequence}",
            "Relay-Error": reason[:2000],
            "Relay-Original-Subject": message.subject,
            "Relay-Original-Stream": self.spec.stream,
            "Relay-Original-Sequence": str(sequence),
            "Relay-Consumer": self.spec.durable,
            "Relay-Attempts": str(message.metadata.num_delivered),
        }
        try:
            await self.js.publish(
                dead_letter_subject(self.spec.stream, self.spec.durable), message.data, headers=headers
            )
        except (NatsError, TimeoutError) as error:
            log.error("dead-letter publish failed; handing the message back", error=repr(error))
            await message.nak(delay=self.spec.backoff_seconds[-1])
            return
        log.error("dead-lettered", consumer=self.spec.durable, sequence=sequence, reason=reason)
        CONSUMER_DEAD_LETTERED.labels(self.spec.durable).inc()
        await message.term()

    async def _keep_alive(self, message: Msg) -> None:
        """Tell the server a long handler is still working, so it does not redeliver meanwhile."""
        interval = max(self.spec.ack_wait_seconds / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(NatsError):
                await message.in_progress()


async def _unsubscribe(subscription: Any) -> None:
    # Unsubscribe before the connection drains: a drain after a timed-out fetch otherwise hangs.
    if subscription is not None:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
