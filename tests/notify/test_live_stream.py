"""Live push over Server-Sent Events, with the API served by granian as in production.

httpx's in-process ASGI transport hands over a response only once it is complete, and a stream
never completes: so these tests start ``notify api`` processes on loopback ports, two of them, and
read their streams over real HTTP while the worker runs in the test.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import insert, select

from devtools.stack.servers import die_with_parent, free_port, stop_process
from devtools.testing import eventually
from notify.models import Contact, Notification
from shared.events.contracts import OrderDelivered, OrderPaid, OrderShipped
from tests.notify.conftest import UNSUBSCRIBE_SECRET, Publisher, RunningWorker, bearer, count, placed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from devtools.stack.servers import NatsServer
    from shared.auth import AccessTokenSigner

HEARTBEAT_SECONDS = 0.5


class ApiProcess:
    """``notify api`` (granian, one worker) on a free loopback port, configured by ``NOTIFY_*`` variables."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = env | {"NOTIFY_HTTP_PORT": str(self.port)}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "notify"), "api"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"notify api exited with {self.process.returncode}: {self.log.read_text()}")
            with suppress(OSError), urllib.request.urlopen(f"{self.url}/health/ready", timeout=1) as response:
                if json.load(response)["status"] == "ok":
                    return
            time.sleep(0.1)
        raise TimeoutError(f"notify api not ready in {timeout}s: {self.log.read_text()}")

    def stop(self) -> None:
        stop_process(self.process, 30)


def api_environment(database_url: str, nats_url: str, signer: AccessTokenSigner) -> dict[str, str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFY_")}
    return base | {
        "NOTIFY_DATABASE_URL": database_url,
        "NOTIFY_NATS_URL": nats_url,
        "NOTIFY_JWT_PUBLIC_KEYS": signer.public_key_pem(),
        "NOTIFY_UNSUBSCRIBE_SECRET": UNSUBSCRIBE_SECRET,
        "NOTIFY_STREAM_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "NOTIFY_LOG_JSON": "false",
    }


@pytest.fixture(scope="module")
def apis(
    notify_database_url: str,
    nats_server: NatsServer,
    access_token_signer: AccessTokenSigner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ApiProcess, ApiProcess]]:
    """Two API processes of the same service, as two replicas behind a load balancer would be."""
    env = api_environment(notify_database_url, nats_server.url, access_token_signer)
    logs = tmp_path_factory.mktemp("notify-api")
    first, second = ApiProcess(env, logs / "first.log"), ApiProcess(env, logs / "second.log")
    try:
        first.start()
        second.start()
        first.wait_ready()
        second.wait_ready()
        yield first, second
    finally:
        first.stop()
        second.stop()


@dataclass
class ServerEvent:
    """One block of a Server-Sent Events stream."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    received_at: float = 0.0

    def json(self) -> Any:
        return json.loads("\n".join(self.data))


class EventStream:
    """Reads a text/event-stream response block by block."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, within: float = 10.0) -> ServerEvent | None:
        """The next block, or None when the server ended the stream."""
        return await asyncio.wait_for(self._read_block(), within)

    async def next_notification(self, within: float = 10.0) -> ServerEvent:
        """The next ``notification`` event, skipping comments (heartbeats)."""
        deadline = time.monotonic() + within
        while True:
            block = await self.next(max(deadline - time.monotonic(), 0.01))
            assert block is not None, "the stream ended"
            if block.event == "notification":
                return block

    async def _read_block(self) -> ServerEvent | None:
        block = ServerEvent()
        seen = False
        async for line in self._lines:
            if line == "":
                if seen:
                    block.received_at = time.time()
                    return block
                continue
            seen = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                block.comments.append(value)
            elif name == "data":
                block.data.append(value)
            elif name == "id":
                block.id = value
            elif name == "event":
                block.event = value
        return None


@asynccontextmanager
async def open_stream(
    base_url: str, headers: dict[str, str], *, last_event_id: str | None = None
) -> AsyncIterator[EventStream]:
    """A connected stream: its first block (the ``connected`` comment) has been read."""
    if last_event_id is not None:
        headers = headers | {"Last-Event-ID": last_event_id}
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10.0)) as client,
        client.stream("GET", "/notifications/stream", headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = EventStream(response)
        first = await stream.next()
        assert first is not None
        assert first.comments == ["connected"]
        yield stream


async def known_user(engine: AsyncEngine) -> uuid.UUID:
    """A user notify already knows (straight into the replica: no welcome to get in the way)."""
    user_id = uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            insert(Contact).values(
                user_id=user_id, email=f"{user_id.hex[:8]}@example.com", display_name="Lin", sequence=1
            )
        )
    return user_id


def created_at(event: ServerEvent) -> float:
    return datetime.datetime.fromisoformat(event.json()["created_at"]).timestamp()


