"""Each service's NATS user may do what its role needs and nothing else."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from sqlalchemy import func, select

from devtools.stack.servers import NatsServer
from devtools.testing import eventually
from shared.events.connection import NatsUnavailableError, connect_nats
from shared.events.consumer import EventConsumer, EventContext, EventHandlers
from shared.events.contracts import UserRegistered, encode_event, new_envelope
from shared.events.outbox import Outbox
from shared.events.permissions import inbox_prefix, nats_authorization
from shared.events.streams import CONSUMERS, ConsumerSpec, ensure_streams
from tests.shared.events.helpers import TABLES, effects, registered

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from nats.aio.client import Client as NatsClient
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

PASSWORDS = {"users": "users-secret", "orders": "orders-secret", "notify": "notify-secret"}


@pytest.fixture(scope="module")
def secured_nats(infra_root: Path) -> Iterator[NatsServer]:
    server = NatsServer(infra_root / "nats-secured", config=nats_authorization(PASSWORDS))
    server.start()
    yield server
    server.stop()


async def connect_as(server: NatsServer, service: str, errors: list[str] | None = None) -> NatsClient:
    async def record(error: Exception) -> None:
        if errors is not None:
            errors.append(str(error))

    return await nats.connect(
        server.url, user=service, password=PASSWORDS[service], inbox_prefix=inbox_prefix(service), error_cb=record
    )


@pytest.fixture
async def as_users(secured_nats: NatsServer) -> AsyncIterator[NatsClient]:
    client = await connect_as(secured_nats, "users")
    js = client.jetstream()
    await ensure_streams(js, duplicate_window_seconds=120, max_age_seconds=3600, names=("USERS", "DLQ"))
    yield client
    await client.close()


async def test_users_publishes_to_its_own_stream(as_users: NatsClient) -> None:
    envelope = new_envelope(registered(), source="users", sequence=1)
    ack = await as_users.jetstream().publish(
        envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": envelope.id}
    )
    assert ack.stream == "USERS"


async def test_orders_cannot_publish_users_events(as_users: NatsClient, secured_nats: NatsServer) -> None:
    errors: list[str] = []
    orders = await connect_as(secured_nats, "orders", errors)
    try:
        with pytest.raises(NatsTimeoutError):
            await orders.jetstream().publish("users.user.registered", b"forged", timeout=1.0)
    finally:
        await orders.close()
    assert any("permissions violation for publish" in error and "users.user.registered" in error for error in errors), (
        errors
    )


async def test_a_wrong_password_is_refused(secured_nats: NatsServer) -> None:
    with pytest.raises(NatsUnavailableError, match="Authorization Violation"):
        await connect_nats(secured_nats.url, name="intruder", user="orders", password="guess", connect_timeout=3)


async def test_orders_consumes_users_events_through_its_declared_consumer(
    as_users: NatsClient,
    secured_nats: NatsServer,
    lab_sessions: async_sessionmaker[AsyncSession],
    lab_engine: AsyncEngine,
) -> None:
    spec = next(spec for spec in CONSUMERS if spec.durable == "orders-users-replica")
    envelope = new_envelope(registered(), source="users", sequence=1)
    await as_users.jetstream().publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": envelope.id})
    handlers = EventHandlers()

    @handlers.on(UserRegistered)
    async def remember(event: UserRegistered, context: EventContext) -> None:
        await context.session.execute(effects.insert().values(event_id=context.envelope.id, note=event.email))

    orders = await connect_as(secured_nats, "orders")
    consumer = EventConsumer(
        spec=spec,
        handlers=handlers,
        session_maker=lab_sessions,
        js=orders.jetstream(),
        outbox=Outbox(TABLES, source="orders"),
        fetch_timeout=0.3,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually(lambda: _effects(lab_engine), what="orders applied the event")
    finally:
        stop.set()
        await task
        await orders.close()


async def test_orders_cannot_create_consumers_it_does_not_own(as_users: NatsClient, secured_nats: NatsServer) -> None:
    errors: list[str] = []
    orders = await connect_as(secured_nats, "orders", errors)
    stranger = ConsumerSpec("notify", "users-replica", "USERS", ("users.user.>",))
    try:
        with pytest.raises(NatsTimeoutError):
            await orders.jetstream().add_consumer(
                stranger.stream,
                durable_name=stranger.durable,
                filter_subjects=list(stranger.filter_subjects),
                timeout=1.0,
            )
    finally:
        await orders.close()
    assert any("permissions violation" in error for error in errors), errors


async def _effects(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        return bool(await connection.scalar(select(func.count()).select_from(effects)))
