from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from nats.js.errors import NotFoundError
from sqlalchemy import func, select

from devtools.testing import eventually
from shared.events.consumer import EventConsumer, EventContext, EventHandlers, HandlerOutcome
from shared.events.contracts import UserDeactivated, UserRegistered, encode_event, new_envelope
from shared.events.dead_letters import DeadLetters
from shared.events.outbox import Outbox
from shared.events.replicas import upsert_if_newer
from shared.events.streams import ConsumerSpec
from tests.shared.events.helpers import TABLES, effects, registered, replica

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

SPEC = ConsumerSpec(
    "eventlab",
    "effects",
    "USERS",
    ("users.user.>",),
    max_deliver=3,
    ack_wait_seconds=2.0,
    backoff_seconds=(0.1, 0.2),
)


async def publish(js: JetStreamContext, *payloads: UserRegistered | UserDeactivated, sequence: int = 1) -> list[str]:
    ids = []
    for payload in payloads:
        envelope = new_envelope(payload, source="users", sequence=sequence)
        await js.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": envelope.id})
        ids.append(envelope.id)
    return ids


async def count_effects(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(effects)) or 0)


def recording_handlers(failures_before_success: int = 0) -> tuple[EventHandlers, list[int]]:
    handlers = EventHandlers()
    attempts: list[int] = []

    @handlers.on(UserRegistered)
    async def record(event: UserRegistered, context: EventContext) -> None:
        await context.session.execute(effects.insert().values(event_id=context.envelope.id, note=event.email))
        attempts.append(1)
        if len(attempts) <= failures_before_success:
            raise ConnectionError("the database went away")

    return handlers, attempts


def consumer(
    js: JetStreamContext, sessions: async_sessionmaker[AsyncSession], handlers: EventHandlers
) -> EventConsumer:
    return EventConsumer(
        spec=SPEC,
        handlers=handlers,
        session_maker=sessions,
        js=js,
        outbox=Outbox(TABLES, source="users"),
        fetch_timeout=0.3,
    )


