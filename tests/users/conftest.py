from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

from devtools.testing import prepare_service_database, serve_app, truncate_schema
from users.app import DATABASE, create_app
from users.settings import UsersSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from devtools.stack.servers import NatsServer, PostgresServer


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


@pytest.fixture
def users_environment(monkeypatch: pytest.MonkeyPatch, users_settings: UsersSettings, nats_server: NatsServer) -> None:
    monkeypatch.setenv("USERS_DATABASE_URL", users_settings.database_url)
    monkeypatch.setenv("USERS_JWT_PRIVATE_KEY", users_settings.jwt_private_key)
    monkeypatch.setenv("USERS_NATS_URL", nats_server.url)
    monkeypatch.setenv("USERS_PASSWORD_HASH_TIME_COST", "1")
    monkeypatch.setenv("USERS_PASSWORD_HASH_MEMORY_KIB", "8192")
