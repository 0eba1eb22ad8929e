"""Health, docs and migrations of the orders service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.testing import migrate_fresh_database
from orders.app import DATABASE

if TYPE_CHECKING:
    import httpx

    from devtools.stack.servers import PostgresServer


async def test_ready_reports_database_at_head(client: httpx.AsyncClient) -> None:
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok"}


async def test_openapi_lists_every_route_with_its_errors(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/docs/openapi.json")).json()["paths"]
    expected = {
        ("/products", "get"),
        ("/products", "post"),
        ("/products/{product_id}", "get"),
        ("/products/{product_id}", "patch"),
        ("/products/{product_id}/deactivate", "post"),
        ("/products/{product_id}/restock", "post"),
        ("/orders", "get"),
        ("/orders", "post"),
        ("/orders/{order_id}", "get"),
        ("/orders/{order_id}/pay", "post"),
        ("/orders/{order_id}/cancel", "post"),
        ("/orders/{order_id}/ship", "post"),
        ("/orders/{order_id}/deliver", "post"),
    }
    assert expected <= {(path, method) for path, operations in paths.items() for method in operations}
    place = paths["/orders"]["post"]
    assert {"201", "400", "401", "403", "409", "422"} <= set(place["responses"])
    assert any(parameter["name"] == "Idempotency-Key" for parameter in place["parameters"])
    assert "409" in paths["/orders/{order_id}/pay"]["post"]["responses"]


async def test_migrations_reach_head_and_match_the_models(postgres_server: PostgresServer) -> None:
    url = await migrate_fresh_database(postgres_server, DATABASE, "fresh_orders")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        assert await DATABASE.current_revision(engine) == DATABASE.head()
        assert await DATABASE.differences(url) == []
    finally:
        await engine.dispose()
