"""Bad input gets a 4xx problem document naming what is wrong, and writes nothing."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from tests.users.helpers import count_users
from users.app import create_app

if TYPE_CHECKING:
    import httpx

    from users.settings import UsersSettings


@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [
        pytest.param(b'{"email": "a@example.com", "password": ', {}, 400, None, id="malformed-json"),
        pytest.param(
            b'{"email": 12, "password": "long enough pw", "display_name": "A"}', {}, 400, "email", id="wrong-type"
        ),
        pytest.param(
            b'{"email": "a@example.com", "password": "long enough pw", "display_name": "A", "role": "admin"}',
            {},
            400,
            "role",
            id="unknown-field",
        ),
        pytest.param(
            b'{"email": "not-an-email", "password": "long enough pw", "display_name": "A"}',
            {},
            400,
            "email",
            id="bad-email",
        ),
        pytest.param(b'{"password": "long enough pw", "display_name": "A"}', {}, 400, "email", id="missing-field"),
        pytest.param(b"[]", {}, 400, None, id="not-an-object"),
        pytest.param(
            b'{"email": "a@example.com", "password": "' + b"x" * 20_000 + b'", "display_name": "A"}',
            {},
            413,
            None,
            id="oversized",
        ),
    ],
)
async def test_bad_registration_is_a_client_error_and_writes_nothing(
    client: httpx.AsyncClient, users_database: str, body: bytes, headers: dict[str, str], status: int, field: str | None
) -> None:
    response = await client.post(
        "/auth/register", content=body, headers={"content-type": "application/json", **headers}
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"]
    if field is not None:
        assert field in {error["field"] for error in problem["errors"]}
        assert field in problem["detail"]
    assert "Traceback" not in response.text
    assert await count_users(users_database) == 0


async def test_unknown_route_and_method_are_problem_documents(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    wrong_method = await client.put("/auth/register", json={})
    assert (missing.status_code, wrong_method.status_code) == (404, 405)
    assert missing.headers["content-type"] == wrong_method.headers["content-type"] == "application/problem+json"


async def test_a_non_uuid_id_is_404_on_every_route_that_takes_one(
    client: httpx.AsyncClient, users_settings: UsersSettings
) -> None:
    # No route matches a segment that is not a UUID: the same 404 problem as an unknown path,
    # before authentication, whatever the method.
    routes = {
        (method, route.path)
        for route in create_app(users_settings).routes
        if ":uuid}" in route.path
        for method in route.methods - {"HEAD", "OPTIONS"}
    }
    assert routes >= {("GET", "/users/{user_id:uuid}"), ("PATCH", "/users/{user_id:uuid}")}
    for method, path in sorted(routes):
        url = re.sub(r"\{[^}]*:uuid\}", "not-a-uuid", path)
        response = await client.request(method, url, json={} if method in {"PATCH", "POST", "PUT"} else None)
        assert response.status_code == 404, (method, url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 404
