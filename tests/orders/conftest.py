from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from devtools.testing import prepare_service_database, serve_app, truncate_schema
from orders.app import DATABASE, create_app
from orders.settings import OrdersSettings

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


class Tokens:
    """Bearer headers for made-up customers and an administrator, signed as users would."""

    def __init__(self, signer: AccessTokenSigner) -> None:
        self.signer = signer
        self.admin_id = uuid.uuid4()

    def customer(self, user_id: uuid.UUID | None = None) -> dict[str, str]:
        return self._headers(user_id or uuid.uuid4(), ["user"])

    def admin(self) -> dict[str, str]:
        return self._headers(self.admin_id, ["admin"])

    def _headers(self, user_id: uuid.UUID, roles: list[str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.signer.sign(subject=user_id, roles=roles)}"}


@pytest.fixture
def tokens(access_token_signer: AccessTokenSigner) -> Tokens:
    return Tokens(access_token_signer)


async def add_product(
    client: httpx.AsyncClient,
    tokens: Tokens,
    *,
    sku: str,
    price: int = 1000,
    stock: int = 10,
    currency: str = "EUR",
    is_active: bool = True,
) -> dict[str, object]:
    response = await client.post(
        "/products",
        json={
            "sku": sku,
            "name": f"Product {sku}",
            "price": price,
            "currency": currency,
            "stock": stock,
            "is_active": is_active,
        },
        headers=tokens.admin(),
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def place(
    client: httpx.AsyncClient, headers: dict[str, str], items: list[tuple[object, int]], *, key: str | None = None
) -> httpx.Response:
    return await client.post(
        "/orders",
        json={"items": [{"product_id": product_id, "quantity": quantity} for product_id, quantity in items]},
        headers={**headers, "Idempotency-Key": key or uuid.uuid4().hex},
    )
