from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from devtools.testing import eventually
from shared.events.contracts import decode_event, encode_event
from shared.events.outbox import Outbox, OutboxRelay
from shared.events.streams import ensure_streams
from tests.shared.events.helpers import TABLES, add_events, registered, unpublished

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from devtools.stack.servers import NatsServer, PostgresServer


def relay_for(engine: AsyncEngine, js: JetStreamContext, **options: object) -> OutboxRelay:
    return OutboxRelay(engine=engine, tables=TABLES, js=js, service="users", poll_interval=0.5, **options)  # type: ignore[arg-type]


async def stream_messages(js: JetStreamContext, stream: str = "USERS") -> int:
    return int((await js.stream_info(stream)).state.messages)


async def test_event_commits_with_its_change_and_vanishes_with_a_rollback(
    lab_sessions: async_sessionmaker[AsyncSession], lab_outbox: Outbox, lab_engine: AsyncEngine
) -> None:
    async with lab_sessions() as session, session.begin():
        await lab_outbox.add(session, registered(), sequence=1)
    async with lab_sessions() as session:
        await lab_outbox.add(session, registered(), sequence=1)
        await session.rollback()  # the change failed
    assert await unpublished(lab_engine) == 1


async def test_an_event_added_first_or_after_other_statements_is_stored_alike(
    lab_sessions: async_sessionmaker[AsyncSession], lab_outbox: Outbox, lab_engine: AsyncEngine
) -> None:
    # The transaction's first statement goes through the session (it sends BEGIN); a later one on
    # the transaction's own asyncpg connection. Both rows must read the same, trace context included.
    caller = trace.SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True, trace_flags=trace.TraceFlags(1))
    token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(caller)))
    try:
        async with lab_sessions() as session, session.begin():
            first = await lab_outbox.add(session, registered(1), sequence=1)
            later = await lab_outbox.add(session, registered(2), sequence=1)
        async with lab_sessions() as session:
            await session.execute(text("SELECT 1"))
            await lab_outbox.add(session, registered(3), sequence=1)
            await session.rollback()  # the one sent on the connection goes with the transaction
    finally:
        otel_context.detach(token)
    outbox = TABLES.outbox
    async with lab_engine.connect() as connection:
        rows = {
            str(row.id): row
            for row in await connection.execute(select(outbox.c.id, outbox.c.subject, outbox.c.body, outbox.c.headers))
        }
    assert rows.keys() == {first.id, later.id}
    for envelope in (first, later):
        row = rows[envelope.id]
        assert row.subject == envelope.type
        assert row.body == encode_event(envelope)
        assert row.headers == {"traceparent": f"00-{0xABC:032x}-{0xDEF:016x}-01"}


async def test_relay_publishes_with_the_event_id_as_message_id(
    lab_sessions: async_sessionmaker[AsyncSession],
    lab_outbox: Outbox,
    lab_engine: AsyncEngine,
    jetstream: JetStreamContext,
) -> None:
    [event_id] = await add_events(lab_sessions, lab_outbox, 1)
    assert await relay_for(lab_engine, jetstream).relay_once() == (1, 0)
    message = await jetstream.get_msg("USERS", seq=1)
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == event_id
    assert decode_event(message.data or b"").envelope.id == event_id
    assert await unpublished(lab_engine) == 0


async def test_three_concurrent_relays_publish_each_event_once(
    lab_sessions: async_sessionmaker[AsyncSession],
    lab_outbox: Outbox,
    lab_engine: AsyncEngine,
    jetstream: JetStreamContext,
) -> None:
    for _ in range(6):
        await add_events(lab_sessions, lab_outbox, 50)
    stop = asyncio.Event()
    relays = [asyncio.create_task(relay_for(lab_engine, jetstream, batch_size=20).run(stop)) for _ in range(3)]
    try:
        await eventually(lambda: _outbox_empty(lab_engine), what="empty outbox")
    finally:
        stop.set()
        await asyncio.gather(*relays)
    assert await stream_messages(jetstream) == 300
    seen = set()
    for sequence in range(1, 301):
        message = await jetstream.get_msg("USERS", seq=sequence)
        seen.add(decode_event(message.data or b"").envelope.id)
    assert len(seen) == 300


