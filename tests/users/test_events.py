"""users publishes account events through its outbox, in the same transaction as the change."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import TYPE_CHECKING

import msgspec
import nats
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from devtools.stack.servers import free_port
from shared.events.consumer import EventConsumer, EventContext, EventHandlers
from shared.events.contracts import UserDeactivated, UserRegistered, UserUpdated, decode_event
from shared.events.streams import ConsumerSpec
from shared.worker import Worker
from tests.users.helpers import PASSWORD, bearer, outbox_events, register, signed_in
from users.models import OUTBOX
from users.worker import worker_plan

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx
    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer
    from users.settings import UsersSettings


async def test_registration_writes_its_event_and_a_refused_one_writes_none(
    client: httpx.AsyncClient, users_database: str
) -> None:
    account = await register(client, "new@example.com")
    duplicate = await client.post(
        "/auth/register", json={"email": "NEW@example.com", "password": PASSWORD, "display_name": "Again"}
    )
    assert duplicate.status_code == 409
    events = await outbox_events(users_database)
    assert events == [
        (
            "users.user.registered",
            UserRegistered(user_id=uuid.UUID(account["id"]), email="new@example.com", display_name="Ada", role="user"),
            1,
        )
    ]


async def test_profile_change_and_deactivation_write_events_with_rising_sequence(
    client: httpx.AsyncClient, users_database: str
) -> None:
    tokens = await signed_in(client, "seq@example.com")
    renamed = await client.patch("/users/me", json={"display_name": "Renamed"}, headers=bearer(tokens))
    assert renamed.status_code == 200, renamed.text
    assert (await client.delete("/users/me", headers=bearer(tokens))).status_code == 204
    events = await outbox_events(users_database)
    assert [(kind, sequence) for kind, _, sequence in events] == [
        ("users.user.registered", 1),
        ("users.user.updated", 2),
        ("users.user.deactivated", 3),
    ]
    assert isinstance(events[1][1], UserUpdated)
    assert events[1][1].display_name == "Renamed"
    assert isinstance(events[2][1], UserDeactivated)


async def test_failed_update_writes_no_event(client: httpx.AsyncClient, users_database: str) -> None:
    await register(client, "taken@example.com")
    tokens = await signed_in(client, "mover@example.com")
    response = await client.patch(
        "/users/me", json={"email": "taken@example.com", "current_password": PASSWORD}, headers=bearer(tokens)
    )
    assert response.status_code == 409
    assert [kind for kind, _, _ in await outbox_events(users_database)] == ["users.user.registered"] * 2


async def worker_settings(users_settings: UsersSettings, nats_server: NatsServer) -> UsersSettings:
    return msgspec.structs.replace(
        users_settings, nats_url=nats_server.url, worker_health_port=free_port(), outbox_poll_seconds=0.2
    )


async def running_worker(settings: UsersSettings) -> AsyncIterator[Worker]:
    worker = Worker(worker_plan(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await task


async def test_worker_publishes_registrations_and_reports_health(
    client: httpx.AsyncClient, users_settings: UsersSettings, nats_server: NatsServer, jetstream: JetStreamContext
) -> None:
    settings = await worker_settings(users_settings, nats_server)
    async for _worker in running_worker(settings):
        await register(client, "published@example.com")
        message = await _first_message(jetstream, "users.user.registered")
        assert decode_event(message).payload.email == "published@example.com"  # type: ignore[attr-defined]
        ready = await _http_get(settings.worker_health_port, "/health/ready")
        metrics = await _http_get(settings.worker_health_port, "/metrics")
    assert json.loads(ready.split("\r\n\r\n", 1)[1]) == {"status": "ok", "checks": {"database": "ok", "nats": "ok"}}
    assert 'relay_outbox_published_total{service="users"}' in metrics


async def test_one_trace_from_http_request_through_outbox_relay_and_consumer(
    client: httpx.AsyncClient, users_settings: UsersSettings, nats_server: NatsServer, jetstream: JetStreamContext
) -> None:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = await worker_settings(users_settings, nats_server)
    handled = asyncio.Event()
    handlers = EventHandlers()

    @handlers.on(UserRegistered)
    async def welcome(event: UserRegistered, context: EventContext) -> None:
        with trace.get_tracer("test").start_as_current_span("welcome handler"):
            handled.set()

    async for _worker in running_worker(settings):
        engine = create_async_engine(settings.database_url)
        consumer = EventConsumer(
            spec=ConsumerSpec("users", "trace-test", "USERS", ("users.user.registered",)),
            handlers=handlers,
            session_maker=async_sessionmaker(engine),
            js=jetstream,
            outbox=OUTBOX,
            fetch_timeout=0.2,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        try:
            await register(client, "traced@example.com")
            await asyncio.wait_for(handled.wait(), 15)
        finally:
            stop.set()
            await task
            await engine.dispose()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    exporter.shutdown()
    server = spans["POST /auth/register"]
    producer = spans["send users.user.registered"]
    consumer_span = spans["process users.user.registered"]
    handler = spans["welcome handler"]
    assert server.context is not None
    assert producer.context is not None
    assert consumer_span.context is not None
    trace_id = server.context.trace_id
    assert {producer.context.trace_id, consumer_span.context.trace_id, handler.context.trace_id} == {trace_id}
    assert producer.kind == trace.SpanKind.PRODUCER
    assert consumer_span.kind == trace.SpanKind.CONSUMER
    assert consumer_span.parent is not None
    assert consumer_span.parent.span_id == producer.context.span_id
    assert producer.attributes is not None
    assert producer.attributes["messaging.system"] == "nats"
    assert consumer_span.attributes is not None
    assert consumer_span.attributes["messaging.destination.name"] == "users.user.registered"


async def _first_message(js: JetStreamContext, subject: str) -> bytes:
    for _ in range(100):
        try:
            message = await js.get_last_msg("USERS", subject)
        except nats.js.errors.NotFoundError:
            await asyncio.sleep(0.1)
            continue
        return message.data or b""
    raise AssertionError(f"nothing published on {subject}")


async def _http_get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: worker\r\n\r\n".encode())
    await writer.drain()
    answer = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    return answer
