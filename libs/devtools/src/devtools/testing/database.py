"""Service databases for tests: provisioned and migrated once per session, emptied after each test."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import VERSION_TABLE, provision_service_role

if TYPE_CHECKING:
    from devtools.stack.servers import PostgresServer
    from shared.db import ServiceDatabase

__all__ = ("TEST_ROLE_PASSWORD", "migrate_fresh_database", "prepare_service_database", "truncate_schema")

TEST_ROLE_PASSWORD = "test-password"  # noqa: S105 - throwaway roles on a throwaway server
"""Every service role of the test server has this password: roles are cluster-wide, so a test that
provisions a role again (in another database) must not change it under the other tests' feet."""


def prepare_service_database(
    server: PostgresServer,
    database: ServiceDatabase,
    *,
    password: str = TEST_ROLE_PASSWORD,
) -> str:
    """Create the service's role and schema as in production, migrate to head, return its URL.

    The service connects as its own role, so a test fails if the service needed more privilege
    than owning its schema.
    """
    url = asyncio.run(provision_service_role(server.url(), service=database.schema, password=password))
    database.upgrade(url)
    return url


async def truncate_schema(database_url: str, schema: str) -> None:
    """Empty every table of ``schema`` except the migration version table."""
    engine = create_async_engine(database_url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            tables = (
                await connection.scalars(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = :schema AND tablename <> :version"),
                    {"schema": schema, "version": VERSION_TABLE},
                )
            ).all()
            if tables:
                names = ", ".join(f'"{schema}"."{table}"' for table in tables)
                await connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


async def migrate_fresh_database(server: PostgresServer, database: ServiceDatabase, name: str) -> str:
    """Create database ``name`` anew, provision the service's role in it, migrate from empty to head.

    Returns:
        The service's URL for that database (the caller checks what it needs, then may drop it).
    """
    admin = create_async_engine(server.url(), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    url = await provision_service_role(server.url(name), service=database.schema, password=TEST_ROLE_PASSWORD)
    await asyncio.to_thread(database.upgrade, url)
    return url
