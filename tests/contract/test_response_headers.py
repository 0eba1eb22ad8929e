"""Response headers every service sends, and the ones that answers carrying tokens need."""

from __future__ import annotations

from typing import TYPE_CHECKING

from devtools.testing import serve_app
from shared.boundary import SECURITY_HEADERS
from users.app import create_app as create_users_app

if TYPE_CHECKING:
    import httpx
    from litestar import Litestar

    from users.settings import UsersSettings

PASSWORD = "correct horse battery"


async def test_every_service_sends_the_security_headers_on_success_and_error(
    service_app: Litestar, service_client: httpx.AsyncClient
) -> None:
    answers = [
        await service_client.get("/health/live"),
        await service_client.get("/docs/openapi.json"),
        await service_client.get("/no/such/path"),
        await service_client.get("/docs/no-such-page"),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 404, 404]
    for answer in answers:
        for name, value in SECURITY_HEADERS:
            assert answer.headers[name.decode()] == value.decode(), (answer.url, name)
        assert answer.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert answers[3].headers["content-type"] == "application/problem+json"


async def test_token_answers_are_never_stored(users_settings: UsersSettings) -> None:
    async with serve_app(create_users_app(users_settings)) as client:
        registered = await client.post(
            "/auth/register", json={"email": "ada@example.com", "password": PASSWORD, "display_name": "Ada"}
        )
        assert registered.status_code == 201, registered.text
        login = await client.post("/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
        form = await client.post("/auth/token", data={"username": "ada@example.com", "password": PASSWORD})
        refresh = await client.post("/auth/refresh", json={"refresh_token": login.json()["refresh_token"]})
    for answer in (login, form, refresh):
        assert answer.status_code == 200, answer.text
        assert "access_token" in answer.json()
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["pragma"] == "no-cache"
