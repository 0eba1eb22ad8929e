"""Every request's database session is given back before its answer reaches the client.

``shared.db.RequestSessions`` closes the session of a request as its answer starts; one that
never began a transaction holds no connection and is left to the garbage collector. A session
left open would keep its connection checked out of the pool, idle in its transaction: Postgres
shows it in ``pg_stat_activity``. The walk covers the routes that use the session (the catalog's
list, every write) and those that read outside it, each answering 2xx and 4xx.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import asyncpg

from tests.orders.helpers import Tokens, add_product, answer, place

if TYPE_CHECKING:
    import httpx


async def _connections_left_in_a_transaction(database_url: str) -> list[str]:
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await connection.fetch(
            "SELECT state, query FROM pg_stat_activity"
            " WHERE usename = current_user AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
        )
    finally:
        await connection.close()
    return [f"{row['state']}: {row['query']}" for row in rows]


async def test_no_answer_leaves_a_connection_in_a_transaction(
    client: httpx.AsyncClient, tokens: Tokens, orders_database: str
) -> None:
    product = await add_product(client, tokens, sku="S-1", stock=5)
    customer = tokens.customer()
    order = answer(await place(client, customer, [(product["id"], 1)]), 201)
    missing = uuid.uuid4()
    requests: list[tuple[str, str, dict[str, str], object, int]] = [
        ("GET", "/products", {}, None, 200),
        ("GET", "/products?q=S-&active=false", tokens.admin(), None, 200),
        ("GET", f"/products/{product['id']}", {}, None, 200),
        ("GET", f"/products/{missing}", {}, None, 404),
        ("POST", "/products", tokens.admin(), {"sku": "S-2", "name": "two", "price": 1, "currency": "EUR"}, 201),
        ("POST", "/products", tokens.admin(), {"sku": "S-2", "name": "again", "price": 1, "currency": "EUR"}, 409),
        ("PATCH", f"/products/{product['id']}", tokens.admin(), {"price": 1500}, 200),
        ("PATCH", f"/products/{missing}", tokens.admin(), {"price": 1500}, 404),
        ("POST", f"/products/{product['id']}/restock", tokens.admin(), {"quantity": 2}, 200),
        ("GET", "/orders", customer, None, 200),
        ("GET", f"/orders/{order['id']}", customer, None, 200),
        ("GET", f"/orders/{order['id']}", tokens.customer(), None, 404),
        ("POST", f"/orders/{order['id']}/cancel", tokens.customer(), None, 404),
        ("POST", f"/orders/{order['id']}/cancel", customer, None, 200),
        ("POST", f"/orders/{order['id']}/cancel", customer, None, 409),
    ]
    for method, path, headers, body, status in requests:
        if body is None:
            response = await client.request(method, path, headers=headers)
        else:
            response = await client.request(method, path, headers=headers, json=body)
        assert response.status_code == status, (method, path, response.text)
        assert await _connections_left_in_a_transaction(orders_database) == [], (method, path)
    short = await place(client, customer, [(product["id"], 1_000)])
    assert short.status_code == 409, short.text
    assert await _connections_left_in_a_transaction(orders_database) == []
