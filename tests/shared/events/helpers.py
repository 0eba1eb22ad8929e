"""The lab service ("eventlab") the event mechanisms are tried on, and what its tests share."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, func, select
from sqlalchemy.dialects.postgresql import UUID

from shared.events.contracts import UserRegistered
from shared.events.tables import EventTables, define_event_tables

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from shared.events.outbox import Outbox


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


def registered(index: int = 0) -> UserRegistered:
    return UserRegistered(user_id=uuid.uuid4(), email=f"user{index}@example.com", display_name="U", role="user")


async def add_events(sessions: async_sessionmaker[AsyncSession], outbox: Outbox, count: int) -> list[str]:
    async with sessions() as session, session.begin():
        return [(await outbox.add(session, registered(index), sequence=1)).id for index in range(count)]


async def unpublished(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        query = select(func.count()).select_from(TABLES.outbox).where(TABLES.outbox.c.published_at.is_(None))
        return int(await connection.scalar(query) or 0)
