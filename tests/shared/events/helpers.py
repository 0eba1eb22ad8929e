from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from shared.events.contracts import UserRegistered
from tests.shared.events.conftest import TABLES

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from shared.events.outbox import Outbox


def registered(index: int = 0) -> UserRegistered:
    return UserRegistered(user_id=uuid.uuid4(), email=f"user{index}@example.com", display_name="U", role="user")


async def add_events(sessions: async_sessionmaker[AsyncSession], outbox: Outbox, count: int) -> list[str]:
    async with sessions() as session, session.begin():
        return [(await outbox.add(session, registered(index), sequence=1)).id for index in range(count)]


async def unpublished(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        query = select(func.count()).select_from(TABLES.outbox).where(TABLES.outbox.c.published_at.is_(None))
        return int(await connection.scalar(query) or 0)
