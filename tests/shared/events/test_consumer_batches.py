"""A fetched batch is one transaction, each message's failure rolled back alone: each failure class.

Every test publishes its events before the consumer starts, so they arrive in one fetch, and checks
that they did (the consumer was handed them together): otherwise it would prove nothing about
batches. A handler may run twice for one delivery (a pass rolled back because another failed), so
the tests count committed effects, and handler calls only of the failing message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING, Any

import pytest
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session

from devtools.testing import eventually
from shared.events.consumer import EventConsumer, EventContext, EventHandlers
from shared.events.contracts import UserRegistered, decode_event, encode_event, new_envelope
from shared.events.dead_letters import DeadLetters
from shared.events.outbox import Outbox
from shared.events.streams import ConsumerSpec
from shared.telemetry import EVENT_OUTCOME_ATTRIBUTE, configure_tracing
from tests.shared.events.helpers import TABLES, effects, registered, replica

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

SPEC = ConsumerSpec(
    "eventlab",
    "batches",
    "USERS",
    ("users.user.>",),
    max_deliver=3,
    ack_wait_seconds=2.0,
    backoff_seconds=(0.1, 0.2),
)


class RecordingConsumer(EventConsumer):
    """An EventConsumer that notes which emails each batch it was handed holds."""

    def __init__(self, batches: list[set[str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches = batches

    async def process_batch(self, messages: Sequence[Msg]) -> list[str]:
        payloads = [decode_event(message.data).payload for message in messages]
        self.batches.append({payload.email for payload in payloads if isinstance(payload, UserRegistered)})
        return await super().process_batch(messages)


class Lab:
    """A consumer of the lab's events whose handler records who ran, in which transaction, and can fail."""

    def __init__(self, js: JetStreamContext, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine) -> None:
        self.js = js
        self.engine = engine
        self.handlers = EventHandlers()
        self.calls: list[str] = []
        """The email of every handler call, in order."""
        self.batches: list[set[str]] = []
        """The emails of each batch the consumer was handed, in order."""
        self.failing: dict[str, int] = {}
        """email -> how many more calls of its handler fail (after writing its effect)."""
        self.swallowing: set[str] = set()
        """emails whose handler swallows a database error (which leaves the transaction aborted)."""
        self.pushed: list[tuple[str, int]] = []
        """(email, its effect rows visible from outside) for every after-commit effect that ran."""
        self.consumer = RecordingConsumer(
            self.batches,
            spec=SPEC,
            handlers=self.handlers,
            session_maker=sessions,
            js=js,
            outbox=Outbox(TABLES, source="users"),
            fetch_timeout=0.3,
        )

        @self.handlers.on(UserRegistered)
        async def record(event: UserRegistered, context: EventContext) -> None:
            self.calls.append(event.email)
            await context.session.execute(effects.insert().values(event_id=context.envelope.id, note=event.email))

            async def push() -> None:  # outside the transaction: its effect must be committed by now
                self.pushed.append((event.email, await effect_rows(self.engine, event.email)))

            context.after_commit.append(push)
            if event.email in self.swallowing:  # a handler that hides its own database error
                with contextlib.suppress(DBAPIError):
                    await context.session.execute(text("SELECT 1 / 0"))
            if self.failing.get(event.email, 0) > 0:
                self.failing[event.email] -= 1
                raise ConnectionError(f"{event.email}: the handler failed")

    def calls_of(self, email: str) -> int:
        return self.calls.count(email)

    async def run_until(self, condition: Callable[[], Awaitable[bool]], what: str) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(self.consumer.run(stop))
        try:
            await eventually(condition, what=what)
        finally:
            stop.set()
            await task


async def publish(js: JetStreamContext, *emails: str) -> list[str]:
    ids = []
    for index, email in enumerate(emails):
        payload = UserRegistered(user_id=registered(index).user_id, email=email, display_name="U", role="user")
        envelope = new_envelope(payload, source="users", sequence=1)
        await js.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": envelope.id})
        ids.append(envelope.id)
    return ids


async def effect_rows(engine: AsyncEngine, email: str | None = None) -> int:
    query = select(func.count()).select_from(effects)
    if email is not None:
        query = query.where(effects.c.note == email)
    async with engine.connect() as connection:
        return int(await connection.scalar(query) or 0)


