"""Every call of ``NotificationService`` is one unit of work: its writes are committed when it returns
(another connection sees them), also after a read on the same session; inside a transaction the
caller already holds, it joins that transaction and commits nothing of its own."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from devtools.testing.transactions import (
    assert_committed_after_reads,
    assert_joins_callers_transaction,
    assert_leaves_no_transaction,
    public_calls,
)
from notify.events import order_notification_handlers
from notify.models import Notification, Preference
from notify.schemas import ChannelChoice, Preferences
from notify.service import NotificationService
from shared.errors import NotFound
from shared.pagination import PageRequest
from tests.notify.helpers import apply_directly, placed, queue_welcome

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from notify.events import NotificationPipeline
    from notify.tokens import UnsubscribeLinks


@dataclass(frozen=True)
class Reader:
    """A user with two unread notifications (a welcome, an order placed) and no preferences yet."""

    user_id: uuid.UUID
    oldest: uuid.UUID
    links: UnsubscribeLinks
    engine: AsyncEngine

    def service(self, session: AsyncSession) -> NotificationService:
        return NotificationService(session=session, links=self.links)

    async def stored(self) -> tuple[list[Any], list[Any]]:
        """What another connection sees of the user: which notifications are read, and their preferences."""
        async with self.engine.connect() as connection:
            read = await connection.execute(
                select(Notification.id, Notification.read_at.is_not(None))
                .where(Notification.user_id == self.user_id)
                .order_by(Notification.id)
            )
            chosen = await connection.execute(
                select(Preference.kind, Preference.in_app, Preference.email)
                .where(Preference.user_id == self.user_id)
                .order_by(Preference.kind)
            )
            return [tuple(row) for row in read], [tuple(row) for row in chosen]


if TYPE_CHECKING:
    Call = Callable[[NotificationService, Reader], Awaitable[Any]]

READS: dict[str, Call] = {
    "page": lambda service, reader: service.page(
        reader.user_id, unread_only=False, request=PageRequest(limit=20, offset=0)
    ),
    "preferences": lambda service, reader: service.preferences(reader.user_id),
}
WRITES: dict[str, Call] = {
    "mark_read": lambda service, reader: service.mark_read(reader.user_id, reader.oldest),
    "mark_all_read": lambda service, reader: service.mark_all_read(reader.user_id),
    "replace_preferences": lambda service, reader: service.replace_preferences(
        reader.user_id, Preferences(order_paid=ChannelChoice(in_app=False))
    ),
    "unsubscribe": lambda service, reader: service.unsubscribe(reader.links.token(reader.user_id, "welcome")),
}


@pytest.fixture
async def reader(
    pipeline: NotificationPipeline, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> Reader:
    user_id = await queue_welcome(pipeline, sessions)
    await apply_directly(sessions, order_notification_handlers(pipeline), placed(user_id))
    async with sessions() as session:
        oldest = await session.scalar(
            select(Notification.id).where(Notification.user_id == user_id).order_by(Notification.id).limit(1)
        )
    assert oldest is not None
    return Reader(user_id=user_id, oldest=oldest, links=pipeline.links, engine=engine)


@pytest.fixture(params=sorted(WRITES))
def write(request: pytest.FixtureRequest) -> Call:
    """Each write of the service in turn."""
    return WRITES[request.param]


def on(reader: Reader, call: Call) -> Callable[[AsyncSession], Awaitable[Any]]:
    """``call`` as the kit runs it: on the session it is given."""
    return lambda session: call(reader.service(session), reader)


def test_every_call_of_the_service_is_walked_here() -> None:
    """A new method must be added to READS or WRITES, so these tests cover it too."""
    assert public_calls(NotificationService) == {f"NotificationService.{name}" for name in READS | WRITES}


@pytest.mark.parametrize("name", sorted(READS | WRITES))
async def test_a_call_leaves_no_transaction_open_behind_it(
    name: str, reader: Reader, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await assert_leaves_no_transaction(sessions, on(reader, (READS | WRITES)[name]))


async def test_a_write_is_committed_when_it_returns_even_after_reads_on_the_same_session(
    write: Call, reader: Reader, sessions: async_sessionmaker[AsyncSession]
) -> None:
    reads = [on(reader, read) for read in READS.values()]
    await assert_committed_after_reads(sessions, on(reader, write), reads=reads, stored=reader.stored)


async def test_a_write_inside_the_callers_transaction_joins_it_and_goes_with_its_rollback(
    write: Call, reader: Reader, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await assert_joins_callers_transaction(sessions, on(reader, write), stored=reader.stored)


async def test_a_failed_write_leaves_nothing_open_and_the_next_call_still_commits(
    reader: Reader, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as session:
        with pytest.raises(NotFound):
            await reader.service(session).mark_read(reader.user_id, uuid.uuid4())
        assert not session.in_transaction()
        await reader.service(session).mark_all_read(reader.user_id)
    read, _ = await reader.stored()
    assert [was_read for _, was_read in read] == [True, True]
