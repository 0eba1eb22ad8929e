"""Preferences per kind and channel, and the unsubscribe link every email carries."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from devtools.testing import eventually
from notify.events import order_notification_handlers, users_replica_handlers
from notify.models import EmailDelivery, Notification
from shared.events.contracts import OrderPaid, OrderShipped
from tests.notify.helpers import (
    ALL_ON,
    MailServer,
    Publisher,
    RunningWorker,
    apply_directly,
    at_least,
    bearer,
    count,
    deliveries_of,
    notifications_of,
    placed,
    registered,
)

if TYPE_CHECKING:
    import httpx
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from notify.events import NotificationPipeline
    from shared.auth import AccessTokenSigner


async def test_every_kind_and_channel_is_on_until_turned_off(
    client: httpx.AsyncClient, access_token_signer: AccessTokenSigner
) -> None:
    response = await client.get("/notifications/preferences", headers=bearer(access_token_signer, uuid.uuid4()))
    assert response.status_code == 200
    assert response.json() == ALL_ON


async def test_put_replaces_the_preferences_and_what_it_leaves_out_is_on(
    client: httpx.AsyncClient, access_token_signer: AccessTokenSigner
) -> None:
    headers = bearer(access_token_signer, uuid.uuid4())
    first = {"order_shipped": {"email": False}, "welcome": {"in_app": False, "email": False}}
    chosen = await client.put("/notifications/preferences", json=first, headers=headers)
    shown_first = await client.get("/notifications/preferences", headers=headers)
    replaced = await client.put("/notifications/preferences", json={"order_paid": {"in_app": False}}, headers=headers)
    shown = await client.get("/notifications/preferences", headers=headers)

    first_expected = ALL_ON | {
        "order_shipped": {"in_app": True, "email": False},
        "welcome": {"in_app": False, "email": False},
    }
    assert chosen.status_code == 200, chosen.text
    assert chosen.json() == first_expected
    assert shown_first.json() == first_expected  # stored, not only echoed
    expected = ALL_ON | {"order_paid": {"in_app": False, "email": True}}
    assert replaced.status_code == 200, replaced.text
    assert replaced.json() == expected
    assert shown.json() == expected


async def test_an_unknown_kind_or_channel_is_refused_by_name(
    client: httpx.AsyncClient, access_token_signer: AccessTokenSigner
) -> None:
    headers = bearer(access_token_signer, uuid.uuid4())
    unknown_kind = await client.put("/notifications/preferences", json={"newsletter": {}}, headers=headers)
    unknown_channel = await client.put("/notifications/preferences", json={"welcome": {"sms": True}}, headers=headers)
    assert unknown_kind.status_code == 400
    assert "newsletter" in unknown_kind.json()["detail"]
    assert unknown_channel.status_code == 400
    assert "sms" in unknown_channel.json()["detail"]


async def test_email_off_still_notifies_in_the_app_and_in_app_off_still_emails(
    client: httpx.AsyncClient,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    access_token_signer: AccessTokenSigner,
) -> None:
    user_id = uuid.uuid4()
    await apply_directly(sessions, users_replica_handlers(pipeline), registered(user_id))
    choice = {
        "order_placed": {"in_app": False, "email": False},
        "order_paid": {"in_app": False},
        "order_shipped": {"email": False},
    }
    chosen = await client.put("/notifications/preferences", json=choice, headers=bearer(access_token_signer, user_id))
    assert chosen.status_code == 200, chosen.text

    order = placed(user_id)
    orders = order_notification_handlers(pipeline)
    await apply_directly(sessions, orders, order)
    paid = await apply_directly(
        sessions, orders, OrderPaid(order_id=order.order_id, user_id=user_id, total=2500, currency="EUR")
    )
    await apply_directly(sessions, orders, OrderShipped(order_id=order.order_id, user_id=user_id))

    assert [notification.kind for notification in await notifications_of(engine, user_id)] == [
        "welcome",
        "order_shipped",
    ]
    assert [delivery.kind for delivery in await deliveries_of(engine, user_id)] == ["welcome", "order_paid"]
    assert paid.after_commit == []  # nothing in the app, so nothing to push live


async def test_the_unsubscribe_link_in_an_email_turns_that_kind_of_email_off_without_signing_in(
    client: httpx.AsyncClient,
    worker: RunningWorker,
    publisher: Publisher,
    mail_server: MailServer,
    engine: AsyncEngine,
    access_token_signer: AccessTokenSigner,
) -> None:
    user_id = uuid.uuid4()
    await publisher.publish(registered(user_id))
    order = placed(user_id)
    await publisher.publish(order)
    await eventually(lambda: _messages(mail_server, 2), what="welcome and order emails")
    order_email = next(message for message in mail_server.messages if "placed" in str(message["Subject"]))
    link = str(order_email["List-Unsubscribe"]).strip("<>")
    assert link in order_email.get_content()
    token = parse_qs(urlsplit(link).query)["token"][0]

    # Opening the link (as a link scanner would) shows a page and changes nothing; its button posts.
    page = await client.get("/notifications/unsubscribe", params={"token": token})
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert 'method="post"' in page.text
    preferences = await client.get("/notifications/preferences", headers=bearer(access_token_signer, user_id))
    assert preferences.json() == ALL_ON
    response = await client.post(
        "/notifications/unsubscribe",
        params={"token": token},
        content=order_email["List-Unsubscribe-Post"],
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["kind"] == "order_placed"
    assert response.json()["email"] is False
    preferences = await client.get("/notifications/preferences", headers=bearer(access_token_signer, user_id))
    assert preferences.json()["order_placed"] == {"in_app": True, "email": False}
    assert preferences.json()["order_shipped"] == {"in_app": True, "email": True}

    await publisher.publish(placed(user_id))
    await publisher.publish(OrderShipped(order_id=order.order_id, user_id=user_id))
    await eventually(lambda: _messages(mail_server, 3), what="the shipping email")
    await eventually(lambda: at_least(engine, Notification, 4), what="four notifications")
    subjects = [str(message["Subject"]) for message in mail_server.messages]
    assert sum("placed" in subject for subject in subjects) == 1
    assert await count(engine, EmailDelivery, EmailDelivery.kind == "order_placed") == 1


async def test_a_forged_or_altered_unsubscribe_token_is_refused(
    client: httpx.AsyncClient,
    pipeline: NotificationPipeline,
    access_token_signer: AccessTokenSigner,
) -> None:
    user_id = uuid.uuid4()
    genuine = pipeline.links.token(user_id, "order_paid")
    user_part, _, signature = genuine.split(".")
    someone_else = pipeline.links.token(uuid.uuid4(), "order_paid").split(".")[2]

    altered_kind = await client.get("/notifications/unsubscribe", params={"token": f"{user_part}.welcome.{signature}"})
    borrowed = await client.get(
        "/notifications/unsubscribe", params={"token": f"{user_part}.order_paid.{someone_else}"}
    )
    garbage = await client.get("/notifications/unsubscribe", params={"token": "not-a-token"})
    unknown_kind = await client.get("/notifications/unsubscribe", params={"token": f"{user_part}.spam.{signature}"})
    missing = await client.get("/notifications/unsubscribe")

    for response in (altered_kind, borrowed):
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
    for response in (garbage, unknown_kind, missing):
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
    preferences = await client.get("/notifications/preferences", headers=bearer(access_token_signer, user_id))
    assert preferences.json() == ALL_ON


async def _messages(server: MailServer, expected: int) -> bool:
    return len(server.messages) >= expected
