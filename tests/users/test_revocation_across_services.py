"""A demoted administrator's old token stops working on users, orders and notify within seconds.

All three apps and workers run in this test's loop against the session's Postgres and NATS: users
revokes, its relay publishes ``users.user.updated`` with ``tokens_valid_after``, the replica
consumers of orders and notify store it, and each API refuses the old token. No service calls another.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING

import msgspec
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.stack.servers import free_port
from devtools.testing import eventually, prepare_service_database, serve_app, truncate_schema
from notify.app import DATABASE as NOTIFY_DATABASE
from notify.app import create_app as create_notify_app
from notify.live import LivePublisher
from notify.settings import NotifySettings
from notify.worker import worker_plan as notify_worker_plan
from orders.app import DATABASE as ORDERS_DATABASE
from orders.app import create_app as create_orders_app
from orders.settings import OrdersSettings
from orders.worker import worker_plan as orders_worker_plan
from shared.revocations import REVOCATION_DETAIL
from shared.worker import Worker
from tests.users.helpers import bearer, login, register
from users.app import create_app as create_users_app
from users.models import User
from users.worker import worker_plan as users_worker_plan

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import httpx
    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer, PostgresServer
    from shared.auth import AccessTokenSigner
    from users.settings import UsersSettings

POLL = 0.1


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


@pytest.fixture
async def other_databases(postgres_server: PostgresServer) -> AsyncIterator[tuple[str, str]]:
    urls = (
        await asyncio.to_thread(prepare_service_database, postgres_server, ORDERS_DATABASE),
        await asyncio.to_thread(prepare_service_database, postgres_server, NOTIFY_DATABASE),
    )
    yield urls
    await truncate_schema(urls[0], "orders")
    await truncate_schema(urls[1], "notify")


async def test_a_demoted_administrators_token_is_refused_by_all_three_services(
    users_settings: UsersSettings,
    other_databases: tuple[str, str],
    access_token_signer: AccessTokenSigner,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
    tmp_path: Path,
) -> None:
    nats_url = nats_server.url
    users = msgspec.structs.replace(
        users_settings, worker_health_port=free_port(), nats_url=nats_url, token_revocation_poll_seconds=POLL
    )
    public_key = access_token_signer.public_key_pem()
    orders = OrdersSettings(
        database_url=other_databases[0],
        jwt_public_keys=public_key,
        worker_health_port=free_port(),
        nats_url=nats_url,
        token_revocation_poll_seconds=POLL,
    )
    notify = NotifySettings(
        database_url=other_databases[1],
        jwt_public_keys=public_key,
        unsubscribe_secret="an unsubscribe secret for the test",
        email_url=f"file:{tmp_path}",
        worker_health_port=free_port(),
        nats_url=nats_url,
        token_revocation_poll_seconds=POLL,
    )
    live = LivePublisher(notify)
    workers = (
        Worker(users_worker_plan(users)),
        Worker(orders_worker_plan(orders)),
        Worker(notify_worker_plan(notify, live=live)),
    )
    async with (
        running(*workers),
        serve_app(create_users_app(users)) as users_api,
        serve_app(create_orders_app(orders)) as orders_api,
        serve_app(create_notify_app(notify)) as notify_api,
    ):
        admin = await _administrator(users_api, users.database_url)
        member = await register(users_api, "deputy@example.com")
        promoted = await users_api.patch(f"/users/{member['id']}", headers=admin, json={"role": "admin"})
        assert promoted.status_code == 200
        old = bearer(await login(users_api, "deputy@example.com"))
        routes: list[tuple[httpx.AsyncClient, str]] = [
            (users_api, "/users"),
            (orders_api, f"/orders?user_id={uuid.uuid4()}"),
            (notify_api, "/notifications"),
        ]
        for api, path in routes:
            assert (await api.get(path, headers=old)).status_code == 200, path

        demoted = await users_api.patch(f"/users/{member['id']}", headers=admin, json={"role": "user"})
        assert demoted.status_code == 200

        for api, path in routes:

            async def refused(api: httpx.AsyncClient = api, path: str = path) -> bool:
                response = await api.get(path, headers=old)
                return response.status_code == 401 and response.json()["detail"] == REVOCATION_DETAIL

            await eventually(refused, within=15, what=f"the demoted token refused on {path}")
        # A new sign-in works everywhere, without the admin rights.
        fresh = bearer(await login(users_api, "deputy@example.com"))
        assert (await users_api.get("/users", headers=fresh)).status_code == 403
        assert (await orders_api.get("/orders", headers=fresh)).status_code == 200
        assert (await notify_api.get("/notifications", headers=fresh)).status_code == 200
    await live.close()


async def _administrator(client: httpx.AsyncClient, database_url: str) -> dict[str, str]:
    await register(client, "chief@example.com")
    engine = create_async_engine(database_url)
    async with engine.begin() as connection:
        await connection.execute(update(User).where(User.email == "chief@example.com").values(role="admin"))
    await engine.dispose()
    return bearer(await login(client, "chief@example.com"))
