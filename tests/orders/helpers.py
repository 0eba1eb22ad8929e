"""What the orders tests share: callers with tokens, catalog and order requests, reads of the database,
users' events and the real worker. Fixtures stay in ``conftest.py``."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from devtools.stack.servers import free_port
from devtools.testing import eventually
from orders.models import EVENT_TABLES, OUTBOX, KnownUser, Order, Product
from orders.service import OrderService
from orders.worker import worker_plan
from shared.events.contracts import decode_event, encode_event, new_envelope
from shared.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx
    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer
    from orders.settings import OrdersSettings
    from shared.auth import AccessTokenSigner
    from shared.events.contracts import EventPayload

__all__ = (
    "Tokens",
    "add_product",
    "answer",
    "count_orders",
    "outbox_types",
    "place",
    "publish",
    "remember",
    "replica",
    "run_worker_until",
    "stock_of",
    "with_nats",
)


class Tokens:
    """Bearer headers for made-up customers and an administrator, signed as users would."""

    def __init__(self, signer: AccessTokenSigner) -> None:
        self.signer = signer
        self.admin_id = uuid.uuid4()

    def customer(self, user_id: uuid.UUID | None = None) -> dict[str, str]:
        return self._headers(user_id or uuid.uuid4(), ["user"])

    def admin(self) -> dict[str, str]:
        return self._headers(self.admin_id, ["admin"])

    def _headers(self, user_id: uuid.UUID, roles: list[str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.signer.sign(subject=user_id, roles=roles)}"}


def answer(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body of ``response``, which must have ``status`` (its body is the failure message)."""
    assert response.status_code == status, response.text
    return response.json()


async def add_product(
    client: httpx.AsyncClient,
    tokens: Tokens,
    *,
    sku: str,
    price: int = 1000,
    stock: int = 10,
    currency: str = "EUR",
    is_active: bool = True,
) -> dict[str, object]:
    response = await client.post(
        "/products",
        json={
            "sku": sku,
            "name": f"Product {sku}",
            "price": price,
            "currency": currency,
            "stock": stock,
            "is_active": is_active,
        },
        headers=tokens.admin(),
    )
    return answer(response, 201)  # type: ignore[no-any-return]


async def place(
    client: httpx.AsyncClient, headers: dict[str, str], items: list[tuple[object, int]], *, key: str | None = None
) -> httpx.Response:
    return await client.post(
        "/orders",
        json={"items": [{"product_id": product_id, "quantity": quantity} for product_id, quantity in items]},
        headers={**headers, "Idempotency-Key": key or uuid.uuid4().hex},
    )


async def stock_of(database_url: str, product_id: object) -> int:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(select(Product.stock).where(Product.id == product_id)) or 0)
    finally:
        await engine.dispose()


async def count_orders(database_url: str) -> int:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(select(func.count()).select_from(Order)) or 0)
    finally:
        await engine.dispose()


async def outbox_types(database_url: str) -> list[str]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            bodies = (
                await connection.scalars(select(EVENT_TABLES.outbox.c.body).order_by(EVENT_TABLES.outbox.c.id))
            ).all()
    finally:
        await engine.dispose()
    return [decode_event(body).envelope.type for body in bodies]


async def publish(js: JetStreamContext, payload: EventPayload, *, sequence: int, message_id: str | None = None) -> str:
    """Publish one of users' events as users would; its event id."""
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


async def remember(settings: OrdersSettings, user_id: uuid.UUID, *, is_active: bool, sequence: int) -> bool:
    """Apply a users event's state to the replica through the service, as the consumer does."""
    engine = create_async_engine(settings.database_url)
    try:
        async with async_sessionmaker(engine)() as session:
            service = OrderService(session=session, outbox=OUTBOX, settings=settings)
            return await service.remember_user(user_id, email=None, is_active=is_active, sequence=sequence)
    finally:
        await engine.dispose()


async def run_worker_until(settings: OrdersSettings, condition: Callable[[], Awaitable[bool]]) -> None:
    """Run the real orders worker until ``condition`` holds (30 s at most), then stop it."""
    worker = Worker(worker_plan(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(condition, within=30)
    finally:
        stop.set()
        await task


def with_nats(settings: OrdersSettings, nats_server: NatsServer) -> OrdersSettings:
    """``settings`` for a worker on this NATS, with its own health port and a quick unpaid sweep."""
    return msgspec.structs.replace(
        settings, nats_url=nats_server.url, worker_health_port=free_port(), unpaid_sweep_interval_seconds=0.2
    )
