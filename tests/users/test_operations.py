"""Health, docs and migrations of the users service (metrics: tests/contract/test_api_surface.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.testing import TEST_ROLE_PASSWORD, migrate_fresh_database, serve_app
from shared.db import provision_service_role
from users.app import DATABASE, create_app
from users.models import Base

if TYPE_CHECKING:
    import httpx

    from devtools.stack.servers import NatsServer, PostgresServer
    from users.settings import UsersSettings


async def test_live_and_ready_report_ok(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok", "checks": {}}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok"}


async def test_ready_checks_nats_when_configured(users_settings: UsersSettings, nats_server: NatsServer) -> None:
    settings = msgspec.structs.replace(users_settings, nats_url=nats_server.url)
    async with serve_app(create_app(settings)) as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "nats": "ok"}


async def test_ready_is_503_when_migrations_are_behind(
    users_settings: UsersSettings, postgres_server: PostgresServer
) -> None:
    admin = create_async_engine(postgres_server.url(), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text("DROP DATABASE IF EXISTS behind"))
        await connection.execute(text("CREATE DATABASE behind"))
    await admin.dispose()
    url = await provision_service_role(postgres_server.url("behind"), service="users", password=TEST_ROLE_PASSWORD)
    async with serve_app(create_app(msgspec.structs.replace(users_settings, database_url=url))) as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"].startswith("migrations at None")


async def test_ready_stays_ok_when_a_newer_release_migrated_the_schema(
    users_settings: UsersSettings, postgres_server: PostgresServer
) -> None:
    url = await migrate_fresh_database(postgres_server, DATABASE, "ahead_users")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE users.alembic_version SET version_num = 'from_a_newer_release'"))
    await engine.dispose()
    async with serve_app(create_app(msgspec.structs.replace(users_settings, database_url=url))) as client:
        assert (await client.get("/health/ready")).status_code == 200


async def test_openapi_documents_every_route(client: httpx.AsyncClient) -> None:
    document = (await client.get("/docs/openapi.json")).json()
    assert set(document["paths"]) >= {
        "/auth/register",
        "/auth/login",
        "/auth/token",
        "/auth/refresh",
        "/auth/logout",
        "/.well-known/jwks.json",
        "/users/me",
        "/users",
        "/users/{user_id}",
    }
    assert (await client.get("/docs")).status_code == 200


async def test_migrations_reach_head_and_match_the_models(postgres_server: PostgresServer) -> None:
    url = await migrate_fresh_database(postgres_server, DATABASE, "fresh_users")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        assert await DATABASE.current_revision(engine) == DATABASE.head()
        assert await DATABASE.differences(url) == []
        async with engine.connect() as connection:
            tables = set(
                (await connection.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'users'"))).all()
            )
            owner = await connection.scalar(
                text("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'users'")
            )
        assert tables == {"alembic_version", "user_account", "refresh_token", "login_throttle", "outbox", "inbox"}
        assert owner == "users"
    finally:
        await engine.dispose()


async def test_service_role_cannot_touch_other_schemas(users_database: str) -> None:
    engine = create_async_engine(users_database, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text(
                    "SELECT has_schema_privilege('public', 'CREATE'),"
                    " has_database_privilege(current_database(), 'CREATE')"
                )
            )
            assert result.one() == (False, False)
    finally:
        await engine.dispose()


def test_models_all_live_in_the_users_schema() -> None:
    assert {table.schema for table in Base.metadata.tables.values()} == {"users"}
    assert DATABASE.schema == "users"


async def test_server_spans_are_named_by_route_template(client: httpx.AsyncClient) -> None:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        await client.get("/users/0190c9f2-0000-7000-8000-000000000000")
    finally:
        exporter.shutdown()
    names = {span.name for span in exporter.get_finished_spans()}
    assert "GET /users/{user_id}" in names
    assert not any("0190c9f2" in name for name in names)


async def test_cors_allows_only_configured_origins(users_settings: UsersSettings) -> None:
    settings = msgspec.structs.replace(users_settings, cors_allow_origins=("https://shop.example",))
    async with serve_app(create_app(settings)) as client:
        allowed = await client.options(
            "/auth/login",
            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
        )
        refused = await client.options(
            "/auth/login",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    assert "access-control-allow-origin" not in refused.headers
