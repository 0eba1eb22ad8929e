"""orders keeps a replica of users from users' events, and acts on deactivation exactly once."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import TYPE_CHECKING

import msgspec
from nats.js.errors import NotFoundError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from devtools.stack.servers import free_port
from devtools.testing import eventually
from orders.models import OUTBOX, KnownUser, Order
from orders.service import OrderService
from orders.worker import worker_plan
from shared.events.contracts import (
    EventPayload,
    UserDeactivated,
    UserRegistered,
    UserUpdated,
    encode_event,
    new_envelope,
)
from shared.worker import Worker
from tests.orders.conftest import Tokens, add_product, place
from tests.orders.test_orders import outbox_types, stock_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx
    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer
    from orders.settings import OrdersSettings


async def publish(js: JetStreamContext, payload: EventPayload, *, sequence: int, message_id: str | None = None) -> str:
    envelope = new_envelope(payload, source="users", sequence=sequence)
    await js.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": message_id or envelope.id})
    return envelope.id


async def replica(database_url: str, user_id: uuid.UUID) -> KnownUser | None:
    engine = create_async_engine(database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            return await session.get(KnownUser, user_id)
    finally:
        await engine.dispose()


async def test_user_unknown_to_the_replica_may_order_and_is_remembered(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    user_id = uuid.uuid4()
    product = await add_product(client, tokens, sku="NEW")
    assert (await place(client, tokens.customer(user_id), [(product["id"], 1)])).status_code == 201
    known = await replica(orders_database, user_id)
    assert known is not None
    assert (known.is_active, known.sequence) == (True, 0)


async def test_deactivated_user_cannot_order_even_with_a_valid_token(
    client: httpx.AsyncClient, tokens: Tokens, orders_settings: OrdersSettings
) -> None:
    user_id = uuid.uuid4()
    product = await add_product(client, tokens, sku="BLOCKED")
    await remember(orders_settings, user_id, is_active=False, sequence=2)
    response = await place(client, tokens.customer(user_id), [(product["id"], 1)])
    assert response.status_code == 403
    assert "deactivated" in response.json()["detail"]


async def remember(settings: OrdersSettings, user_id: uuid.UUID, *, is_active: bool, sequence: int) -> bool:
    engine = create_async_engine(settings.database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            service = OrderService(session=session, outbox=OUTBOX, settings=settings)
            return await service.remember_user(user_id, email=None, is_active=is_active, sequence=sequence)
    finally:
        await engine.dispose()


async def test_older_event_never_overwrites_a_newer_replica_state(orders_settings: OrdersSettings) -> None:
    user_id = uuid.uuid4()
    assert await remember(orders_settings, user_id, is_active=False, sequence=3)
    assert not await remember(orders_settings, user_id, is_active=True, sequence=1)
    known = await replica(orders_settings.database_url, user_id)
    assert known is not None
    assert (known.is_active, known.sequence) == (False, 3)


async def run_worker_until(settings: OrdersSettings, condition: Callable[[], Awaitable[bool]]) -> None:
    worker = Worker(worker_plan(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(condition, within=30)
    finally:
        stop.set()
        await task


def with_nats(settings: OrdersSettings, nats_server: NatsServer) -> OrdersSettings:
    return msgspec.structs.replace(
        settings, nats_url=nats_server.url, worker_health_port=free_port(), unpaid_sweep_interval_seconds=0.2
    )


async def test_deactivation_cancels_open_orders_and_restocks_exactly_once_under_redelivery(
    client: httpx.AsyncClient,
    tokens: Tokens,
    orders_settings: OrdersSettings,
    orders_database: str,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
) -> None:
    user_id = uuid.uuid4()
    customer = tokens.customer(user_id)
    product = await add_product(client, tokens, sku="DEACT", stock=10)
    pending = (await place(client, customer, [(product["id"], 2)])).json()
    paid = (await place(client, customer, [(product["id"], 3)])).json()
    await client.post(f"/orders/{paid['id']}/pay", headers=customer)
    shipped = (await place(client, customer, [(product["id"], 1)])).json()
    await client.post(f"/orders/{shipped['id']}/pay", headers=customer)
    await client.post(f"/orders/{shipped['id']}/ship", headers=tokens.admin())
    assert await stock_of(orders_database, product["id"]) == 4

    await publish(
        jetstream, UserRegistered(user_id=user_id, email="d@example.com", display_name="D", role="user"), sequence=1
    )
    deactivated = UserDeactivated(user_id=user_id)
    event_id = await publish(jetstream, deactivated, sequence=2)
    envelope = new_envelope(deactivated, source="users", sequence=2)
    redelivered = msgspec.structs.replace(envelope, id=event_id)
    # the same event again under another message id, as a replayed or re-relayed copy would arrive
    await jetstream.publish(envelope.type, encode_event(redelivered), headers={"Nats-Msg-Id": "copy"})
    await publish(jetstream, UserDeactivated(user_id=user_id), sequence=2)  # a second event, not newer

    async def settled() -> bool:
        try:
            info = await jetstream.consumer_info("USERS", "orders-users-replica")
        except NotFoundError:  # the worker has not created it yet
            return False
        return bool(info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.consumer_seq >= 4)

    await run_worker_until(with_nats(orders_settings, nats_server), settled)

    statuses = {
        order["id"]: (await client.get(f"/orders/{order['id']}", headers=customer)).json()
        for order in (pending, paid, shipped)
    }
    assert statuses[pending["id"]]["status"] == statuses[paid["id"]]["status"] == "cancelled"
    assert statuses[pending["id"]]["cancel_reason"] == "user_deactivated"
    assert statuses[shipped["id"]]["status"] == "shipped"
    assert await stock_of(orders_database, product["id"]) == 9
    assert (await outbox_types(orders_database)).count("orders.order.cancelled") == 2
    assert (await place(client, customer, [(product["id"], 1)])).status_code == 403


async def test_reactivation_lets_the_user_order_again(
    client: httpx.AsyncClient,
    tokens: Tokens,
    orders_settings: OrdersSettings,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
) -> None:
    user_id = uuid.uuid4()
    product = await add_product(client, tokens, sku="BACK")
    await publish(jetstream, UserDeactivated(user_id=user_id), sequence=2)
    await publish(
        jetstream,
        UserUpdated(user_id=user_id, email="b@example.com", display_name="B", role="user", is_active=True),
        sequence=3,
    )

    async def reactivated() -> bool:
        known = await replica(orders_settings.database_url, user_id)
        return known is not None and known.is_active and known.sequence == 3

    await run_worker_until(with_nats(orders_settings, nats_server), reactivated)
    assert (await place(client, tokens.customer(user_id), [(product["id"], 1)])).status_code == 201


async def test_worker_sweep_cancels_orders_left_unpaid_past_the_deadline(
    client: httpx.AsyncClient,
    tokens: Tokens,
    orders_settings: OrdersSettings,
    orders_database: str,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
) -> None:
    customer = tokens.customer()
    product = await add_product(client, tokens, sku="SLOW", stock=5)
    stale = (await place(client, customer, [(product["id"], 2)])).json()
    fresh = (await place(client, customer, [(product["id"], 1)])).json()
    paid = (await place(client, customer, [(product["id"], 1)])).json()
    await client.post(f"/orders/{paid['id']}/pay", headers=customer)
    engine = create_async_engine(orders_database)
    async with engine.begin() as connection:
        long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
        await connection.execute(
            update(Order).where(Order.id.in_([stale["id"], paid["id"]])).values(created_at=long_ago)
        )
    await engine.dispose()

    async def swept() -> bool:
        engine = create_async_engine(orders_database)
        try:
            async with engine.connect() as connection:
                status = await connection.scalar(select(Order.status).where(Order.id == stale["id"]))
        finally:
            await engine.dispose()
        return status == "cancelled"

    await run_worker_until(with_nats(orders_settings, nats_server), swept)
    order = (await client.get(f"/orders/{stale['id']}", headers=customer)).json()
    assert order["cancel_reason"] == "payment_timeout"
    assert (await client.get(f"/orders/{fresh['id']}", headers=customer)).json()["status"] == "pending"
    assert (await client.get(f"/orders/{paid['id']}", headers=customer)).json()["status"] == "paid"
    assert await stock_of(orders_database, product["id"]) == 3


async def test_two_sweeps_at_once_cancel_each_order_once(
    client: httpx.AsyncClient, tokens: Tokens, orders_settings: OrdersSettings, orders_database: str
) -> None:
    customer = tokens.customer()
    product = await add_product(client, tokens, sku="RACE-SWEEP", stock=50)
    for _ in range(20):
        await place(client, customer, [(product["id"], 1)])
    engine = create_async_engine(orders_database, pool_size=4)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def sweep() -> int:
        async with sessions() as session:
            service = OrderService(
                session=session, outbox=OUTBOX, settings=orders_settings
            )
            return await service.cancel_unpaid(older_than=datetime.timedelta(0), batch_size=7)

    total = 0
    for _ in range(5):
        total += sum(await asyncio.gather(sweep(), sweep()))
    await engine.dispose()
    assert total == 20
    assert (await outbox_types(orders_database)).count("orders.order.cancelled") == 20
    assert await stock_of(orders_database, product["id"]) == 50