async def test_a_new_notification_reaches_streams_on_both_instances_within_a_second(
    apis: tuple[ApiProcess, ApiProcess],
    worker: RunningWorker,
    publisher: Publisher,
    engine: AsyncEngine,
    access_token_signer: AccessTokenSigner,
) -> None:
    first, second = apis
    user_id = await known_user(engine)
    headers = bearer(access_token_signer, user_id)
    async with open_stream(first.url, headers) as on_first, open_stream(second.url, headers) as on_second:
        await publisher.publish(placed(user_id))
        got_first, got_second = await asyncio.gather(on_first.next_notification(), on_second.next_notification())

    assert got_first.id == got_second.id
    assert got_first.json() == got_second.json()
    notification = got_first.json()
    assert notification["kind"] == "order_placed"
    assert notification["read_at"] is None
    assert uuid.UUID(notification["id"]) == uuid.UUID(got_first.id or "")
    for received in (got_first, got_second):
        assert received.received_at - created_at(received) < 1.0  # stored to on screen, across processes


async def test_a_client_coming_back_with_last_event_id_first_gets_what_it_missed(
    apis: tuple[ApiProcess, ApiProcess],
    worker: RunningWorker,
    publisher: Publisher,
    engine: AsyncEngine,
    access_token_signer: AccessTokenSigner,
) -> None:
    first, second = apis
    user_id = await known_user(engine)
    headers = bearer(access_token_signer, user_id)
    order = placed(user_id)
    async with open_stream(first.url, headers) as stream:
        await publisher.publish(order)
        seen = await stream.next_notification()

    # Offline: two more happen.
    await publisher.publish(OrderPaid(order_id=order.order_id, user_id=user_id, total=order.total, currency="EUR"))
    await publisher.publish(OrderShipped(order_id=order.order_id, user_id=user_id))
    await eventually(lambda: _stored(engine, 3), what="three notifications stored")

    async with open_stream(second.url, headers, last_event_id=seen.id) as resumed:
        missed = [await resumed.next_notification(), await resumed.next_notification()]
        await publisher.publish(OrderDelivered(order_id=order.order_id, user_id=user_id))
        live = await resumed.next_notification()

    assert [event.json()["kind"] for event in missed] == ["order_paid", "order_shipped"]
    assert live.json()["kind"] == "order_delivered"
    ids = [seen.id, *(event.id for event in missed), live.id]
    assert ids == sorted(ids, key=lambda value: uuid.UUID(value or ""))
    assert len(set(ids)) == 4


async def test_an_idle_stream_gets_heartbeat_comments(
    apis: tuple[ApiProcess, ApiProcess], engine: AsyncEngine, access_token_signer: AccessTokenSigner
) -> None:
    async with open_stream(apis[0].url, bearer(access_token_signer, uuid.uuid4())) as stream:
        beats = [await stream.next(within=HEARTBEAT_SECONDS * 20) for _ in range(2)]
    assert [beat.comments if beat else None for beat in beats] == [["heartbeat"], ["heartbeat"]]


async def test_a_stream_carries_only_its_own_users_notifications(
    apis: tuple[ApiProcess, ApiProcess],
    worker: RunningWorker,
    publisher: Publisher,
    engine: AsyncEngine,
    access_token_signer: AccessTokenSigner,
) -> None:
    alice, bob = await known_user(engine), await known_user(engine)
    async with open_stream(apis[0].url, bearer(access_token_signer, bob)) as bobs:
        await publisher.publish(placed(alice))
        await eventually(lambda: _stored(engine, 1), what="alice's notification stored")
        await publisher.publish(placed(bob))
        received = await bobs.next_notification()
    rows = await _notification_ids_by_user(engine)
    assert uuid.UUID(received.id or "") == rows[bob]
    assert rows[alice] != rows[bob]


async def test_stopping_the_api_ends_open_streams_cleanly(
    notify_database_url: str,
    nats_server: NatsServer,
    access_token_signer: AccessTokenSigner,
    tmp_path: Path,
) -> None:
    api = ApiProcess(api_environment(notify_database_url, nats_server.url, access_token_signer), tmp_path / "api.log")
    api.start()
    try:
        api.wait_ready()
        async with open_stream(api.url, bearer(access_token_signer, uuid.uuid4())) as stream:
            assert api.process is not None
            api.process.send_signal(signal.SIGTERM)
            rest = []
            while (block := await stream.next(within=15)) is not None:
                rest.append(block)
        exit_code = await asyncio.to_thread(api.process.wait, 15)
    finally:
        api.stop()
    assert ["server shutting down; reconnect"] in [block.comments for block in rest]
    assert exit_code == 0
    assert "refused to gracefully stop" not in api.log.read_text()


async def _stored(engine: AsyncEngine, expected: int) -> bool:
    return await count(engine, Notification) >= expected


async def _notification_ids_by_user(engine: AsyncEngine) -> dict[uuid.UUID, uuid.UUID]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(Notification.user_id, Notification.id))
        return {row.user_id: row.id for row in rows}
