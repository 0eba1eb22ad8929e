"""Every API's read pool: its prebuilt reads outside a transaction run on it, it holds no connection
before the first read, and it is closed with the app; ``database_read_pool_size=0`` keeps them on
the engine's pool, a service without such reads (users) has none, and a read pool that would take
the whole ``database_pool_size`` is refused. Seen from Postgres (``pg_stat_activity``, by the
pool's application name)."""

from __future__ import annotations

import datetime
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec
import pytest

from devtools.testing import serve_app
from notify.app import create_app as create_notify_app
from notify.settings import NotifySettings
from orders.app import create_app as create_orders_app
from orders.settings import OrdersSettings
from shared.settings import SettingsError
from users.app import create_app as create_users_app
from users.settings import UsersSettings

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from litestar import Litestar

    from shared.auth import AccessTokenSigner
    from shared.settings import ServiceSettings

NO_SUCH_ID = "01900000-0000-7000-8000-000000000000"

# The routes whose reads go through shared.db.driver_connection, by service.
PREBUILT_READS: dict[str, list[str]] = {
    "orders": [f"/products/{NO_SUCH_ID}", f"/orders/{NO_SUCH_ID}"],
    "notify": ["/notifications"],
}


def _settings(service: str, url: str, public_key: str, tmp_path: Path) -> ServiceSettings:
    if service == "orders":
        return OrdersSettings(database_url=url, jwt_public_keys=public_key)
    return NotifySettings(
        database_url=url,
        jwt_public_keys=public_key,
        unsubscribe_secret="unsubscribe-secret-for-the-tests",
        email_url=f"file:{tmp_path}",
    )


FACTORIES: dict[str, Callable[[Any], Litestar]] = {"orders": create_orders_app, "notify": create_notify_app}


async def _read_pool_activity(url: str, service: str) -> tuple[int, datetime.datetime | None, datetime.datetime]:
    """The read pool's connections, when the latest statement on one of them started, and now."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        row = await connection.fetchrow(
            "SELECT count(*), max(query_start), clock_timestamp() FROM pg_stat_activity WHERE application_name = $1",
            f"{service}-api-reads",
        )
    finally:
        await connection.close()
    assert row is not None
    return row[0], row[1], row[2]


async def _read_pool_connections(url: str, service: str) -> int:
    return (await _read_pool_activity(url, service))[0]


@pytest.mark.parametrize("service", sorted(PREBUILT_READS))
async def test_an_apis_prebuilt_reads_use_its_read_pool_which_closes_with_the_app(
    service: str, database_urls: dict[str, str], access_token_signer: AccessTokenSigner, tmp_path: Path
) -> None:
    url = database_urls[service]
    settings = _settings(service, url, access_token_signer.public_key_pem(), tmp_path)
    token = access_token_signer.sign(subject=uuid.uuid4(), roles=["user"])
    async with serve_app(FACTORIES[service](settings)) as client:
        assert await _read_pool_connections(url, service) == 0  # none made before a read needs one
        for path in PREBUILT_READS[service]:
            _, _, before = await _read_pool_activity(url, service)
            response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code in {200, 404}, (path, response.text)
            connections, latest, _ = await _read_pool_activity(url, service)
            # this route's read ran on the pool: a statement started there after the request did
            assert connections >= 1, path
            assert latest is not None, path
            assert latest > before, path
    assert await _read_pool_connections(url, service) == 0  # closed with the app


@pytest.mark.parametrize("service", sorted(PREBUILT_READS))
async def test_without_a_read_pool_the_reads_take_the_engines_connections(
    service: str, database_urls: dict[str, str], access_token_signer: AccessTokenSigner, tmp_path: Path
) -> None:
    url = database_urls[service]
    settings = msgspec.structs.replace(
        _settings(service, url, access_token_signer.public_key_pem(), tmp_path), database_read_pool_size=0
    )
    token = access_token_signer.sign(subject=uuid.uuid4(), roles=["user"])
    async with serve_app(FACTORIES[service](settings)) as client:
        for path in PREBUILT_READS[service]:
            response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code in {200, 404}, (path, response.text)
        assert await _read_pool_connections(url, service) == 0


def test_a_read_pool_as_large_as_the_whole_budget_is_refused_at_start(
    database_urls: dict[str, str], access_token_signer: AccessTokenSigner
) -> None:
    settings = OrdersSettings(
        database_url=database_urls["orders"],
        jwt_public_keys=access_token_signer.public_key_pem(),
        database_pool_size=4,
        database_read_pool_size=4,
    )
    refusal = r"ORDERS_DATABASE_READ_POOL_SIZE \(4\) must be below ORDERS_DATABASE_POOL_SIZE \(4\)"
    with pytest.raises(SettingsError, match=refusal):
        create_orders_app(settings)


async def test_an_api_without_prebuilt_reads_keeps_no_read_pool(
    database_urls: dict[str, str], private_key_pem: str
) -> None:
    url = database_urls["users"]
    settings = UsersSettings(
        database_url=url, jwt_private_key=private_key_pem, password_hash_time_cost=1, password_hash_memory_kib=8192
    )
    async with serve_app(create_users_app(settings)) as client:
        registered = await client.post(
            "/auth/register", json={"email": "reads@example.com", "password": "long enough pw", "display_name": "R"}
        )
        assert registered.status_code == 201, registered.text
        assert await _read_pool_connections(url, "users") == 0