async def effects_per_email(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(effects.c.note, func.count()).group_by(effects.c.note))).all()
    return dict(rows)


async def drained(js: JetStreamContext) -> bool:
    try:
        info = await js.consumer_info(SPEC.stream, SPEC.durable)
    except NotFoundError:
        return False
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(f"relay_consumer_{name}_total", {"consumer": SPEC.durable}) or 0.0


EMAILS = [f"user{index}@example.com" for index in range(5)]


async def test_a_failing_message_is_retried_then_dead_lettered_while_the_rest_of_its_batch_applies_once(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    lab = Lab(jetstream, lab_sessions, lab_engine)
    poison = EMAILS[2]
    lab.failing[poison] = 100
    ids = await publish(jetstream, *EMAILS)
    dead_letters = DeadLetters(jetstream, service="eventlab")
    retried = counter("retried")

    async def given_up() -> bool:
        return len(await dead_letters.list()) == 1 and await drained(jetstream)

    await lab.run_until(given_up, "the poison message dead-lettered")

    assert lab.batches[0] == set(EMAILS), "the five did not arrive in one batch"
    assert await effects_per_email(lab_engine) == {email: 1 for email in EMAILS if email != poison}
    assert lab.calls_of(poison) == SPEC.max_deliver
    [letter] = await dead_letters.list()
    assert letter.event_id == ids[2]
    assert "the handler failed" in letter.error
    assert counter("retried") - retried == SPEC.max_deliver - 1
    # the poison's inbox row left with its savepoint, so its retries were not mistaken for duplicates
    async with lab_engine.connect() as connection:
        recorded = await connection.scalars(
            select(TABLES.inbox.c.event_id).where(TABLES.inbox.c.consumer == SPEC.durable)
        )
        assert {str(event_id) for event_id in recorded} == {ids[i] for i in (0, 1, 3, 4)}


async def test_the_same_event_several_times_in_one_batch_is_applied_once_and_every_copy_acked(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    lab = Lab(jetstream, lab_sessions, lab_engine)
    envelope = new_envelope(registered(7), source="users", sequence=1)
    for message_id in ("first", "second", "third"):  # one event, three messages: a replay, a second relay
        await jetstream.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": message_id})
    await publish(jetstream, EMAILS[0])
    duplicates, processed = counter("duplicates"), counter("processed")

    await lab.run_until(lambda: drained(jetstream), "every copy acked")

    assert lab.batches == [{"user7@example.com", EMAILS[0]}]
    assert lab.calls == ["user7@example.com", EMAILS[0]]  # no handler ran for a copy
    assert await effects_per_email(lab_engine) == {"user7@example.com": 1, EMAILS[0]: 1}
    assert (counter("processed") - processed, counter("duplicates") - duplicates) == (2, 2)
    assert [email for email, _ in lab.pushed] == ["user7@example.com", EMAILS[0]]


async def test_a_failing_first_copy_hands_back_its_copies_in_the_same_batch_and_the_event_applies_once(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    lab = Lab(jetstream, lab_sessions, lab_engine)
    envelope = new_envelope(registered(8), source="users", sequence=1)
    lab.failing["user8@example.com"] = 1
    for message_id in ("first", "second"):
        await jetstream.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": message_id})

    await lab.run_until(lambda: drained(jetstream), "both copies settled")

    assert await effects_per_email(lab_engine) == {"user8@example.com": 1}
    assert lab.calls_of("user8@example.com") == 2  # the failure, then one success: never a copy acked unapplied


async def test_after_commit_effects_run_in_order_after_the_commit_and_only_for_the_messages_it_holds(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    lab = Lab(jetstream, lab_sessions, lab_engine)
    lab.failing[EMAILS[1]] = 1  # its effect was written and its push queued, then rolled back
    await publish(jetstream, *EMAILS[:4])

    await lab.run_until(lambda: drained(jetstream), "every message settled")

    assert lab.batches[0] == set(EMAILS[:4])
    # the batch's committed messages in order, then the retried one after its own commit; each saw its row
    assert lab.pushed == [(EMAILS[0], 1), (EMAILS[2], 1), (EMAILS[3], 1), (EMAILS[1], 1)]
    assert await effects_per_email(lab_engine) == dict.fromkeys(EMAILS[:4], 1)


class KilledAtCommit(Session):
    """A session whose first commit loses its connection: the server ends the backend at that moment."""

    kills: collections.Counter[str] = collections.Counter()


@event.listens_for(KilledAtCommit, "before_commit")
def _lose_the_connection(session: Session) -> None:
    if KilledAtCommit.kills["left"] > 0:
        KilledAtCommit.kills["left"] -= 1
        session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))


async def test_a_batch_whose_commit_loses_the_connection_is_handed_back_whole_and_applied_once_on_redelivery(
    jetstream: JetStreamContext, lab_engine: AsyncEngine
) -> None:
    sessions = async_sessionmaker(lab_engine, expire_on_commit=False, sync_session_class=KilledAtCommit)
    lab = Lab(jetstream, sessions, lab_engine)
    KilledAtCommit.kills["left"] = 1
    await publish(jetstream, *EMAILS)
    retried = counter("retried")

    async def all_applied() -> bool:
        return await drained(jetstream) and await effect_rows(lab_engine) == len(EMAILS)

    await lab.run_until(all_applied, "the batch applied after its redelivery")

    assert KilledAtCommit.kills["left"] == 0
    first, *redelivered = lab.batches
    assert first == set().union(*redelivered) == set(EMAILS), "the batch was not handed back whole"
    assert counter("retried") - retried == len(EMAILS)
    assert await effects_per_email(lab_engine) == dict.fromkeys(EMAILS, 1)
    # nothing of the lost transaction was pushed: each email once, after the commit that held it
    assert sorted(lab.pushed) == [(email, 1) for email in EMAILS]


async def test_a_consumer_killed_between_the_commit_and_the_acks_leaves_duplicates_that_the_inbox_skips(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    committed = asyncio.Event()
    lab = Lab(jetstream, lab_sessions, lab_engine)

    async def die_after_the_commit(event: UserRegistered, context: EventContext) -> None:
        async def hang() -> None:  # the first after-commit effect: the process dies here, before any ack
            committed.set()
            await asyncio.Event().wait()

        context.after_commit.append(hang)

    dying = EventHandlers()
    dying.on(UserRegistered)(_chain(lab.handlers, die_after_the_commit))
    killed = EventConsumer(
        spec=SPEC,
        handlers=dying,
        session_maker=lab_sessions,
        js=jetstream,
        outbox=Outbox(TABLES, source="users"),
        fetch_timeout=0.3,
    )
    await publish(jetstream, *EMAILS)
    task = asyncio.create_task(killed.run(asyncio.Event()))
    await asyncio.wait_for(committed.wait(), 20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await effect_rows(lab_engine) == len(EMAILS)  # committed, but not one ack went out
    duplicates = counter("duplicates")

    await lab.run_until(lambda: drained(jetstream), "the redelivered batch settled")

    assert counter("duplicates") - duplicates == len(EMAILS)
    assert await effects_per_email(lab_engine) == dict.fromkeys(EMAILS, 1)
    assert lab.calls_of(EMAILS[0]) == 1  # the redelivery ran no handler


def _chain(first: EventHandlers, then: Callable[[Any, EventContext], Awaitable[None]]) -> Any:
    handler = first.get(UserRegistered)
    assert handler is not None

    async def both(event: UserRegistered, context: EventContext) -> None:
        await handler(event, context)
        await then(event, context)

    return both


async def test_a_deadlock_met_inside_a_batch_is_retried_alone_at_once_not_handed_back(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    # A handler written for a transaction of its own: it locks one replica row. In a batch, the first
    # message's lock is still held when the second waits for a row that another transaction holds,
    # which then waits for the first row: a deadlock that neither handler would meet alone.
    first_row, second_row = registered(0).user_id, registered(1).user_id
    async with lab_engine.begin() as connection:
        for user_id in (first_row, second_row):
            await connection.execute(replica.insert().values(user_id=user_id, email="r", is_active=True, sequence=1))
    waiting = asyncio.Event()
    handlers = EventHandlers()
    calls: list[str] = []

    @handlers.on(UserRegistered)
    async def lock_one_row(event: UserRegistered, context: EventContext) -> None:
        calls.append(event.email)
        row = first_row if event.email == EMAILS[0] else second_row
        if event.email == EMAILS[1]:
            waiting.set()
        await context.session.execute(select(replica).where(replica.c.user_id == row).with_for_update())
        await context.session.execute(effects.insert().values(event_id=context.envelope.id, note=event.email))

    consumer = EventConsumer(
        spec=SPEC,
        handlers=handlers,
        session_maker=lab_sessions,
        js=jetstream,
        outbox=Outbox(TABLES, source="users"),
        fetch_timeout=0.3,
    )
    await publish(jetstream, EMAILS[0], EMAILS[1])
    retried = counter("retried")
    stop = asyncio.Event()
    async with lab_engine.connect() as other:
        await other.begin()
        await other.execute(select(replica).where(replica.c.user_id == second_row).with_for_update())
        task = asyncio.create_task(consumer.run(stop))
        try:
            await asyncio.wait_for(waiting.wait(), 20)
            await asyncio.sleep(0.3)  # the second handler is waiting for the row held here
            await other.execute(select(replica).where(replica.c.user_id == first_row).with_for_update())
            await other.commit()
            await eventually(lambda: drained(jetstream), what="both messages settled")
        finally:
            stop.set()
            await task

    # the deadlock victim ran again alone, once the batch (which held the other row) had committed
    assert calls.count(EMAILS[1]) == 2
    assert calls[-1] == EMAILS[1]
    assert counter("retried") == retried
    assert await effects_per_email(lab_engine) == {EMAILS[0]: 1, EMAILS[1]: 1}


async def test_a_handler_that_swallows_its_database_error_fails_alone_and_never_silently_loses_the_batch(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    # Postgres answers COMMIT in an aborted transaction with a silent ROLLBACK: without a check, the
    # whole batch would be acked with nothing applied, or the next handler blamed for the abort.
    lab = Lab(jetstream, lab_sessions, lab_engine)
    hider = EMAILS[1]
    lab.swallowing.add(hider)
    ids = await publish(jetstream, *EMAILS)
    dead_letters = DeadLetters(jetstream, service="eventlab")

    async def settled() -> bool:
        return len(await dead_letters.list()) == 1 and await drained(jetstream)

    await lab.run_until(settled, "the hiding handler dead-lettered")

    assert lab.batches[0] == set(EMAILS)
    assert await effects_per_email(lab_engine) == {email: 1 for email in EMAILS if email != hider}
    [letter] = await dead_letters.list()
    assert letter.event_id == ids[1]
    assert "aborted" in letter.error


async def test_each_consumer_span_says_what_became_of_its_message(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    """The outcome the console's event lines show: applied, duplicate, retried, dead-lettered."""
    configure_tracing("eventlab", {"OTEL_TRACES_EXPORTER": "none"})  # as every service process does (once)
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lab = Lab(jetstream, lab_sessions, lab_engine)
    poison = EMAILS[3]
    lab.failing[poison] = 100
    envelope = new_envelope(registered(9), source="users", sequence=1)
    for message_id in ("first", "second"):
        await jetstream.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": message_id})
    poison_id, good_id = await publish(jetstream, poison, EMAILS[4])
    dead_letters = DeadLetters(jetstream, service="eventlab")

    async def given_up() -> bool:
        return len(await dead_letters.list()) == 1 and await drained(jetstream)

    await lab.run_until(given_up, "the poison message dead-lettered")
    exporter.shutdown()
    outcomes: dict[str, list[str]] = collections.defaultdict(list)
    for span in exporter.get_finished_spans():
        if span.kind is trace.SpanKind.CONSUMER and span.attributes is not None:
            message_id = str(span.attributes["messaging.message.id"])
            outcomes[message_id].append(str(span.attributes[EVENT_OUTCOME_ATTRIBUTE]))
    assert dict(outcomes) == {
        envelope.id: ["applied", "duplicate"],
        good_id: ["applied"],
        poison_id: ["retried"] * (SPEC.max_deliver - 1) + ["dead-lettered"],
    }
