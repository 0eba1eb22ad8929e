"""What reaches the database despite the boundary: never a 409 or a 500, never its parameters in a log."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from advanced_alchemy.exceptions import wrap_sqlalchemy_exception
from litestar import Litestar, get
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shared.db import service_engine
from shared.errors import exception_handlers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncEngine

    from devtools.stack.servers import PostgresServer

SECRET = "$argon2id$v=19$m=65536,t=3,p=4$c2VjcmV0"


@pytest.fixture
async def engine(postgres_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    engine = service_engine(postgres_server.url(), pool_size=1, null_pool=True)
    yield engine
    await engine.dispose()


async def test_database_errors_never_carry_the_bound_parameters(engine: AsyncEngine) -> None:
    with pytest.raises(DBAPIError) as failure:
        async with engine.connect() as connection:
            await connection.execute(text("INSERT INTO no_such_table (hash) VALUES (:hash)"), {"hash": SECRET})
    assert "no_such_table" in str(failure.value)
    assert SECRET not in str(failure.value)
    assert "parameters hidden" in str(failure.value)


@pytest.mark.parametrize(
    ("statement", "value"),
    [
        pytest.param("SELECT CAST(:value AS text)", "a\x00b", id="nul-in-text"),
        pytest.param("SELECT CAST(:value AS integer) + 0", 2**40, id="int-out-of-range"),
        pytest.param("SELECT CAST(:value AS bigint) * 4", 2**62, id="bigint-overflow"),
    ],
)
@pytest.mark.parametrize("wrapped", [True, False], ids=["repository", "core"])
async def test_a_value_the_database_refuses_is_a_400_never_409_or_500(
    engine: AsyncEngine, statement: str, value: object, wrapped: bool
) -> None:
    @get("/run")
    async def run() -> str:
        async with engine.connect() as connection:
            if wrapped:  # as advanced-alchemy's repositories do: it calls this an IntegrityError
                with wrap_sqlalchemy_exception():
                    await connection.execute(text(statement), {"value": value})
            else:
                await connection.execute(text(statement), {"value": value})
        return "stored"

    app = Litestar(route_handlers=[run], exception_handlers=exception_handlers(), openapi_config=None)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar's precise ASGI types
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/run")
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert str(value) not in response.text
