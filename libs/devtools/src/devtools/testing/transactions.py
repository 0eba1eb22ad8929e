"""Checks that every call of a service is one unit of work (``shared.db.unit_of_work``).

A service method called from a route owns its transaction: its writes are committed when it
returns, also after reads on the same session (SQLAlchemy begins a transaction at a read's first
statement, and ``unit_of_work`` joins a transaction that is already open), and it leaves no
transaction open behind it. Called inside a transaction its caller holds (a consumer's), it joins
that transaction and commits nothing of its own. A service's tests classify every public method
as a read or a write (``public_calls`` finds them) and run these checks over each.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    Call = Callable[[AsyncSession], Awaitable[object]]
    """One call of a service, on the session it is given."""
    Snapshot = Callable[[], Awaitable[object]]
    """What another connection sees of the service's tables (comparable with ``==``)."""

__all__ = (
    "assert_committed_after_reads",
    "assert_joins_callers_transaction",
    "assert_leaves_no_transaction",
    "public_calls",
)


def public_calls(*services: type) -> set[str]:
    """``Class.method`` for every public coroutine method of ``services``.

    A test compares this with the calls it classified, so a new method cannot go unchecked.
    """
    return {
        f"{service.__name__}.{name}"
        for service in services
        for name, _ in inspect.getmembers(service, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }


async def assert_leaves_no_transaction(sessions: async_sessionmaker[AsyncSession], call: Call) -> None:
    """After ``call`` returns, its session holds no transaction (none was left autobegun).

    Raises:
        AssertionError: A transaction is still open.
    """
    async with sessions() as session:
        await call(session)
        if session.in_transaction():
            raise AssertionError("the call left a transaction open: a later write would join it and be lost")


async def assert_committed_after_reads(
    sessions: async_sessionmaker[AsyncSession], write: Call, *, reads: Iterable[Call], stored: Snapshot
) -> None:
    """``write``, made after ``reads`` on the same session, is seen from another connection on return.

    Raises:
        AssertionError: Another connection sees nothing of it (the session is still open: only a
            commit could show it).
    """
    before = await stored()
    async with sessions() as session:
        for read in reads:
            await read(session)
        await write(session)
        if await stored() == before:
            raise AssertionError("the write returned uncommitted after reads on its session")


async def assert_joins_callers_transaction(
    sessions: async_sessionmaker[AsyncSession], write: Call, *, stored: Snapshot
) -> None:
    """``write`` inside a transaction its caller began commits nothing and goes with that rollback.

    Raises:
        AssertionError: The write ended the caller's transaction or outlived its rollback.
    """
    before = await stored()
    async with sessions() as session:
        outer = await session.begin()  # what a consumer holds around its handlers
        await write(session)
        if not session.in_transaction():
            raise AssertionError("the write ended its caller's transaction")
        await outer.rollback()
    if await stored() != before:
        raise AssertionError("the write outlived its caller's rollback: it committed on its own")
