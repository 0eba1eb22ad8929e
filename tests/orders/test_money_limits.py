"""Money at the limits: the largest order the API allows is stored, totalled and read back exactly."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from orders.models import EVENT_TABLES, Order
from orders.schemas import MAX_LINES, MAX_ORDER_TOTAL, MAX_PRICE, MAX_QUANTITY
from shared.events.contracts import OrderPlaced, decode_event
from tests.orders.helpers import Tokens, add_product, place

if TYPE_CHECKING:
    import httpx


async def stored_total_and_event(database_url: str, order_id: str) -> tuple[int, OrderPlaced]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            total = await connection.scalar(select(Order.total).where(Order.id == uuid.UUID(order_id)))
            body = await connection.scalar(select(EVENT_TABLES.outbox.c.body))
    finally:
        await engine.dispose()
    assert body is not None
    assert total is not None
    payload = decode_event(body).payload
    assert isinstance(payload, OrderPlaced)
    return total, payload


async def test_largest_legal_order_is_placed_and_read_back_exactly(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    products = [
        await add_product(client, tokens, sku=f"DEAR-{n}", price=MAX_PRICE, stock=MAX_QUANTITY)
        for n in range(MAX_LINES)
    ]
    customer = tokens.customer()

    placed = await place(client, customer, [(product["id"], MAX_QUANTITY) for product in products])

    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert order["total"] == MAX_ORDER_TOTAL == 50_000_000_000_000
    assert MAX_ORDER_TOTAL < 2**53  # a JavaScript client reads it exactly
    assert {line["line_total"] for line in order["lines"]} == {MAX_PRICE * MAX_QUANTITY}
    read = await client.get(f"/orders/{order['id']}", headers=customer)
    assert read.status_code == 200, read.text
    assert read.json()["total"] == MAX_ORDER_TOTAL
    assert [line["unit_price"] for line in read.json()["lines"]] == [MAX_PRICE] * MAX_LINES
    listed = await client.get("/orders", headers=customer)
    assert [item["total"] for item in listed.json()["items"]] == [MAX_ORDER_TOTAL]
    stored, event = await stored_total_and_event(orders_database, order["id"])
    assert stored == event.total == MAX_ORDER_TOTAL
    paid = await client.post(f"/orders/{order['id']}/pay", headers=customer)
    assert paid.status_code == 200, paid.text
    assert paid.json()["total"] == MAX_ORDER_TOTAL


async def test_one_past_each_money_limit_is_a_400_naming_the_field(client: httpx.AsyncClient, tokens: Tokens) -> None:
    product = await add_product(client, tokens, sku="DEAR", price=MAX_PRICE, stock=MAX_QUANTITY)
    too_dear = await client.post(
        "/products",
        json={"sku": "DEARER", "name": "Dearer", "price": MAX_PRICE + 1, "currency": "EUR"},
        headers=tokens.admin(),
    )
    repriced = await client.patch(f"/products/{product['id']}", json={"price": MAX_PRICE + 1}, headers=tokens.admin())
    too_many = await place(client, tokens.customer(), [(product["id"], MAX_QUANTITY + 1)])
    too_long = await place(client, tokens.customer(), [(str(uuid.uuid4()), 1) for _ in range(MAX_LINES + 1)])

    for response, field in [(too_dear, "price"), (repriced, "price"), (too_many, "quantity"), (too_long, "items")]:
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert any(field in error["field"] for error in response.json()["errors"]), response.text
