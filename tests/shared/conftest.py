"""Fixtures of the tests that run every service's app against one Postgres."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from devtools.testing import prepare_service_database
from notify.app import DATABASE as NOTIFY_DATABASE
from orders.app import DATABASE as ORDERS_DATABASE
from users.app import DATABASE as USERS_DATABASE

if TYPE_CHECKING:
    from devtools.stack.servers import PostgresServer


@pytest.fixture(scope="module")
def database_urls(postgres_server: PostgresServer) -> dict[str, str]:
    """Each service's database URL, as its own role, its schema migrated."""
    return {
        "users": prepare_service_database(postgres_server, USERS_DATABASE),
        "orders": prepare_service_database(postgres_server, ORDERS_DATABASE),
        "notify": prepare_service_database(postgres_server, NOTIFY_DATABASE),
    }