async def run_until(runner: EventConsumer, condition: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await eventually(condition, within=within)
    finally:
        stop.set()
        await task


async def test_each_event_is_applied_once_even_when_delivered_twice(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    handlers, _ = recording_handlers()
    runner = consumer(jetstream, lab_sessions, handlers)
    envelope = new_envelope(registered(), source="users", sequence=1)
    # the same event twice, under two message ids, as a replay or a second relay might
    await jetstream.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": "first"})
    await jetstream.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": "second"})
    await run_until(runner, lambda: _consumer_drained(jetstream))
    assert await count_effects(lab_engine) == 1


async def test_handler_failing_twice_then_succeeding_is_applied_once(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    handlers, attempts = recording_handlers(failures_before_success=2)
    await publish(jetstream, registered())
    await run_until(consumer(jetstream, lab_sessions, handlers), lambda: _effects_at_least(lab_engine, 1))
    assert len(attempts) == 3
    assert await count_effects(lab_engine) == 1  # the failed attempts' writes were rolled back


async def test_consumer_killed_mid_handler_is_redelivered_and_applied_once(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    entered = asyncio.Event()
    stuck = EventHandlers()

    @stuck.on(UserRegistered)
    async def hang(event: UserRegistered, context: EventContext) -> None:
        await context.session.execute(effects.insert().values(event_id=context.envelope.id, note="stuck"))
        entered.set()
        await asyncio.Event().wait()  # never returns: the process dies here

    await publish(jetstream, registered())
    killed = consumer(jetstream, lab_sessions, stuck)
    killed_task = asyncio.create_task(killed.run(asyncio.Event()))
    await asyncio.wait_for(entered.wait(), 10)
    killed_task.cancel()  # no ack, no commit: as if the process had been killed
    with pytest.raises(asyncio.CancelledError):
        await killed_task

    handlers, _ = recording_handlers()
    await run_until(consumer(jetstream, lab_sessions, handlers), lambda: _effects_at_least(lab_engine, 1))
    await asyncio.sleep(0.5)
    assert await count_effects(lab_engine) == 1


async def test_poison_message_is_dead_lettered_with_its_error_and_can_be_replayed(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    broken, attempts = recording_handlers(failures_before_success=100)
    await jetstream.publish("users.user.registered", b"{not json", headers={"Nats-Msg-Id": "garbage"})
    [event_id] = await publish(jetstream, registered())
    dead_letters = DeadLetters(jetstream, service="eventlab")

    await run_until(consumer(jetstream, lab_sessions, broken), lambda: _dead_letters(dead_letters, 2))
    assert len(attempts) == SPEC.max_deliver
    assert await count_effects(lab_engine) == 0
    letters = await dead_letters.list()
    assert [letter.consumer for letter in letters] == [SPEC.durable, SPEC.durable]
    assert "undecodable" in letters[0].error
    assert "ConnectionError" in letters[1].error
    assert letters[1].original_subject == "users.user.registered"
    assert letters[1].event_id == event_id

    fixed, _ = recording_handlers()
    replayed = await dead_letters.replay(letters[1].sequence, consumer(jetstream, lab_sessions, fixed))
    assert replayed == HandlerOutcome.APPLIED
    assert await count_effects(lab_engine) == 1
    with pytest.raises(ValueError, match="cannot be decoded"):
        await dead_letters.replay(letters[0].sequence, consumer(jetstream, lab_sessions, fixed))
    assert await dead_letters.discard(letters[0].sequence)
    assert await dead_letters.list() == []


async def test_replica_ends_deactivated_when_deactivation_arrives_before_registration(
    lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    user_id = uuid.uuid4()
    key = {"user_id": user_id}
    async with lab_sessions() as session, session.begin():
        # users: registered (sequence 1), then deactivated (sequence 2), delivered in reverse
        assert await upsert_if_newer(
            session, replica, key=key, values={"email": "a@example.com", "is_active": False}, sequence=2
        )
        assert not await upsert_if_newer(
            session, replica, key=key, values={"email": "a@example.com", "is_active": True}, sequence=1
        )
    async with lab_engine.connect() as connection:
        row = (await connection.execute(select(replica).where(replica.c.user_id == user_id))).one()
    assert (row.is_active, row.sequence) == (False, 2)


async def _consumer_drained(js: JetStreamContext) -> bool:
    try:
        info = await js.consumer_info(SPEC.stream, SPEC.durable)
    except NotFoundError:
        return False
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def _effects_at_least(engine: AsyncEngine, count: int) -> bool:
    return await count_effects(engine) >= count


async def _dead_letters(dead_letters: DeadLetters, count: int) -> bool:
    return len(await dead_letters.list()) >= count


async def test_consumer_recreates_its_durable_when_the_server_lost_it(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    handlers, _ = recording_handlers()
    runner = consumer(jetstream, lab_sessions, handlers)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await publish(jetstream, registered(1))
        await eventually(lambda: _effects_at_least(lab_engine, 1), what="first event")
        await jetstream.delete_consumer(SPEC.stream, SPEC.durable)
        await publish(jetstream, registered(2))
        await eventually(lambda: _effects_at_least(lab_engine, 2), what="event after the consumer was lost")
    finally:
        stop.set()
        await task
    assert await count_effects(lab_engine) == 2


async def test_after_commit_effects_run_once_after_the_commit_and_never_for_a_rollback(
    jetstream: JetStreamContext, lab_sessions: async_sessionmaker[AsyncSession], lab_engine: AsyncEngine
) -> None:
    seen_committed: list[int] = []
    handlers = EventHandlers()
    failures = {"left": 1}

    @handlers.on(UserRegistered)
    async def record_then_push(event: UserRegistered, context: EventContext) -> None:
        await context.session.execute(effects.insert().values(event_id=context.envelope.id, note=event.email))

        async def push() -> None:  # runs outside the transaction: it must see the row committed
            seen_committed.append(await count_effects(lab_engine))

        context.after_commit.append(push)
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("rolled back: the push must not happen for this attempt")

    envelope = new_envelope(registered(), source="users", sequence=1)
    for message_id in ("first", "copy"):  # the second is the same event again
        await jetstream.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": message_id})
    await run_until(consumer(jetstream, lab_sessions, handlers), lambda: _consumer_drained(jetstream))
    assert seen_committed == [1]
