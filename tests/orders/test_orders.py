from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.orders.helpers import Tokens, add_product, answer, count_orders, outbox_types, place, stock_of

if TYPE_CHECKING:
    import httpx


async def test_server_prices_lines_and_totals_in_minor_units(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    mug = await add_product(client, tokens, sku="MUG", price=1250)
    tea = await add_product(client, tokens, sku="TEA", price=399)
    response = await place(client, tokens.customer(), [(mug["id"], 2), (tea["id"], 3)])
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "pending"
    assert order["total"] == 2 * 1250 + 3 * 399
    assert order["currency"] == "EUR"
    assert {line["sku"]: (line["unit_price"], line["line_total"]) for line in order["lines"]} == {
        "MUG": (1250, 2500),
        "TEA": (399, 1197),
    }
    assert await stock_of(orders_database, mug["id"]) == 8
    assert await outbox_types(orders_database) == ["orders.order.placed"]


async def test_price_change_after_placing_does_not_change_the_order(client: httpx.AsyncClient, tokens: Tokens) -> None:
    mug = await add_product(client, tokens, sku="MUG", price=1000)
    customer = tokens.customer()
    order = answer(await place(client, customer, [(mug["id"], 1)]), 201)
    repriced = answer(await client.patch(f"/products/{mug['id']}", json={"price": 9999}, headers=tokens.admin()))
    assert (repriced["id"], repriced["price"]) == (mug["id"], 9999)
    again = answer(await client.get(f"/orders/{order['id']}", headers=customer))
    assert (again["total"], again["lines"][0]["unit_price"]) == (1000, 1000)


async def test_fifty_concurrent_orders_against_stock_ten_sell_exactly_ten(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    product = await add_product(client, tokens, sku="RARE", stock=10)
    responses = await asyncio.gather(*(place(client, tokens.customer(), [(product["id"], 1)]) for _ in range(50)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(201) == 10
    assert statuses.count(409) == 40
    assert await stock_of(orders_database, product["id"]) == 0
    assert await count_orders(orders_database) == 10


async def test_short_stock_is_a_409_naming_the_product_and_leaves_nothing(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    plenty = await add_product(client, tokens, sku="PLENTY", stock=100)
    scarce = await add_product(client, tokens, sku="SCARCE", stock=1)
    response = await place(client, tokens.customer(), [(plenty["id"], 5), (scarce["id"], 2)])
    assert response.status_code == 409
    assert "SCARCE" in response.json()["detail"]
    assert "PLENTY" not in response.json()["detail"]
    assert await stock_of(orders_database, plenty["id"]) == 100
    assert await count_orders(orders_database) == 0
    assert await outbox_types(orders_database) == []


@pytest.mark.parametrize(
    ("items", "status"),
    [
        pytest.param("none", 400, id="no-lines"),
        pytest.param("too-many", 400, id="fifty-one-lines"),
        pytest.param("zero", 400, id="zero-quantity"),
        pytest.param("duplicate", 422, id="duplicate-product"),
        pytest.param("unknown", 422, id="unknown-product"),
        pytest.param("mixed", 422, id="mixed-currencies"),
        pytest.param("inactive", 422, id="inactive-product"),
    ],
)
async def test_unacceptable_orders_are_refused_and_write_nothing(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str, items: object, status: int
) -> None:
    eur = await add_product(client, tokens, sku="EUR-1")
    usd = await add_product(client, tokens, sku="USD-1", currency="USD")
    off = await add_product(client, tokens, sku="OFF-1", is_active=False)
    cases: dict[str, list[tuple[object, int]]] = {
        "too-many": [(str(uuid.uuid4()), 1) for _ in range(51)],
        "zero": [(eur["id"], 0)],
        "duplicate": [(eur["id"], 1), (eur["id"], 2)],
        "unknown": [(str(uuid.uuid4()), 1)],
        "mixed": [(eur["id"], 1), (usd["id"], 1)],
        "inactive": [(off["id"], 1)],
    }
    lines = cases.get(str(items), [])
    response = await place(client, tokens.customer(), lines)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await count_orders(orders_database) == 0
    assert await stock_of(orders_database, eur["id"]) == 10


async def test_idempotency_key_is_required(client: httpx.AsyncClient, tokens: Tokens) -> None:
    product = await add_product(client, tokens, sku="K")
    response = await client.post(
        "/orders", json={"items": [{"product_id": product["id"], "quantity": 1}]}, headers=tokens.customer()
    )
    assert response.status_code == 400
    assert "idempotency-key" in response.text.lower()


async def test_second_order_with_same_idempotency_key_returns_first_order(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    product = await add_product(client, tokens, sku="ONCE")
    customer = tokens.customer()
    first = await place(client, customer, [(product["id"], 2)], key="key-1")
    second = await place(client, customer, [(product["id"], 2)], key="key-1")
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert await stock_of(orders_database, product["id"]) == 8


async def test_racing_requests_with_one_idempotency_key_make_one_order(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    product = await add_product(client, tokens, sku="RACE", stock=100)
    customer = tokens.customer()
    responses = await asyncio.gather(*(place(client, customer, [(product["id"], 1)], key="race") for _ in range(10)))
    assert {response.status_code for response in responses} == {201}
    assert len({response.json()["id"] for response in responses}) == 1
    assert await count_orders(orders_database) == 1
    assert await stock_of(orders_database, product["id"]) == 99


async def test_same_key_with_another_body_is_a_422(client: httpx.AsyncClient, tokens: Tokens) -> None:
    product = await add_product(client, tokens, sku="MISMATCH")
    customer = tokens.customer()
    assert (await place(client, customer, [(product["id"], 1)], key="k")).status_code == 201
    response = await place(client, customer, [(product["id"], 2)], key="k")
    assert response.status_code == 422


async def test_keys_belong_to_one_user(client: httpx.AsyncClient, tokens: Tokens, orders_database: str) -> None:
    product = await add_product(client, tokens, sku="SHARED-KEY")
    first = await place(client, tokens.customer(), [(product["id"], 1)], key="same")
    second = await place(client, tokens.customer(), [(product["id"], 1)], key="same")
    assert first.json()["id"] != second.json()["id"]
    assert await count_orders(orders_database) == 2


async def test_an_expired_key_places_a_new_order_and_replays_that_one(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    product = await add_product(client, tokens, sku="EXPIRED-KEY", stock=10)
    customer = tokens.customer()
    first = answer(await place(client, customer, [(product["id"], 1)], key="old"), 201)
    engine = create_async_engine(orders_database)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE orders.idempotency_key SET expires_at = now() - interval '1 second'"))
    await engine.dispose()
    # the expired key is taken over: another body is a new order, not a 422 ...
    second = await place(client, customer, [(product["id"], 2)], key="old")
    assert second.status_code == 201, second.text
    assert second.json()["id"] != first["id"]
    # ... whose answer the key now keeps for replays
    replay = await place(client, customer, [(product["id"], 2)], key="old")
    assert (replay.status_code, replay.headers.get("idempotent-replayed")) == (201, "true"), replay.text
    assert replay.json() == second.json()
    assert await stock_of(orders_database, product["id"]) == 7


async def test_failed_order_does_not_burn_its_key(client: httpx.AsyncClient, tokens: Tokens) -> None:
    product = await add_product(client, tokens, sku="LATER", stock=0)
    customer = tokens.customer()
    assert (await place(client, customer, [(product["id"], 1)], key="retry")).status_code == 409
    restock = await client.post(f"/products/{product['id']}/restock", json={"quantity": 1}, headers=tokens.admin())
    assert answer(restock)["stock"] == 1
    assert (await place(client, customer, [(product["id"], 1)], key="retry")).status_code == 201
