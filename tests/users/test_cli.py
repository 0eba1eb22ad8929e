"""The ``users`` command: create-admin and the events operations."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.users.helpers import register, users_command

if TYPE_CHECKING:
    import httpx


@pytest.mark.usefixtures("users_environment")
async def test_events_status_shows_the_outbox_backlog(client: httpx.AsyncClient) -> None:
    await register(client, "one@example.com")
    await register(client, "two@example.com")
    code, output = await users_command("events", "status")
    assert code == 0, output
    assert "outbox backlog: 2" in output


@pytest.mark.usefixtures("users_environment", "jetstream")
async def test_dead_letters_lists_none_and_replay_needs_a_sequence() -> None:
    code, output = await users_command("events", "dead-letters")
    assert (code, output.strip()) == (0, "0 dead letter(s)")
    code, output = await users_command("events", "replay")
    assert code == 2
    assert "sequence" in output


@pytest.mark.usefixtures("users_environment")
async def test_create_admin_prompts_for_the_password_and_refuses_a_short_one(client: httpx.AsyncClient) -> None:
    code, output = await users_command(
        "create-admin", "--email", "boss@example.com", stdin="long enough pw\nlong enough pw\n"
    )
    assert code == 0, output
    assert "created admin boss@example.com" in output
    code, output = await users_command("create-admin", "--email", "tiny@example.com", stdin="short\nshort\n")
    assert code == 1
    assert "at least 10 characters" in output
