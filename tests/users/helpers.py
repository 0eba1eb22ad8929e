"""What users' tests share beside fixtures: a client's sign-up and sign-in, and reads of the schema."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from shared.events.contracts import decode_event
from users.cli import create_admin_account, main
from users.models import EVENT_TABLES, User

if TYPE_CHECKING:
    from collections.abc import Sequence

    import httpx
    from sqlalchemy import Row
    from sqlalchemy.sql import Executable

    from users.settings import UsersSettings

__all__ = (
    "PASSWORD",
    "admin_tokens",
    "bearer",
    "count_users",
    "login",
    "outbox_events",
    "read",
    "register",
    "signed_in",
    "users_command",
)

PASSWORD = "correct horse battery"


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


async def read(database_url: str, statement: Executable) -> Sequence[Row[Any]]:
    """The rows of ``statement`` on a connection of its own: what any other process sees committed."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(statement)).all()
    finally:
        await engine.dispose()


async def count_users(database_url: str) -> int:
    """How many accounts the schema holds."""
    return int((await read(database_url, select(func.count()).select_from(User)))[0][0])


async def admin_tokens(client: httpx.AsyncClient, settings: UsersSettings) -> dict[str, str]:
    """Tokens of a new administrator made by ``users create-admin``'s code."""
    _, created = await create_admin_account(settings, email="root@example.com", password=PASSWORD, display_name="Root")
    assert created
    return await login(client, "root@example.com")


async def outbox_events(database_url: str) -> list[tuple[str, object, int]]:
    """Every event in users' outbox, oldest first: (type, payload, sequence)."""
    rows = await read(database_url, select(EVENT_TABLES.outbox.c.body).order_by(EVENT_TABLES.outbox.c.id))
    decoded = [decode_event(row.body) for row in rows]
    return [(event.envelope.type, event.payload, event.envelope.sequence) for event in decoded]


async def users_command(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """Run ``users <args>``; its exit code and output."""
    # The commands call asyncio.run themselves: run them off this test's loop.
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args), input=stdin)
    return result.exit_code, result.output
