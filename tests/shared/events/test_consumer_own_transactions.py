"""Handlers that lock rows in a fixed order ask for a transaction each; the others share one per batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select

from shared.events.consumer import EventConsumer, EventContext, EventHandlers, HandlerOutcome
from shared.events.contracts import UserRegistered, encode_event, new_envelope
from shared.events.outbox import Outbox
from shared.events.streams import ConsumerSpec, ensure_consumer
from tests.shared.events.helpers import TABLES, effects, registered

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

SPEC = ConsumerSpec("eventlab", "own-transactions", "USERS", ("users.user.>",), max_deliver=3)
EVENTS = 4


@pytest.mark.parametrize(("own_transactions", "transactions"), [(False, 1), (True, EVENTS)])
async def test_handlers_that_ask_for_their_own_transactions_get_one_per_event(
    jetstream: JetStreamContext,
    lab_sessions: async_sessionmaker[AsyncSession],
    lab_engine: AsyncEngine,
    own_transactions: bool,
    transactions: int,
) -> None:
    handlers = EventHandlers(own_transactions=own_transactions)
    seen: list[object] = []
    """Every transaction a handler ran in (kept alive here, so no two can share an identity)."""

    @handlers.on(UserRegistered)
    async def record(event: UserRegistered, context: EventContext) -> None:
        transaction = context.session.sync_session.get_transaction()
        if not any(transaction is other for other in seen):
            seen.append(transaction)
        await context.session.execute(effects.insert().values(event_id=context.envelope.id, note=event.email))

    for index in range(EVENTS):
        envelope = new_envelope(registered(index), source="users", sequence=1)
        await jetstream.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": envelope.id})
    await ensure_consumer(jetstream, SPEC)
    subscription = await jetstream.pull_subscribe_bind(durable=SPEC.durable, stream=SPEC.stream)
    fetched = await subscription.fetch(EVENTS, timeout=5)
    assert len(fetched) == EVENTS  # one batch, as the consumer's loop would get it

    outcomes = await EventConsumer(
        spec=SPEC, handlers=handlers, session_maker=lab_sessions, js=jetstream, outbox=Outbox(TABLES, source="users")
    ).process_batch(fetched)
    await subscription.unsubscribe()

    assert outcomes == [HandlerOutcome.APPLIED] * EVENTS
    assert len(seen) == transactions
    async with lab_engine.connect() as connection:
        assert await connection.scalar(select(func.count(func.distinct(effects.c.note)))) == EVENTS
