"""Bad input gets a 4xx problem document naming what is wrong, and writes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from users.models import User

if TYPE_CHECKING:
    import httpx


async def count_users(database_url: str) -> int:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(select(func.count()).select_from(User)) or 0)
    finally:
        await engine.dispose()


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


async def test_non_uuid_path_parameter_is_a_client_error(client: httpx.AsyncClient) -> None:
    response = await client.get("/users/not-a-uuid")
    assert 400 <= response.status_code < 500
