"""Every service's app in the test's loop, against the session's real Postgres and NATS.

The per-service database and settings fixtures are the services' own (imported from their
conftest modules), so these apps are built exactly as each service's tests build theirs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from devtools.testing import serve_app
from notify.app import create_app as create_notify_app
from orders.app import create_app as create_orders_app
from tests.notify.conftest import mail_server, notify_database, notify_database_url, notify_settings
from tests.orders.conftest import orders_database, orders_database_url, orders_settings
from tests.users.conftest import users_database, users_database_url, users_settings
from users.app import create_app as create_users_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import httpx
    from litestar import Litestar

__all__ = (
    "SERVICES",
    "mail_server",
    "notify_database",
    "notify_database_url",
    "notify_settings",
    "orders_database",
    "orders_database_url",
    "orders_settings",
    "service_app",
    "service_client",
    "users_database",
    "users_database_url",
    "users_settings",
)

SERVICES: dict[str, Callable[..., Litestar]] = {
    "users": create_users_app,
    "orders": create_orders_app,
    "notify": create_notify_app,
}


@pytest.fixture(params=sorted(SERVICES))
def service_app(request: pytest.FixtureRequest) -> Litestar:
    """Each service's app in turn, built from that service's test settings."""
    name: str = request.param
    settings = request.getfixturevalue(f"{name}_settings")
    return SERVICES[name](settings)


@pytest.fixture
async def service_client(service_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of ``service_app``, running with its lifespan (database pool, NATS)."""
    async with serve_app(service_app) as client:
        yield client
