"""Accounts stored before emails had one canonical form get it once, so they can still sign in."""

from __future__ import annotations

import asyncio
import unicodedata
import uuid
from typing import TYPE_CHECKING

from alembic import command
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.testing.database import migrate_fresh_database
from users.app import DATABASE

if TYPE_CHECKING:
    from devtools.stack.servers import PostgresServer

BEFORE = "12c3a8ad20ef"


async def test_stored_emails_become_canonical_unless_two_accounts_are_look_alikes(
    postgres_server: PostgresServer,
) -> None:
    url = await migrate_fresh_database(postgres_server, DATABASE, "users_canonical_emails")
    await asyncio.to_thread(command.downgrade, DATABASE.alembic_config(url), BEFORE)
    stored = {
        "unicode-domain": "ünï@exämple.com",
        "nfd": unicodedata.normalize("NFD", "zoë@example.com"),
        "plain": "ada@example.com",
        "twin-a": "bob@bücher.de",
        "twin-b": "bob@xn--bcher-kva.de",
        "not-an-address": "not an address",
    }
    ids = {name: uuid.uuid4() for name in stored}
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            for name, email in stored.items():
                await connection.execute(
                    text(
                        "INSERT INTO users.user_account (id, email, password_hash, display_name, role,"
                        " is_active, version, created_at, updated_at)"
                        " VALUES (:id, :email, 'x', 'N', 'user', true, 1, now(), now())"
                    ),
                    {"id": ids[name], "email": email},
                )
        await asyncio.to_thread(DATABASE.upgrade, url)
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT id, email FROM users.user_account"))
            after = {row.id: row.email for row in rows}
    finally:
        await engine.dispose()

    assert after[ids["unicode-domain"]] == "ünï@xn--exmple-cua.com"
    assert after[ids["nfd"]] == "zoë@example.com"
    assert after[ids["plain"]] == "ada@example.com"
    assert (after[ids["twin-a"]], after[ids["twin-b"]]) == ("bob@bücher.de", "bob@xn--bcher-kva.de")
    assert after[ids["not-an-address"]] == "not an address"
