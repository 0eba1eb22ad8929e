"""The in-app API: a user pages through, and marks read, their own notifications and nobody else's."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from notify.events import order_notification_handlers, users_replica_handlers
from shared.events.contracts import OrderShipped
from tests.notify.helpers import apply_directly, bearer, placed, registered

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from notify.events import NotificationPipeline
    from shared.auth import AccessTokenSigner

    NotifiedUser = Callable[[int], Awaitable[dict[str, str]]]


@pytest.fixture
def notified_user(
    pipeline: NotificationPipeline, sessions: async_sessionmaker[AsyncSession], access_token_signer: AccessTokenSigner
) -> NotifiedUser:
    """Makes a user with a welcome and then ``orders`` order notifications (oldest first); gives their headers."""

    async def make(orders: int) -> dict[str, str]:
        user_id = uuid.uuid4()
        await apply_directly(sessions, users_replica_handlers(pipeline), registered(user_id))
        for _ in range(orders):
            await apply_directly(sessions, order_notification_handlers(pipeline), placed(user_id))
        return bearer(access_token_signer, user_id)

    return make


async def test_notifications_come_newest_first_in_pages_with_the_unread_count(
    client: httpx.AsyncClient, notified_user: NotifiedUser
) -> None:
    headers = await notified_user(4)

    first = (await client.get("/notifications", params={"limit": 3}, headers=headers)).json()
    second = (await client.get("/notifications", params={"limit": 3, "offset": 3}, headers=headers)).json()

    assert (first["total"], first["unread"], first["limit"], first["offset"]) == (5, 5, 3, 0)
    assert [item["kind"] for item in first["items"]] == ["order_placed"] * 3
    assert [item["kind"] for item in second["items"]] == ["order_placed", "welcome"]
    ids = [item["id"] for item in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True)
    assert all(item["read_at"] is None for item in first["items"])


async def test_marking_one_read_keeps_its_first_read_time_and_the_unread_filter_leaves_it_out(
    client: httpx.AsyncClient, notified_user: NotifiedUser
) -> None:
    headers = await notified_user(1)
    newest = (await client.get("/notifications", headers=headers)).json()["items"][0]

    read = await client.post(f"/notifications/{newest['id']}/read", headers=headers)
    again = await client.post(f"/notifications/{newest['id']}/read", headers=headers)
    unread = (await client.get("/notifications", params={"unread": "true"}, headers=headers)).json()

    assert read.status_code == 200, read.text
    assert read.json() == newest | {"read_at": read.json()["read_at"]}
    assert read.json()["read_at"] is not None
    assert again.status_code == 200, again.text
    assert again.json() == read.json()  # the first read time stays
    assert [item["kind"] for item in unread["items"]] == ["welcome"]
    assert (unread["total"], unread["unread"]) == (1, 1)


async def test_read_all_marks_every_unread_notification(client: httpx.AsyncClient, notified_user: NotifiedUser) -> None:
    headers = await notified_user(2)
    someone_else = await notified_user(1)

    marked = await client.post("/notifications/read-all", headers=headers)
    again = await client.post("/notifications/read-all", headers=headers)
    page = (await client.get("/notifications", headers=headers)).json()
    theirs = (await client.get("/notifications", headers=someone_else)).json()

    assert (marked.status_code, again.status_code) == (200, 200)
    assert (marked.json(), again.json()) == ({"marked": 3}, {"marked": 0})
    assert (page["total"], page["unread"]) == (3, 0)
    assert all(item["read_at"] is not None for item in page["items"])
    assert (theirs["total"], theirs["unread"]) == (2, 2)


async def test_another_users_notification_is_not_found(
    client: httpx.AsyncClient, notified_user: NotifiedUser, access_token_signer: AccessTokenSigner
) -> None:
    owner = await notified_user(1)
    theirs = (await client.get("/notifications", headers=owner)).json()["items"][0]
    intruder = bearer(access_token_signer, uuid.uuid4())

    response = await client.post(f"/notifications/{theirs['id']}/read", headers=intruder)
    unknown = await client.post(f"/notifications/{uuid.uuid4()}/read", headers=intruder)
    page = (await client.get("/notifications", headers=intruder)).json()

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == unknown.json() | {"instance": response.json()["instance"]}
    assert page == {"items": [], "total": 0, "unread": 0, "limit": 20, "offset": 0}
    owners_view = (await client.get("/notifications", headers=owner)).json()
    assert owners_view["unread"] == 2  # untouched by the intruder


async def test_the_api_needs_a_signed_in_user(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/notifications"),
        ("POST", "/notifications/read-all"),
        ("POST", f"/notifications/{uuid.uuid4()}/read"),
        ("GET", "/notifications/stream"),
        ("GET", "/notifications/preferences"),
        ("PUT", "/notifications/preferences"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_page_limits_are_validated_by_name(
    client: httpx.AsyncClient, access_token_signer: AccessTokenSigner
) -> None:
    headers = bearer(access_token_signer, uuid.uuid4())
    response = await client.get("/notifications", params={"limit": 0}, headers=headers)
    assert response.status_code == 400
    assert [error["field"] for error in response.json()["errors"]] == ["limit"]


async def test_an_order_shipped_to_one_user_never_shows_up_for_another(
    client: httpx.AsyncClient,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    access_token_signer: AccessTokenSigner,
) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    for user_id in (alice, bob):
        await apply_directly(sessions, users_replica_handlers(pipeline), registered(user_id))
    order_id = uuid.uuid4()
    await apply_directly(
        sessions, order_notification_handlers(pipeline), OrderShipped(order_id=order_id, user_id=alice)
    )
    alices = (await client.get("/notifications", headers=bearer(access_token_signer, alice))).json()
    bobs = (await client.get("/notifications", headers=bearer(access_token_signer, bob))).json()
    assert [item["kind"] for item in alices["items"]] == ["order_shipped", "welcome"]
    assert [item["kind"] for item in bobs["items"]] == ["welcome"]
