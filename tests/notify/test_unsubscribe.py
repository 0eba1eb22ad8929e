"""Unsubscribing: opening the link changes nothing; posting it (the page's button, or a mail
client's one-click, RFC 8058) does; anything but a genuine token is a 4xx, never a 500."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from notify.tokens import MalformedToken, UnsubscribeLinks
from tests.notify.helpers import ALL_ON, bearer

if TYPE_CHECKING:
    import httpx

    from notify.events import NotificationPipeline
    from shared.auth import AccessTokenSigner

SECRET = "a-secret-of-enough-length"

MALFORMED = [
    pytest.param("not-a-token", id="garbage"),
    pytest.param("ä.welcome.sig", id="non-ascii-user"),
    pytest.param(f"{uuid.uuid4().hex}.welcome.sïgnature", id="non-ascii-signature"),
    pytest.param(f"{uuid.uuid4().hex}.wélcome.signature", id="non-ascii-kind"),
    pytest.param("💌" * 10, id="emoji"),
    pytest.param(f"{uuid.uuid4().hex}.welcome.\x00", id="nul"),
    pytest.param(f"{uuid.uuid4().hex}.spam.signature", id="unknown-kind"),
    pytest.param(f"{uuid.uuid4().hex}.welcome", id="cut-off"),
]


@pytest.mark.parametrize("token", MALFORMED)
def test_a_malformed_token_is_malformed_whatever_it_holds(token: str) -> None:
    with pytest.raises(MalformedToken):
        UnsubscribeLinks(SECRET, "http://notify.test").verify(token)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("token", MALFORMED)
async def test_a_malformed_token_is_400_on_the_page_and_the_one_click_post(
    client: httpx.AsyncClient, method: str, token: str
) -> None:
    response = await client.request(method, "/notifications/unsubscribe", params={"token": token})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_forged_token_is_403_on_the_page_and_the_one_click_post(
    client: httpx.AsyncClient, pipeline: NotificationPipeline, access_token_signer: AccessTokenSigner, method: str
) -> None:
    user_id = uuid.uuid4()
    genuine = pipeline.links.token(user_id, "order_paid")
    forged = UnsubscribeLinks("another-secret-entirely", "http://x").token(user_id, "order_paid")
    assert forged != genuine

    response = await client.request(method, "/notifications/unsubscribe", params={"token": forged})
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    preferences = await client.get("/notifications/preferences", headers=bearer(access_token_signer, user_id))
    assert preferences.json() == ALL_ON


async def test_opening_the_link_any_number_of_times_changes_nothing_and_the_button_posts_the_token(
    client: httpx.AsyncClient, pipeline: NotificationPipeline, access_token_signer: AccessTokenSigner
) -> None:
    user_id = uuid.uuid4()
    token = pipeline.links.token(user_id, "order_shipped")
    for _ in range(3):
        page = await client.get("/notifications/unsubscribe", params={"token": token})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
    assert "shipping updates" in page.text
    assert f'<form method="post" action="?token={token}">' in page.text
    preferences = await client.get("/notifications/preferences", headers=bearer(access_token_signer, user_id))
    assert preferences.json() == ALL_ON

    # What a browser sends when the button is pressed: the form, to the page's own URL.
    pressed = await client.post(
        "/notifications/unsubscribe",
        params={"token": token},
        data={"List-Unsubscribe": "One-Click"},
    )
    assert pressed.status_code == 200, pressed.text
    assert (pressed.json()["kind"], pressed.json()["email"]) == ("order_shipped", False)
    preferences = await client.get("/notifications/preferences", headers=bearer(access_token_signer, user_id))
    assert preferences.json() == ALL_ON | {"order_shipped": {"in_app": True, "email": False}}


async def test_a_one_click_post_as_multipart_also_unsubscribes(
    client: httpx.AsyncClient, pipeline: NotificationPipeline, access_token_signer: AccessTokenSigner
) -> None:
    user_id = uuid.uuid4()
    token = pipeline.links.token(user_id, "welcome")
    response = await client.post(
        "/notifications/unsubscribe",
        params={"token": token},
        files={"List-Unsubscribe": (None, "One-Click")},  # RFC 8058 allows multipart/form-data too
    )
    assert response.status_code == 200, response.text
    assert (response.json()["kind"], response.json()["email"]) == ("welcome", False)
    preferences = await client.get("/notifications/preferences", headers=bearer(access_token_signer, user_id))
    assert preferences.json() == ALL_ON | {"welcome": {"in_app": True, "email": False}}
