"""A small service of our own ("eventlab") to exercise the event mechanisms against real servers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from devtools.testing import truncate_schema
from shared.db import provision_service_role
from shared.events.outbox import Outbox
from tests.shared.events.helpers import LAB, TABLES, metadata

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from devtools.stack.servers import PostgresServer


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
