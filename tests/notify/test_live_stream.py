"""Live push over Server-Sent Events, with the API served by granian as in production.

httpx's in-process ASGI transport hands over a response only once it is complete, and a stream
never completes: so these tests start ``notify api`` processes on loopback ports, two of them, and
read their streams over real HTTP while the worker runs in the test.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from devtools.testing import eventually
from notify.models import Notification
from shared.events.contracts import OrderDelivered, OrderPaid, OrderShipped
from tests.notify.helpers import HEARTBEAT_SECONDS, at_least, bearer, known_user, open_stream, placed, running_apis

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine

    from shared.auth import AccessTokenSigner
    from tests.notify.helpers import ApiProcess, Publisher, RunningWorker

    TwoApis = tuple[ApiProcess, ApiProcess]


@dataclass(frozen=True)
class Reader:
    """A user notify knows, with the headers of their signed-in requests."""

    id: uuid.UUID
    headers: dict[str, str]


@pytest.fixture
async def reader(engine: AsyncEngine, access_token_signer: AccessTokenSigner) -> Reader:
    user_id = await known_user(engine)
    return Reader(user_id, bearer(access_token_signer, user_id))


@pytest.fixture(scope="module")
def apis(notify_api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoApis]:
    """Two API processes of the same service, as two replicas behind a load balancer would be."""
    with running_apis(notify_api_env, tmp_path_factory.mktemp("notify-api"), count=2) as (first, second):
        yield first, second


async def test_a_new_notification_is_pushed_to_open_streams_on_both_instances(
    apis: TwoApis, worker: RunningWorker, publisher: Publisher, reader: Reader
) -> None:
    # Both streams are open before the event and resume nothing: only the live push can bring it.
    first, second = apis
    async with open_stream(first.url, reader.headers) as on_first, open_stream(second.url, reader.headers) as on_second:
        await publisher.publish(placed(reader.id))
        got_first, got_second = await asyncio.gather(on_first.next_notification(), on_second.next_notification())

    assert got_first.id == got_second.id
    assert got_first.json() == got_second.json()
    notification = got_first.json()
    assert notification["kind"] == "order_placed"
    assert notification["read_at"] is None
    assert uuid.UUID(notification["id"]) == uuid.UUID(got_first.id or "")


async def test_a_client_coming_back_with_last_event_id_first_gets_what_it_missed(
    apis: TwoApis, worker: RunningWorker, publisher: Publisher, engine: AsyncEngine, reader: Reader
) -> None:
    first, second = apis
    user_id = reader.id
    order = placed(user_id)
    async with open_stream(first.url, reader.headers) as stream:
        await publisher.publish(order)
        seen = await stream.next_notification()

    # Offline: two more happen.
    await publisher.publish(OrderPaid(order_id=order.order_id, user_id=user_id, total=order.total, currency="EUR"))
    await publisher.publish(OrderShipped(order_id=order.order_id, user_id=user_id))
    await eventually(lambda: at_least(engine, Notification, 3), what="three notifications stored")

    async with open_stream(second.url, reader.headers, last_event_id=seen.id) as resumed:
        missed = [await resumed.next_notification(), await resumed.next_notification()]
        await publisher.publish(OrderDelivered(order_id=order.order_id, user_id=user_id))
        live = await resumed.next_notification()

    assert [event.json()["kind"] for event in missed] == ["order_paid", "order_shipped"]
    assert live.json()["kind"] == "order_delivered"
    ids = [seen.id, *(event.id for event in missed), live.id]
    assert ids == sorted(ids, key=lambda value: uuid.UUID(value or ""))
    assert len(set(ids)) == 4


async def test_an_idle_stream_gets_heartbeat_comments(
    apis: TwoApis, engine: AsyncEngine, access_token_signer: AccessTokenSigner
) -> None:
    async with open_stream(apis[0].url, bearer(access_token_signer, uuid.uuid4())) as stream:
        beats = [await stream.next(within=HEARTBEAT_SECONDS * 20) for _ in range(2)]
    assert [beat.comments if beat else None for beat in beats] == [["heartbeat"], ["heartbeat"]]


async def test_a_stream_carries_only_its_own_users_notifications(
    apis: TwoApis,
    worker: RunningWorker,
    publisher: Publisher,
    engine: AsyncEngine,
    access_token_signer: AccessTokenSigner,
) -> None:
    alice, bob = await known_user(engine), await known_user(engine)
    async with open_stream(apis[0].url, bearer(access_token_signer, bob)) as bobs:
        await publisher.publish(placed(alice))
        await eventually(lambda: at_least(engine, Notification, 1), what="alice's notification stored")
        await publisher.publish(placed(bob))
        received = await bobs.next_notification()
    rows = await _notification_ids_by_user(engine)
    assert uuid.UUID(received.id or "") == rows[bob]
    assert rows[alice] != rows[bob]


async def test_stopping_the_api_ends_open_streams_cleanly(
    notify_api_env: dict[str, str], access_token_signer: AccessTokenSigner, tmp_path: Path
) -> None:
    with running_apis(notify_api_env, tmp_path, count=1) as (api,):
        async with open_stream(api.url, bearer(access_token_signer, uuid.uuid4())) as stream:
            assert api.process is not None
            api.process.send_signal(signal.SIGTERM)
            rest = await stream.until_end(within=30)
        exit_code = await asyncio.to_thread(api.process.wait, 15)
    assert ["server shutting down; reconnect"] in [block.comments for block in rest]
    assert exit_code == 0
    assert "refused to gracefully stop" not in api.log.read_text()


async def _notification_ids_by_user(engine: AsyncEngine) -> dict[uuid.UUID, uuid.UUID]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(Notification.user_id, Notification.id))
        return {row.user_id: row.id for row in rows}
