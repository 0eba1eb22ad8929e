from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

from devtools.testing import prepare_service_database, serve_app, truncate_schema
from users.app import DATABASE, create_app
from users.settings import UsersSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from devtools.stack.servers import PostgresServer

PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def users_database_url(postgres_server: PostgresServer) -> str:
    return prepare_service_database(postgres_server, DATABASE)


@pytest.fixture
async def users_database(users_database_url: str) -> AsyncIterator[str]:
    yield users_database_url
    await truncate_schema(users_database_url, "users")


@pytest.fixture
def users_settings(users_database: str, private_key_pem: str) -> UsersSettings:
    # argon2 at its cheapest: the tests exercise the rules, not the hash's strength.
    return UsersSettings(
        database_url=users_database,
        jwt_private_key=private_key_pem,
        password_hash_time_cost=1,
        password_hash_memory_kib=8192,
        max_request_body_bytes=16_384,
    )


@pytest.fixture
async def client(users_settings: UsersSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(create_app(users_settings)) as client:
        yield client


async def register(
    client: httpx.AsyncClient, email: str, *, password: str = PASSWORD, name: str = "Ada"
) -> dict[str, str]:
    response = await client.post("/auth/register", json={"email": email, "password": password, "display_name": name})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def login(client: httpx.AsyncClient, email: str, *, password: str = PASSWORD) -> dict[str, str]:
    response = await client.post("/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def bearer(tokens: dict[str, str] | str) -> dict[str, str]:
    token = tokens if isinstance(tokens, str) else tokens["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def signed_in(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    await register(client, email)
    return await login(client, email)
