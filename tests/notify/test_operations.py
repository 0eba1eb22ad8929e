"""Health, docs and migrations of the notify service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.testing import migrate_fresh_database
from notify.app import DATABASE

if TYPE_CHECKING:
    import httpx

    from devtools.stack.servers import PostgresServer


async def test_ready_reports_database_at_head_and_nats_connected(client: httpx.AsyncClient) -> None:
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "nats": "ok"}


async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/docs/openapi.json")).json()["paths"]
    expected = {
        ("/notifications", "get"),
        ("/notifications/{notification_id}/read", "post"),
        ("/notifications/read-all", "post"),
        ("/notifications/stream", "get"),
        ("/notifications/preferences", "get"),
        ("/notifications/preferences", "put"),
        ("/notifications/unsubscribe", "get"),
        ("/notifications/unsubscribe", "post"),
    }
    assert expected <= {(path, method) for path, operations in paths.items() for method in operations}
    stream = paths["/notifications/stream"]["get"]
    assert any(parameter["name"] == "Last-Event-ID" for parameter in stream["parameters"])
    assert "security" not in paths["/notifications/unsubscribe"]["get"]
    assert "security" not in paths["/notifications/unsubscribe"]["post"]


async def test_migrations_reach_head_and_match_the_models(postgres_server: PostgresServer) -> None:
    url = await migrate_fresh_database(postgres_server, DATABASE, "fresh_notify")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        assert await DATABASE.current_revision(engine) == DATABASE.head()
        assert await DATABASE.differences(url) == []
        async with engine.connect() as connection:
            tables = set(
                (await connection.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'notify'"))).all()
            )
        assert tables == {
            "alembic_version",
            "contact",
            "notification",
            "preference",
            "email_delivery",
            "outbox",
            "inbox",
        }
    finally:
        await engine.dispose()
