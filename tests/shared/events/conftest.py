"""A small service of our own ("eventlab") to exercise the event mechanisms against real servers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, pool
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from devtools.testing import truncate_schema
from shared.db import provision_service_role
from shared.events.outbox import Outbox
from shared.events.tables import EventTables, define_event_tables

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from devtools.stack.servers import PostgresServer

LAB = "eventlab"
metadata = MetaData(schema=LAB)
TABLES: EventTables = define_event_tables(metadata)
effects = Table(
    "effect",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("note", String(200), nullable=False),
)
replica = Table(
    "user_replica",
    metadata,
    Column("user_id", UUID(as_uuid=True), primary_key=True),
    Column("email", String(254), nullable=False),
    Column("is_active", Boolean, nullable=False),
    Column("sequence", Integer, nullable=False),
)


@pytest.fixture(scope="session")
def lab_database_url(postgres_server: PostgresServer) -> str:
    async def create() -> str:
        url = await provision_service_role(postgres_server.url(), service=LAB, password="lab-password")
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        await engine.dispose()
        return url

    return asyncio.run(create())


@pytest.fixture
async def lab_engine(lab_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(lab_database_url, pool_size=10)
    yield engine
    await engine.dispose()
    await truncate_schema(lab_database_url, LAB)


@pytest.fixture
def lab_sessions(lab_engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(lab_engine, expire_on_commit=False)


@pytest.fixture
def lab_outbox() -> Outbox:
    return Outbox(TABLES, source="users")
