"""Exactly-once effect in: durable pull consumers that apply each fetched batch in one transaction.

Each batch: one transaction records every event id of the batch in the service's inbox in one
statement (the ids it did not record are duplicates: skipped), then runs each message's handler.
A failing handler is rolled back alone: the batch runs again without it, each handler under a
savepoint of its own (and its inbox row taken out), while the others commit together. After the
commit: what the handlers left for after it, in order, then the acks. A failure is handed back with
``nak(delay)`` on an exponential schedule; the last allowed attempt, or a message that cannot be
decoded at all, goes to ``dlq.<stream>.<consumer>`` and is terminated. A commit that fails (the
connection lost) hands every message of the batch back: the inbox deduplicates the redelivery if
the commit happened after all.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError, ServiceUnavailableError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from sqlalchemy import any_, bindparam, delete, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY, insert

from shared.db import is_database_unavailable, transient_sqlstate
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
from shared.telemetry import EVENT_OUTCOME_ATTRIBUTE

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from opentelemetry.trace import Span
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

    Args:
        own_transactions: Apply each event in a transaction of its own rather than one per fetched
            batch. For handlers that lock rows in a fixed order (orders' stock): a batch holds every
            handler's locks until it commits, so the next handler would take its first locks while
            holding the previous one's last ones, which breaks such an order (and can deadlock).
    """

    def __init__(self, *, own_transactions: bool = False) -> None:
        self._handlers: dict[type[EventPayload], Handler] = {}
        self.own_transactions = own_transactions

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
    RETRIED = "retried"
    """The handler failed; handed back for a later attempt (also when the dead-letter publish failed)."""
    DEAD_LETTERED = "dead-lettered"


