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

from orders.models import OUTBOX, Order
from orders.service import OrderService
from shared.events.contracts import (
    UserDeactivated,
    UserRegistered,
    UserUpdated,
    encode_event,
    new_envelope,
)
from tests.orders.helpers import (
    Tokens,
    add_product,
    answer,
    outbox_types,
    place,
    publish,
    remember,
    replica,
    run_worker_until,
    stock_of,
    with_nats,
)

if TYPE_CHECKING:
    import httpx
    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer
    from orders.settings import OrdersSettings


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


async def test_older_event_never_overwrites_a_newer_replica_state(orders_settings: OrdersSettings) -> None:
    user_id = uuid.uuid4()
    assert await remember(orders_settings, user_id, is_active=False, sequence=3)
    assert not await remember(orders_settings, user_id, is_active=True, sequence=1)
    known = await replica(orders_settings.database_url, user_id)
    assert known is not None
    assert (known.is_active, known.sequence) == (False, 3)


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
    pending = answer(await place(client, customer, [(product["id"], 2)]), 201)
    paid = answer(await place(client, customer, [(product["id"], 3)]), 201)
    assert answer(await client.post(f"/orders/{paid['id']}/pay", headers=customer))["status"] == "paid"
    shipped = answer(await place(client, customer, [(product["id"], 1)]), 201)
    assert answer(await client.post(f"/orders/{shipped['id']}/pay", headers=customer))["status"] == "paid"
    assert answer(await client.post(f"/orders/{shipped['id']}/ship", headers=tokens.admin()))["status"] == "shipped"
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
        order["id"]: answer(await client.get(f"/orders/{order['id']}", headers=customer))
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
    stale = answer(await place(client, customer, [(product["id"], 2)]), 201)
    fresh = answer(await place(client, customer, [(product["id"], 1)]), 201)
    paid = answer(await place(client, customer, [(product["id"], 1)]), 201)
    assert answer(await client.post(f"/orders/{paid['id']}/pay", headers=customer))["status"] == "paid"
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
    order = answer(await client.get(f"/orders/{stale['id']}", headers=customer))
    assert order["cancel_reason"] == "payment_timeout"
    assert answer(await client.get(f"/orders/{fresh['id']}", headers=customer))["status"] == "pending"
    assert answer(await client.get(f"/orders/{paid['id']}", headers=customer))["status"] == "paid"
    assert await stock_of(orders_database, product["id"]) == 3


async def test_two_sweeps_at_once_cancel_each_order_once(
    client: httpx.AsyncClient, tokens: Tokens, orders_settings: OrdersSettings, orders_database: str
) -> None:
    customer = tokens.customer()
    product = await add_product(client, tokens, sku="RACE-SWEEP", stock=50)
    for _ in range(20):
        answer(await place(client, customer, [(product["id"], 1)]), 201)
    engine = create_async_engine(orders_database, pool_size=4)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def sweep() -> int:
        async with sessions() as session:
            service = OrderService(session=session, outbox=OUTBOX, settings=orders_settings)
            return await service.cancel_unpaid(older_than=datetime.timedelta(0), batch_size=7)

    total = 0
    for _ in range(5):
        total += sum(await asyncio.gather(sweep(), sweep()))
    await engine.dispose()
    assert total == 20
    assert (await outbox_types(orders_database)).count("orders.order.cancelled") == 20
    assert await stock_of(orders_database, product["id"]) == 50