async def test_relay_keeps_events_while_nats_is_down_and_delivers_all_after_restart(
    lab_sessions: async_sessionmaker[AsyncSession],
    lab_outbox: Outbox,
    lab_engine: AsyncEngine,
    jetstream: JetStreamContext,
    nats_server: NatsServer,
    nats_client: NatsClient,
) -> None:
    stop = asyncio.Event()
    relay = asyncio.create_task(relay_for(lab_engine, jetstream, publish_timeout=1.0).run(stop))
    try:
        await add_events(lab_sessions, lab_outbox, 40)
        await eventually(lambda: _outbox_empty(lab_engine), what="first batch published")
        nats_server.stop()
        for _ in range(4):
            await add_events(lab_sessions, lab_outbox, 25)
            await asyncio.sleep(0.3)
        assert await unpublished(lab_engine) > 0  # nothing could leave while NATS was down
        nats_server.start()
        await add_events(lab_sessions, lab_outbox, 20)
        await eventually(lambda: _outbox_empty(lab_engine), within=60, what="backlog drained after restart")
    finally:
        stop.set()
        await relay
    assert nats_client.is_connected
    assert await stream_messages(jetstream) == 160


async def test_failed_publish_is_recorded_and_retried(
    lab_sessions: async_sessionmaker[AsyncSession],
    lab_outbox: Outbox,
    lab_engine: AsyncEngine,
    jetstream: JetStreamContext,
) -> None:
    await add_events(lab_sessions, lab_outbox, 2)
    await jetstream.delete_stream("USERS")  # no stream takes users.> any more
    recreated = asyncio.Event()

    async def recreate() -> None:
        await ensure_streams(jetstream, duplicate_window_seconds=120, max_age_seconds=3600)
        recreated.set()

    relay = relay_for(lab_engine, jetstream, publish_timeout=1.0, on_missing_stream=recreate)
    assert await relay.relay_once() == (0, 2)
    assert recreated.is_set()
    async with lab_engine.connect() as connection:
        attempts = await connection.scalar(select(func.min(TABLES.outbox.c.attempts)))
    assert attempts == 1
    assert await relay.relay_once() == (2, 0)
    assert await stream_messages(jetstream) == 2


async def test_status_reports_backlog_and_prunes_old_published_rows(
    lab_sessions: async_sessionmaker[AsyncSession],
    lab_outbox: Outbox,
    lab_engine: AsyncEngine,
    jetstream: JetStreamContext,
) -> None:
    await add_events(lab_sessions, lab_outbox, 3)
    relay = relay_for(lab_engine, jetstream, batch_size=2, retention_seconds=0)
    assert (await relay.status()).backlog == 3
    await relay.relay_once()
    status = await relay.status()
    assert status.backlog == 1
    assert status.oldest_age_seconds >= 0
    await relay.housekeeping()  # retention 0: every published row goes
    async with lab_engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(TABLES.outbox)) == 1


async def _outbox_empty(engine: AsyncEngine) -> bool:
    return await unpublished(engine) == 0


async def test_relay_survives_a_postgres_restart(
    lab_database_url: str,
    lab_outbox: Outbox,
    jetstream: JetStreamContext,
    postgres_server: PostgresServer,
) -> None:
    engine = create_async_engine(lab_database_url, pool_pre_ping=True)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    stop = asyncio.Event()
    relay = asyncio.create_task(relay_for(engine, jetstream).run(stop))
    try:
        await add_events(sessions, lab_outbox, 10)
        await eventually(lambda: _outbox_empty(engine), what="published before the restart")
        postgres_server.restart()
        await add_events(sessions, lab_outbox, 10)
        await eventually(lambda: _outbox_empty(engine), within=30, what="published after the restart")
    finally:
        stop.set()
        await relay
        await engine.dispose()
    assert await stream_messages(jetstream) == 20


async def test_a_committed_event_wakes_the_relay_at_once_and_a_rolled_back_one_never_leaves(
    lab_sessions: async_sessionmaker[AsyncSession],
    lab_outbox: Outbox,
    lab_engine: AsyncEngine,
    jetstream: JetStreamContext,
) -> None:
    # A poll far beyond the test's life: only the NOTIFY sent with the outbox row can wake the relay.
    relay = OutboxRelay(engine=lab_engine, tables=TABLES, js=jetstream, service="users", poll_interval=3600.0)

    async def listening() -> bool:
        async with lab_engine.connect() as connection:
            query = "SELECT count(*) FROM pg_stat_activity WHERE query = :listen"
            found = await connection.scalar(text(query), {"listen": f'LISTEN "{TABLES.notify_channel}"'})
        return bool(found)

    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(listening, what="the relay's LISTEN connection")
        await asyncio.sleep(0.2)  # its first wake-up (for events committed before it listened) is spent
        async with lab_sessions() as session:
            await lab_outbox.add(session, registered(1), sequence=1)
            await session.rollback()
        [event_id] = await add_events(lab_sessions, lab_outbox, 1)
        await eventually(lambda: _published(jetstream, 1), what="the committed event published")
    finally:
        stop.set()
        await task
    message = await jetstream.get_msg("USERS", seq=1)
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == event_id
    assert await stream_messages(jetstream) == 1
    assert await unpublished(lab_engine) == 0


async def _published(js: JetStreamContext, count: int) -> bool:
    return await stream_messages(js) >= count
