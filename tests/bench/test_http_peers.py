"""bench/http.py compares like with like: its peer and ceiling answer what the project answers.

For the same rows of a real Postgres, the FastAPI + ORM peer and the asyncpg ceiling must give the
same JSON as the orders API for a product and an order, and place an order the same way (same
lines, prices, total; stock taken), or the benchmark's ratios would compare different work; so must
bench/framework_floor.py's plain Litestar app for a product.
No timing here: the speeds are bench/http.py's to print.
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.testing import prepare_service_database, serve_app, truncate_schema
from orders.app import DATABASE, create_app
from orders.models import KnownUser, Order, OrderLine, Product
from orders.settings import OrdersSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from devtools.stack.servers import PostgresServer
    from shared.auth import AccessTokenSigner

ANSWER_IS_NEW = {"id", "created_at", "updated_at"}  # a new order's own id and time differ by nature


@pytest.fixture(scope="session")
def migrated_orders_url(postgres_server: PostgresServer) -> str:
    return prepare_service_database(postgres_server, DATABASE)


@pytest.fixture
async def orders_url(migrated_orders_url: str) -> AsyncIterator[str]:
    yield migrated_orders_url
    await truncate_schema(migrated_orders_url, "orders")


async def seed(url: str, user_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID, list[uuid.UUID]]:
    """Two products, the customer in orders' replica, and one order of theirs with two lines."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=123456)
    product_ids = [uuid.uuid4(), uuid.uuid4()]
    products: list[dict[str, Any]] = [
        {
            "id": product_ids[index],
            "sku": f"PEER-{index}",
            "name": f"Peer product {index}",
            "description": "Compared three ways.",
            "price": 1999 + index,
            "currency": "EUR",
            "stock": 100,
            "is_active": True,
            "created_at": now,
            "updated_at": now,
        }
        for index in range(2)
    ]
    order_id = uuid.uuid4()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(insert(Product), products)
            await connection.execute(insert(KnownUser).values(user_id=user_id, is_active=True, sequence=1))
            await connection.execute(
                insert(Order).values(
                    id=order_id,
                    user_id=user_id,
                    status="paid",
                    total=2 * 1999 + 2000,
                    currency="EUR",
                    version=2,
                    created_at=now,
                    updated_at=now,
                )
            )
            await connection.execute(
                insert(OrderLine),
                [
                    {
                        "id": uuid.uuid4(),
                        "order_id": order_id,
                        "product_id": product["id"],
                        "sku": product["sku"],
                        "name": product["name"],
                        "unit_price": product["price"],
                        "quantity": 2 - index,
                    }
                    for index, product in enumerate(products)
                ],
            )
    finally:
        await engine.dispose()
    return product_ids[0], order_id, product_ids


