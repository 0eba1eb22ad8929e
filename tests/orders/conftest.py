from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from devtools.testing import prepare_service_database, serve_app, truncate_schema
from orders.app import DATABASE, create_app
from orders.settings import OrdersSettings
from tests.orders.helpers import Tokens

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx

    from devtools.stack.servers import PostgresServer
    from shared.auth import AccessTokenSigner


@pytest.fixture(scope="session")
def orders_database_url(postgres_server: PostgresServer) -> str:
    return prepare_service_database(postgres_server, DATABASE)


@pytest.fixture
async def orders_database(orders_database_url: str) -> AsyncIterator[str]:
    yield orders_database_url
    await truncate_schema(orders_database_url, "orders")


@pytest.fixture
def orders_settings(orders_database: str, access_token_signer: AccessTokenSigner) -> OrdersSettings:
    return OrdersSettings(database_url=orders_database, jwt_public_keys=access_token_signer.public_key_pem())


@pytest.fixture
async def client(orders_settings: OrdersSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(create_app(orders_settings)) as client:
        yield client


@pytest.fixture
def tokens(access_token_signer: AccessTokenSigner) -> Tokens:
    return Tokens(access_token_signer)
