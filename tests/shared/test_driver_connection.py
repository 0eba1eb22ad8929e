"""shared.db.driver_connection and begun_driver_connection: prebuilt SQL on an asyncpg connection.

driver_connection, for reads: outside a transaction it takes one from the engine's pool, begins
nothing (one round trip per read) and leaves the session as it found it; inside the caller's
transaction, or for a session bound to a connection, it reads on that connection and sees what was
written there; a connection found dead is thrown out of the pool, so the next read gets a live one.

With a ReadPool (the API's, handed over by RequestSessions), a read outside a transaction goes to
that pool instead: the engine's pool is not touched, a read inside a transaction still runs on the
transaction's connection, the pool connects as the engine does, and dead connections cost one
failed read, not one per pooled connection.

begun_driver_connection, for writes: none until the session's transaction has begun in Postgres
(a statement sent before it would run outside any transaction); after that, the transaction's own
connection, whose statements commit and roll back with the session's and run after its pending
ORM changes.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import asyncpg
import pytest
from sqlalchemy import Integer, bindparam, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from devtools.testing import prepare_service_database
from orders.app import DATABASE
from orders.models import KnownUser
from shared.db import (
    DriverStatement,
    ReadPool,
    RequestSessions,
    begun_driver_connection,
    driver_connection,
    is_database_unavailable,
    unit_of_work,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from devtools.stack.servers import PostgresServer


@pytest.fixture(scope="module")
def database_url(postgres_server: PostgresServer) -> str:
    return prepare_service_database(postgres_server, DATABASE)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    # one pooled connection: every session below gets the same one back, unless it was thrown out
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
    yield engine
    await engine.dispose()


async def test_a_read_outside_a_transaction_begins_none_and_leaves_none(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        async with driver_connection(session) as connection:
            assert await connection.fetchval("SELECT 41 + $1::int", 1) == 42
            assert not connection.is_in_transaction()  # no BEGIN was sent for the read
        assert not session.in_transaction()
        # the session still works the ordinary way afterwards, and commits its own write
        async with unit_of_work(session):
            await session.execute(text("CREATE TEMPORARY TABLE seen (n int)"))
            async with driver_connection(session) as connection:
                assert connection.is_in_transaction()


async def test_a_read_inside_the_callers_transaction_sees_its_uncommitted_writes(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        async with unit_of_work(session):
            await session.execute(text("CREATE TEMPORARY TABLE note (n int) ON COMMIT DROP"))
            await session.execute(text("INSERT INTO note VALUES (7)"))
            async with driver_connection(session) as connection:
                assert await connection.fetchval("SELECT n FROM note") == 7
            assert session.in_transaction()  # the caller's transaction goes on
        assert not session.in_transaction()


async def test_a_session_bound_to_a_connection_reads_on_that_connection(engine: AsyncEngine) -> None:
    async with engine.connect() as bound:
        await bound.execute(text("CREATE TEMPORARY TABLE kept (n int)"))
        await bound.execute(text("INSERT INTO kept VALUES (3)"))  # uncommitted: seen on this connection only
        async with AsyncSession(bind=bound) as session, driver_connection(session) as connection:
            assert await connection.fetchval("SELECT n FROM kept") == 3
        await bound.rollback()


async def test_a_dead_connection_is_thrown_out_of_the_pool(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session, driver_connection(session) as connection:
        backend = await connection.fetchval("SELECT pg_backend_pid()")
    async with AsyncSession(engine) as admin, driver_connection(admin) as connection:
        # the pool's one connection is this same backend: kill it from a separate one
        other = await connection.fetchval("SELECT pg_backend_pid()")
        assert other == backend
    terminator = create_async_engine(engine.url, poolclass=NullPool)
    async with terminator.connect() as killer:
        await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    await terminator.dispose()

    async with AsyncSession(engine) as session:
        with pytest.raises(Exception) as failure:  # noqa: PT011 - the driver's class varies; checked below
            async with driver_connection(session) as connection:
                await connection.fetchval("SELECT 1")
        assert is_database_unavailable(failure.value)
    async with AsyncSession(engine) as session, driver_connection(session) as connection:
        assert await connection.fetchval("SELECT pg_backend_pid()") != backend


async def test_no_begun_connection_before_the_transactions_first_statement(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        assert await begun_driver_connection(session) is None  # no transaction at all
        async with session.begin():
            # SQLAlchemy's transaction is open, but Postgres has seen no BEGIN: a lock taken on
            # the driver now would be released as its statement ends
            assert await begun_driver_connection(session) is None
            await session.execute(text("SELECT 1"))
            driver = await begun_driver_connection(session)
            assert driver is not None
            assert driver.is_in_transaction()


async def test_statements_on_the_begun_connection_commit_and_roll_back_with_the_session(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        await session.execute(text("CREATE TEMPORARY TABLE ledger (n int)"))
        await session.commit()
        for n, outcome in ((1, "commit"), (2, "rollback")):
            async with session.begin() as transaction:
                await session.execute(text("SELECT 1"))
                driver = await begun_driver_connection(session)
                assert driver is not None
                await driver.execute("INSERT INTO ledger VALUES ($1)", n)
                if outcome == "rollback":
                    await transaction.rollback()
        assert (await session.execute(text("SELECT array_agg(n) FROM ledger"))).scalar() == [1]
        await session.rollback()
        # a later transaction gets the connection it runs on, not one remembered from before
        async with session.begin():
            await session.execute(text("SELECT 1"))
            driver = await begun_driver_connection(session)
            assert driver is not None
            assert await driver.fetchval("SELECT count(*) FROM ledger") == 1


async def test_pending_orm_changes_are_flushed_before_a_statement_on_the_begun_connection(
    engine: AsyncEngine,
) -> None:
    user_id = uuid.uuid4()
    async with AsyncSession(engine) as session:
        await session.execute(text("SELECT 1"))
        session.add(KnownUser(user_id=user_id, is_active=True, sequence=0))
        driver = await begun_driver_connection(session)
        assert driver is not None
        assert await driver.fetchval("SELECT is_active FROM orders.known_user WHERE user_id = $1", user_id)
        await session.rollback()  # nothing of it stays


async def test_a_driver_statement_is_its_sqlalchemy_statement_on_the_begun_connection(engine: AsyncEngine) -> None:
    statement = select(literal("fixed").label("fixed"), bindparam("n", type_=Integer) + 1)
    on_driver = DriverStatement(statement)
    async with AsyncSession(engine) as session, session.begin():
        through_session = (await session.execute(statement, {"n": 41})).one()
        driver = await begun_driver_connection(session)
        assert driver is not None
        through_driver = await driver.fetchrow(on_driver.sql, *on_driver.arguments({"n": 41}))
    assert tuple(through_driver) == tuple(through_session) == ("fixed", 42)
    with pytest.raises(KeyError):  # a parameter left out is refused, not sent as NULL
        on_driver.arguments({})


@pytest.fixture
async def read_pool(engine: AsyncEngine) -> AsyncIterator[ReadPool]:
    reads = ReadPool(engine, size=3, application_name="driver-connection-reads")
    await reads.open()
    yield reads
    await reads.close()


def _session(engine: AsyncEngine, reads: ReadPool) -> AsyncSession:
    return RequestSessions(engine, reads).factory()


async def test_with_a_read_pool_a_read_outside_a_transaction_leaves_the_engines_pool_alone(
    engine: AsyncEngine, read_pool: ReadPool
) -> None:
    async with _session(engine, read_pool) as session:
        async with driver_connection(session) as connection:
            assert await connection.fetchval("SHOW application_name") == "driver-connection-reads"
            # the same role and database as the engine's connections, from the same URL
            assert await connection.fetchval("SELECT current_user || '@' || current_database()") == (
                f"{engine.url.username}@{engine.url.database}"
            )
            assert not connection.is_in_transaction()
        assert not session.in_transaction()
    assert engine.pool.checkedin() == engine.pool.checkedout() == 0  # type: ignore[attr-defined]  # QueuePool's own counters


async def test_with_a_read_pool_a_read_inside_a_transaction_stays_on_the_transactions_connection(
    engine: AsyncEngine, read_pool: ReadPool
) -> None:
    async with _session(engine, read_pool) as session, unit_of_work(session):
        await session.execute(text("CREATE TEMPORARY TABLE draft (n int) ON COMMIT DROP"))
        await session.execute(text("INSERT INTO draft VALUES (5)"))
        async with driver_connection(session) as connection:
            assert await connection.fetchval("SELECT n FROM draft") == 5
            assert await connection.fetchval("SHOW application_name") != "driver-connection-reads"


async def _fill(engine: AsyncEngine, reads: ReadPool, count: int) -> set[int]:
    """Hold ``count`` read connections at once, so the pool has made that many; their backends."""
    all_holding = asyncio.Barrier(count)

    async def hold_one() -> int:
        async with _session(engine, reads) as session, driver_connection(session) as connection:
            backend: int = await connection.fetchval("SELECT pg_backend_pid()")
            await all_holding.wait()  # none gives its connection back before every one has its own
            return backend

    return set(await asyncio.gather(*(hold_one() for _ in range(count))))


async def _read_backend(engine: AsyncEngine, reads: ReadPool) -> int | str:
    async with _session(engine, reads) as session:
        try:
            async with driver_connection(session) as connection:
                backend: int = await connection.fetchval("SELECT pg_backend_pid()")
                return backend
        except Exception as error:  # the driver's class varies: unavailability is what counts
            if not is_database_unavailable(error):
                raise
            return "unavailable"


async def test_dead_read_pool_connections_cost_at_most_one_failed_read(
    engine: AsyncEngine, read_pool: ReadPool
) -> None:
    backends = await _fill(engine, read_pool, 3)
    assert len(backends) == 3
    terminator = create_async_engine(engine.url, poolclass=NullPool)
    async with terminator.connect() as killer:
        await killer.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": "driver-connection-reads"},
        )
    await terminator.dispose()

    outcomes = [await _read_backend(engine, read_pool) for _ in range(6)]
    # asyncpg may have seen the connections close already (no failure at all); if not, the first
    # failure expires the rest: never a second failure, never a dead backend handed out again
    assert "unavailable" not in outcomes[1:], outcomes
    assert not backends & set(outcomes), outcomes


@pytest.mark.parametrize(
    ("failure", "replaced"),
    [
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (asyncpg.exceptions.UniqueViolationError("duplicate key value"), False),
        (ValueError("the caller's own mistake"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
async def test_a_connection_failure_replaces_every_pooled_read_connection_and_no_other_error_does(
    engine: AsyncEngine, read_pool: ReadPool, failure: Exception, *, replaced: bool
) -> None:
    backends = await _fill(engine, read_pool, 3)
    with pytest.raises(type(failure)):
        async with read_pool.connection():
            raise failure
    after = await _fill(engine, read_pool, 3)
    assert len(after) == 3
    # every connection made before the failure is replaced (they were all alive), or none is
    assert (not backends & after) if replaced else (after == backends)
