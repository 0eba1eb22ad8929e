"""Postgres down: every service answers 503 problem documents with Retry-After, readiness fails, and
both recover once Postgres is back. Against the session's real Postgres, stopped and started again."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import asyncpg.exceptions
import pytest
import sqlalchemy.exc
from advanced_alchemy.exceptions import RepositoryError

from devtools.testing import eventually, serve_app
from notify.app import create_app as create_notify_app
from notify.settings import NotifySettings
from orders.app import create_app as create_orders_app
from orders.settings import OrdersSettings
from shared.db import is_database_unavailable
from users.app import create_app as create_users_app
from users.settings import UsersSettings

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from devtools.stack.servers import PostgresServer
    from shared.auth import AccessTokenSigner

Call = tuple[str, str, dict[str, object] | None, bool]
"""method, path, JSON body, whether it needs the customer's bearer token."""

NO_SUCH_ID = "01900000-0000-7000-8000-000000000000"

# Routes that read or write each service's schema, public and signed in, reads and writes.
ROUTES: dict[str, list[Call]] = {
    "users": [
        (
            "POST",
            "/auth/register",
            {"email": "outage@example.com", "password": "long enough pw", "display_name": "O"},
            False,
        ),
        ("POST", "/auth/login", {"email": "outage@example.com", "password": "long enough pw"}, False),
        ("POST", "/auth/refresh", {"refresh_token": "x" * 43}, False),
        ("GET", "/users/me", None, True),
    ],
    "orders": [
        ("GET", "/products", None, False),
        ("GET", f"/products/{NO_SUCH_ID}", None, False),
        ("GET", "/orders", None, True),
        ("GET", f"/orders/{NO_SUCH_ID}", None, True),
    ],
    "notify": [
        ("GET", "/notifications", None, True),
        ("GET", "/notifications/preferences", None, True),
        ("POST", "/notifications/read-all", None, True),
    ],
}


async def _call(client: httpx.AsyncClient, call: Call, token: str) -> httpx.Response:
    method, path, body, signed_in = call
    headers = {"Authorization": f"Bearer {token}"} if signed_in else {}
    return await client.request(method, path, json=body, headers=headers)


async def test_postgres_outage_is_503_with_retry_after_on_every_service_and_recovers(
    postgres_server: PostgresServer,
    database_urls: dict[str, str],
    private_key_pem: str,
    access_token_signer: AccessTokenSigner,
    tmp_path: Path,
) -> None:
    public_key = access_token_signer.public_key_pem()
    apps = {
        "users": create_users_app(
            UsersSettings(
                database_url=database_urls["users"],
                jwt_private_key=private_key_pem,
                password_hash_time_cost=1,
                password_hash_memory_kib=8192,
            )
        ),
        "orders": create_orders_app(OrdersSettings(database_url=database_urls["orders"], jwt_public_keys=public_key)),
        "notify": create_notify_app(
            NotifySettings(
                database_url=database_urls["notify"],
                jwt_public_keys=public_key,
                unsubscribe_secret="unsubscribe-secret-for-the-tests",
                email_url=f"file:{tmp_path}",
            )
        ),
    }
    token = access_token_signer.sign(subject=uuid.uuid4(), roles=["user"])
    async with AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(serve_app(app)) for name, app in apps.items()}

        # Up: each route answers something other than 503 (warming each pool), readiness is green.
        for name, client in clients.items():
            assert (await client.get("/health/ready")).status_code == 200, name
            for call in ROUTES[name]:
                response = await _call(client, call, token)
                assert response.status_code != 503, (name, call[1], response.text)

        postgres_server.stop()
        try:
            for name, client in clients.items():
                for call in ROUTES[name]:
                    response = await _call(client, call, token)
                    assert response.status_code == 503, (name, call[1], response.status_code, response.text)
                    assert response.headers["content-type"].startswith("application/problem+json"), (name, call[1])
                    assert int(response.headers["retry-after"]) > 0, (name, call[1])
                    assert response.json()["status"] == 503
                ready = await client.get("/health/ready")
                assert ready.status_code == 503, (name, ready.text)
                reason = ready.json()["checks"]["database"]
                assert reason != "ok"
                assert "\n" not in reason, "one line, without SQLAlchemy's statement and links"
        finally:
            postgres_server.start()

        for name, client in clients.items():

            async def recovered(client: httpx.AsyncClient = client, name: str = name) -> bool:
                if (await client.get("/health/ready")).status_code != 200:
                    return False
                answers = [await _call(client, call, token) for call in ROUTES[name]]
                return all(answer.status_code != 503 and answer.status_code < 500 for answer in answers)

            await eventually(recovered, within=30, what=f"{name} answering again after Postgres came back")


def _chained(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        ConnectionResetError(104, "Connection reset by peer"),
        FileNotFoundError(2, "No such file or directory: '/tmp/.s.PGSQL.5432'"),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        asyncpg.exceptions.InternalClientError("cannot switch to state 11; another operation (2) is in progress"),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection is closed")),
        sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("lost"), connection_invalidated=True),
        sqlalchemy.exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached"),
        _chained(RepositoryError("An exception occurred"), sqlalchemy.exc.TimeoutError("pool timeout")),
        _chained(RepositoryError("wrapped"), _chained(sqlalchemy.exc.DBAPIError("x", {}, Exception()), OSError())),
    ],
    ids=lambda error: type(error).__name__,
)
def test_every_kind_of_connection_failure_counts_as_unavailable(error: Exception) -> None:
    assert is_database_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad input"),
        sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
        sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("syntax error"), connection_invalidated=False),
        asyncpg.exceptions.UniqueViolationError("duplicate key value"),
        RepositoryError("not found"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_request_and_data_errors_are_not_unavailability(error: Exception) -> None:
    assert not is_database_unavailable(error)