async def stock(url: str, product_id: uuid.UUID) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(select(Product.stock).where(Product.id == product_id)) or 0)
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def peer_and_ceiling(
    url: str, signer: AccessTokenSigner, private_key_pem: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """Both apps in process, configured as bench/http.py configures them (every role: orders' here)."""
    for service in ("USERS", "ORDERS", "NOTIFY"):
        monkeypatch.setenv(f"BENCH_{service}_DATABASE_URL", url)
    monkeypatch.setenv("BENCH_JWT_PUBLIC_KEY", signer.public_key_pem())
    monkeypatch.setenv("BENCH_JWT_PRIVATE_KEY", private_key_pem)
    # imported only now: both read their settings when imported, as their servers do
    from bench import ceiling, peer

    await ceiling.ceiling.start()
    clients = {
        "peer": httpx.AsyncClient(transport=httpx.ASGITransport(app=peer.app), base_url="http://peer"),
        "ceiling": httpx.AsyncClient(transport=httpx.ASGITransport(app=ceiling.app), base_url="http://ceiling"),
    }
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.aclose()
        await ceiling.ceiling.stop()
        for sessions in (peer.users_sessions, peer.orders_sessions, peer.notify_sessions):
            await sessions.kw["bind"].dispose()


def body(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def test_peer_and_ceiling_answer_the_projects_json_for_the_same_rows(
    orders_url: str,
    access_token_signer: AccessTokenSigner,
    private_key_pem: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user_id = uuid.uuid4()
    product_id, order_id, product_ids = await seed(orders_url, user_id)
    token = {"Authorization": f"Bearer {access_token_signer.sign(subject=user_id, roles=['user'])}"}
    settings = OrdersSettings(database_url=orders_url, jwt_public_keys=access_token_signer.public_key_pem())
    order_body = {
        "items": [
            {"product_id": str(product_ids[0]), "quantity": 3},
            {"product_id": str(product_ids[1]), "quantity": 1},
        ]
    }

    async with (
        serve_app(create_app(settings)) as project,
        peer_and_ceiling(orders_url, access_token_signer, private_key_pem, monkeypatch) as others,
    ):
        clients = {"project": project, **others}
        products = {name: body(await client.get(f"/products/{product_id}"), 200) for name, client in clients.items()}
        orders = {
            name: body(await client.get(f"/orders/{order_id}", headers=token), 200) for name, client in clients.items()
        }
        placed = {
            name: body(
                await client.post("/orders", json=order_body, headers=token | {"Idempotency-Key": f"key-{name}"}), 201
            )
            for name, client in clients.items()
        }
        others_order = await clients["peer"].get(f"/orders/{order_id}", headers={"Authorization": "Bearer nonsense"})
        assert others_order.status_code == 401  # the peer checks the token too
        replay = await clients["ceiling"].post(
            "/orders", json=order_body, headers=token | {"Idempotency-Key": "key-ceiling"}
        )
        assert body(replay, 201) == placed["ceiling"]

    assert products["peer"] == products["project"]
    assert products["ceiling"] == products["project"]
    assert orders["project"]["lines"], "the seeded order has lines"
    assert orders["peer"] == orders["project"]
    assert orders["ceiling"] == orders["project"]
    expected = {key: value for key, value in placed["project"].items() if key not in ANSWER_IS_NEW}
    for name in ("peer", "ceiling"):
        assert {key: value for key, value in placed[name].items() if key not in ANSWER_IS_NEW} == expected
    # each of the three placed one order of 3 + 1 units (the replay took nothing)
    assert await stock(orders_url, product_ids[0]) == 100 - 3 * 3
    assert await stock(orders_url, product_ids[1]) == 100 - 3 * 1


@pytest.mark.parametrize("pool_from", ["caller", "environment"])
async def test_the_plain_litestar_app_of_the_framework_floor_answers_the_projects_json(
    orders_url: str,
    access_token_signer: AccessTokenSigner,
    private_key_pem: str,
    monkeypatch: pytest.MonkeyPatch,
    pool_from: str,
) -> None:
    # "environment": as bench/http.py serves it with granian, the app's own pool from BENCH_* at start-up.
    from bench.framework_floor import plain_litestar

    product_id, _, _ = await seed(orders_url, uuid.uuid4())
    settings = OrdersSettings(database_url=orders_url, jwt_public_keys=access_token_signer.public_key_pem())
    pool = await asyncpg.create_pool(orders_url.replace("postgresql+asyncpg", "postgresql"), min_size=1, max_size=2)
    if pool_from == "environment":
        monkeypatch.setenv("BENCH_ORDERS_DATABASE_URL", orders_url)
        # bench.ceiling (whose pool size the app takes) reads its keys at import
        monkeypatch.setenv("BENCH_JWT_PUBLIC_KEY", access_token_signer.public_key_pem())
        monkeypatch.setenv("BENCH_JWT_PRIVATE_KEY", private_key_pem)
    plain = plain_litestar(pool if pool_from == "caller" else None)
    try:
        async with (
            plain.lifespan(),
            serve_app(create_app(settings)) as project,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=plain),  # type: ignore[arg-type]  # Litestar's precise ASGI types vs httpx's loose ones
                base_url="http://plain",
            ) as floor,
        ):
            answers = [body(await client.get(f"/products/{product_id}"), 200) for client in (project, floor)]
            # bench/http.py waits for this 404 before measuring: the app is up and its pool answered
            unknown = await floor.get(f"/products/{uuid.uuid4()}")
    finally:
        await pool.close()
    assert answers[0] == answers[1]
    assert unknown.status_code == 404