class EventConsumer:
    """Runs one durable pull consumer of one service.

    Args:
        spec: The consumer's declaration (stream, filter, attempts, backoff).
        handlers: What to do with each payload type.
        session_maker: Opens sessions on the service's database.
        js: JetStream.
        outbox: The service's outbox: offered to handlers that publish in turn, and it names the
            service's event tables, whose inbox records what was applied.
        batch_size: Messages fetched at once, and applied in one transaction.
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
        inbox = outbox.tables.inbox
        self._record = (
            insert(inbox)
            .values(consumer=spec.durable, event_id=bindparam("event_id"), event_type=bindparam("event_type"))
            .on_conflict_do_nothing()
            .returning(inbox.c.event_id)
        )
        # The whole batch in one statement whatever its size (one cached plan): the ids it returns
        # are the ones this transaction recorded; any other was applied before (a duplicate).
        # Rows go in id order, so two replicas whose batches share ids wait for each other in one
        # order instead of deadlocking.
        arrived = (
            func.unnest(
                bindparam("event_ids", type_=ARRAY(inbox.c.event_id.type)),
                bindparam("event_types", type_=ARRAY(inbox.c.event_type.type)),
            )
            .table_valued("event_id", "event_type")
            .render_derived(name="arrived")
        )
        self._record_batch = (
            insert(inbox)
            .from_select(
                ["consumer", "event_id", "event_type"],
                select(
                    literal(spec.durable, type_=inbox.c.consumer.type), arrived.c.event_id, arrived.c.event_type
                ).order_by(arrived.c.event_id),
            )
            .on_conflict_do_nothing()
            .returning(inbox.c.event_id)
        )
        self._alive = select(literal(1))
        # A message whose handler failed leaves the batch: its inbox row must not commit either.
        self._forget = delete(inbox).where(
            inbox.c.consumer == spec.durable,
            inbox.c.event_id == any_(bindparam("event_ids", type_=ARRAY(inbox.c.event_id.type))),
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
                await self.process_batch(messages)  # a stop waits for the batch in hand
        finally:
            await _unsubscribe(subscription)

    async def process(self, message: Msg) -> str:
        """Apply one message exactly once, or hand it back, or dead-letter it."""
        [outcome] = await self.process_batch([message])
        return outcome

    async def process_batch(self, messages: Sequence[Msg]) -> list[str]:
        """Apply fetched messages in one transaction, each exactly once, and settle each with the server.

        Every message is acked only after the commit that holds its effect; a message whose handler
        failed is rolled back alone and handed back (or dead-lettered) while the others commit; a
        message already in the inbox is acked and skipped. With ``own_transactions`` handlers, each
        message is a transaction of its own.

        Returns:
            Each message's outcome, in the order given (a handed-back message counts as ignored).
        """
        outcomes = [HandlerOutcome.IGNORED] * len(messages)
        deliveries: list[_Delivery] = []
        for index, message in enumerate(messages):
            try:
                decoded = decode_event(message.data)
            except UndecodableEventError as error:
                await self.dead_letter(message, f"undecodable: {error}")
                continue
            handler = self.handlers.get(type(decoded.payload))
            if handler is None:
                await message.ack()  # nothing to apply, so nothing to wait for
                continue
            try:
                event_id = uuid.UUID(decoded.envelope.id)
            except ValueError:
                # The inbox keys on the id: checked here, so one bad message cannot fail its batch.
                await self.dead_letter(message, f"undecodable: event id {decoded.envelope.id[:100]!r} is not a UUID")
                continue
            span = self._start_span(message, decoded)
            deliveries.append(_Delivery(index, message, decoded, event_id, handler, span))
        if not deliveries:
            return outcomes
        keep_alive = asyncio.create_task(self._keep_alive([delivery.message for delivery in deliveries]))
        transactions = [[delivery] for delivery in deliveries] if self.handlers.own_transactions else [deliveries]
        try:
            for transaction in transactions:
                await self._apply_batch(transaction)
                await self._settle(transaction, alone=len(transaction) == 1)
        finally:
            keep_alive.cancel()
            for delivery in deliveries:
                delivery.span.end()  # ended here too when the process is cancelled mid-batch
        for delivery in deliveries:
            outcomes[delivery.index] = delivery.outcome
        return outcomes

    def _start_span(self, message: Msg, decoded: DecodedEvent) -> Span:
        # One CONSUMER span per message, child of its producer's span (the batch is only a transport
        # detail: each message's trace continues the request that caused it).
        return tracer.start_span(
            f"process {message.subject}",
            context=propagate.extract(message.headers or {}),
            kind=SpanKind.CONSUMER,
            attributes={
                **messaging_attributes(message.subject, decoded.envelope.id, "process"),
                "messaging.consumer.group.name": self.spec.durable,
                "messaging.message.delivery_attempt": message.metadata.num_delivered,
            },
        )

    async def _apply_batch(self, deliveries: list[_Delivery]) -> None:
        """The inbox rows and every handler's effects in one transaction, each failure rolled back alone.

        The first pass runs the handlers one after another with no savepoint (a savepoint costs two
        round trips per message: more than a typical handler). When a handler fails, that pass is
        rolled back whole and a second one runs the others again, each under a savepoint of its own,
        without the one that failed: so a failing message fails once per delivery, the others commit,
        and a handler may run twice for one delivery but its effects commit once.
        """
        failed: dict[uuid.UUID, Exception] = {}
        try:
            await self._run_batch(deliveries, failed, savepoints=False)
            return
        except _HandlerFailedError as failure:
            for delivery in deliveries:
                delivery.forget_attempt()
            if failure.delivery is not None:
                failed[failure.delivery.event_id] = failure.error
                failure.delivery.fail(failure.error)
        except Exception as error:  # noqa: BLE001 - the commit failed or its outcome is unknown
            if is_database_unavailable(error):
                self._fail_batch(deliveries, error)
                return
            # Not the connection: a handler left the transaction unable to commit (it swallowed a
            # database error, or broke a deferred constraint). The savepoints will show which.
            log.info("batch could not commit; isolating its handlers", consumer=self.spec.durable, error=repr(error))
            for delivery in deliveries:
                delivery.forget_attempt()
        if all(delivery.error is not None for delivery in deliveries):
            return
        try:
            await self._run_batch(deliveries, failed, savepoints=True)
        except Exception as error:  # noqa: BLE001 - the commit failed or its outcome is unknown
            self._fail_batch(deliveries, error)

    def _fail_batch(self, deliveries: list[_Delivery], error: Exception) -> None:
        # Handler failures are caught per message, so this is the transaction itself (the inbox
        # insert, the commit, the connection under them): nothing of the batch may be acked. If the
        # commit did happen, the redelivery finds the inbox rows and skips the effects.
        log.warning("batch transaction failed", consumer=self.spec.durable, error=repr(error))
        for delivery in deliveries:
            delivery.fail(error, batch=True)

    async def _run_batch(
        self, deliveries: list[_Delivery], failed: dict[uuid.UUID, Exception], *, savepoints: bool
    ) -> None:
        """One pass over the batch in one transaction.

        Raises:
            _HandlerFailedError: Without savepoints, at the first handler that fails (the
                transaction is rolled back).
        """
        async with self.session_maker() as session, session.begin():
            recorded = await self._record_all(session, [d for d in deliveries if d.event_id not in failed])
            newly_failed = []
            for delivery in deliveries:
                event_id = delivery.event_id
                if event_id in failed:  # it failed (or a copy of it did) in this delivery: the same fate
                    delivery.fail(failed[event_id])
                elif event_id not in recorded:
                    delivery.outcome = HandlerOutcome.DUPLICATE
                else:
                    recorded.discard(event_id)  # a later copy in this batch is a duplicate
                    error = await self._apply_one(session, delivery, savepoint=savepoints)
                    if error is None:
                        continue
                    if not savepoints:
                        # A transaction aborted by an earlier handler that swallowed its own error
                        # fails every later statement: then the one that failed here is not to blame.
                        blamed = None if _sqlstate(error) == _IN_FAILED_TRANSACTION else delivery
                        raise _HandlerFailedError(blamed, error)
                    failed[event_id] = error
                    newly_failed.append(event_id)
            if newly_failed:  # their inbox rows were inserted before their savepoints: take them out
                await session.execute(self._forget, {"event_ids": newly_failed})
            # Postgres answers COMMIT in an aborted transaction with a silent ROLLBACK, and the acks
            # would follow: one statement proves the transaction can still commit.
            await session.execute(self._alive)

    async def _record_all(self, session: AsyncSession, deliveries: list[_Delivery]) -> set[uuid.UUID]:
        """Insert the batch's inbox rows; the ids inserted (the others were applied before)."""
        types = {delivery.event_id: delivery.decoded.envelope.type for delivery in deliveries}
        if not types:
            return set()
        if len(types) == 1:  # the common case at a low rate: the plain statement is cheaper
            [(event_id, event_type)] = types.items()
            recorded = await session.execute(self._record, {"event_id": event_id, "event_type": event_type})
        else:
            recorded = await session.execute(
                self._record_batch, {"event_ids": list(types), "event_types": list(types.values())}
            )
        return set(recorded.scalars())

    async def _apply_one(self, session: AsyncSession, delivery: _Delivery, *, savepoint: bool) -> Exception | None:
        """Run one handler, under a savepoint if asked (its failure then rolls back only what it did)."""
        context = EventContext(session=session, envelope=delivery.decoded.envelope, outbox=self.outbox)
        with trace.use_span(delivery.span, end_on_exit=False):
            try:
                if savepoint:
                    async with session.begin_nested():
                        await delivery.handler(delivery.decoded.payload, context)
                        # A handler that swallowed a database error left its savepoint aborted: this
                        # fails inside the block, which rolls back to the savepoint (a RELEASE would
                        # fail instead and leave the whole transaction aborted).
                        await session.execute(self._alive)
                else:
                    await delivery.handler(delivery.decoded.payload, context)
            except Exception as error:  # noqa: BLE001 - any handler failure is retried or dead-lettered
                delivery.fail(error)
                return error
        delivery.outcome = HandlerOutcome.APPLIED
        delivery.after_commit = context.after_commit
        return None

    async def _settle(self, deliveries: list[_Delivery], *, alone: bool) -> None:
        """After the commit: after-commit effects in order, acks, and hand-backs for the failures."""
        for delivery in deliveries:
            if delivery.error is not None and not alone and not delivery.batch_failed:
                await self._retry_alone(delivery)
            if delivery.error is not None:
                delivery.span.record_exception(delivery.error)
                delivery.span.set_status(trace.StatusCode.ERROR)
                outcome = await self._retry_or_give_up(delivery.message, delivery.attempt, delivery.error)
                delivery.span.set_attribute(EVENT_OUTCOME_ATTRIBUTE, outcome)
                continue
            delivery.span.set_attribute(EVENT_OUTCOME_ATTRIBUTE, delivery.outcome)
            await self._run_after_commit(delivery.decoded, delivery.after_commit)
            await delivery.message.ack()
            counter = CONSUMER_DUPLICATES if delivery.outcome == HandlerOutcome.DUPLICATE else CONSUMER_PROCESSED
            counter.labels(self.spec.durable).inc()

    async def _retry_alone(self, delivery: _Delivery) -> None:
        """Give a message that failed with a transient database error in a batch one more go alone.

        A batch holds the locks of all its handlers until it commits, so a handler written for a
        transaction of its own can meet a deadlock or serialization failure there that it would not
        meet alone: those it retries at once in its own transaction. Other failures are the
        handler's own and go back to the server as before.
        """
        if delivery.error is None or transient_sqlstate(delivery.error) is None:
            return
        with trace.use_span(delivery.span, end_on_exit=False):
            try:
                delivery.outcome = await self.apply(delivery.decoded, delivery.handler)
            except Exception as error:  # noqa: BLE001 - handed back below, as any failure
                delivery.error = error
                return
        delivery.error = None
        delivery.after_commit = []  # apply() ran them after its own commit

    async def apply(self, decoded: DecodedEvent, handler: Handler) -> str:
        """One event alone: its inbox row and the handler's effects in one transaction, then after-commit effects."""
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

    async def _retry_or_give_up(self, message: Msg, attempt: int, error: Exception) -> str:
        """Hand a failed message back for a later attempt, or dead-letter it after the last; returns which."""
        if attempt >= self.spec.max_deliver:
            dead_lettered = await self.dead_letter(message, f"failed {attempt} times: {error!r}")
            return HandlerOutcome.DEAD_LETTERED if dead_lettered else HandlerOutcome.RETRIED
        delay = self.spec.delay_after(attempt)
        log.warning(
            "handler failed; retrying", consumer=self.spec.durable, attempt=attempt, delay=delay, error=repr(error)
        )
        CONSUMER_RETRIED.labels(self.spec.durable).inc()
        await message.nak(delay=delay)
        return HandlerOutcome.RETRIED

    async def dead_letter(self, message: Msg, reason: str) -> bool:
        """Publish the message to the DLQ stream with the reason, then terminate it.

        If the DLQ publish itself fails, the message is handed back instead: never dropped.

        Returns:
            Whether it was dead-lettered (False: handed back).
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
            return False
        log.error("dead-lettered", consumer=self.spec.durable, sequence=sequence, reason=reason)
        CONSUMER_DEAD_LETTERED.labels(self.spec.durable).inc()
        await message.term()
        return True

    async def _keep_alive(self, messages: list[Msg]) -> None:
        """Tell the server a long batch is still being worked on, so it does not redeliver meanwhile."""
        interval = max(self.spec.ack_wait_seconds / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            for message in messages:
                with contextlib.suppress(NatsError):
                    await message.in_progress()


@dataclass
class _Delivery:
    """One message of a batch on its way through the batch's transaction."""

    index: int
    message: Msg
    decoded: DecodedEvent
    event_id: uuid.UUID
    """The envelope's id as the inbox holds it (two spellings of one UUID are one event)."""
    handler: Handler
    span: Span
    outcome: str = HandlerOutcome.IGNORED
    error: Exception | None = None
    batch_failed: bool = False
    """The batch's transaction failed: nothing of it is known to have committed."""
    after_commit: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def attempt(self) -> int:
        return self.message.metadata.num_delivered

    def forget_attempt(self) -> None:
        """The pass that ran it was rolled back: as if it had not run."""
        self.outcome = HandlerOutcome.IGNORED
        self.error = None
        self.after_commit = []

    def fail(self, error: Exception, *, batch: bool = False) -> None:
        self.outcome = HandlerOutcome.IGNORED
        self.after_commit = []
        if self.error is None or batch:
            self.error = error
        self.batch_failed = self.batch_failed or batch


class _HandlerFailedError(Exception):
    """A handler failed in a pass without savepoints: the pass must be rolled back whole.

    ``delivery`` is the one to blame, or None when the failure shows another handler's doing.
    """

    def __init__(self, delivery: _Delivery | None, error: Exception) -> None:
        super().__init__(repr(error))
        self.delivery = delivery
        self.error = error


_IN_FAILED_TRANSACTION = "25P02"  # "current transaction is aborted, commands ignored until end of block"


def _sqlstate(error: BaseException) -> str | None:
    """The first SQLSTATE in ``error``'s chain of causes, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if state:
            return str(state)
        current = current.__cause__ or current.__context__
    return None


async def _unsubscribe(subscription: Any) -> None:
    # Unsubscribe before the connection drains: a drain after a timed-out fetch otherwise hangs.
    if subscription is not None:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
