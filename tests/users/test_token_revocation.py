"""Access tokens stop working when what they stood for is revoked: users sets ``tokens_valid_after``,
refuses older tokens itself, and tells the replicas through its events."""

from __future__ import annotations

import datetime
import uuid
from typing import TYPE_CHECKING

import jwt
import msgspec
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.testing import eventually, serve_app
from shared.auth import Principal
from shared.events.contracts import UserDeactivated, UserUpdated
from shared.revocations import REVOCATION_DETAIL, TokenRevocations, microseconds
from tests.users.helpers import PASSWORD, bearer, login, outbox_events, register
from users.app import create_app
from users.models import User

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    import httpx

    from users.settings import UsersSettings

NEW_PASSWORD = "another good password"


@pytest.fixture
async def quick(users_settings: UsersSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The users app reloading revocations every 0.1 s, with an administrator to act."""
    async with serve_app(create_app(msgspec.structs.replace(users_settings, token_revocation_poll_seconds=0.1))) as c:
        yield c


async def _admin(client: httpx.AsyncClient, users_settings: UsersSettings) -> dict[str, str]:
    await register(client, "boss@example.com")
    engine = create_async_engine(users_settings.database_url)
    async with engine.begin() as connection:
        await connection.execute(update(User).where(User.email == "boss@example.com").values(role="admin"))
    await engine.dispose()
    return bearer(await login(client, "boss@example.com"))


async def _refused(client: httpx.AsyncClient, headers: dict[str, str]) -> bool:
    response = await client.get("/users/me", headers=headers)
    if response.status_code != 401:
        return False
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()["detail"] in (REVOCATION_DETAIL, "This account is deactivated.")


if TYPE_CHECKING:
    Trigger = Callable[[httpx.AsyncClient, dict[str, str], dict[str, str], dict[str, str]], Awaitable[None]]


async def _demote(client: httpx.AsyncClient, admin: dict[str, str], tokens: dict[str, str], me: dict[str, str]) -> None:
    assert (await client.patch(f"/users/{me['id']}", headers=admin, json={"role": "user"})).status_code == 200


async def _promote(
    client: httpx.AsyncClient, admin: dict[str, str], tokens: dict[str, str], me: dict[str, str]
) -> None:
    assert (await client.patch(f"/users/{me['id']}", headers=admin, json={"role": "admin"})).status_code == 200


async def _deactivate(
    client: httpx.AsyncClient, admin: dict[str, str], tokens: dict[str, str], me: dict[str, str]
) -> None:
    assert (await client.patch(f"/users/{me['id']}", headers=admin, json={"is_active": False})).status_code == 200


async def _change_password(
    client: httpx.AsyncClient, admin: dict[str, str], tokens: dict[str, str], me: dict[str, str]
) -> None:
    body = {"password": NEW_PASSWORD, "current_password": PASSWORD}
    assert (await client.patch("/users/me", headers=bearer(tokens), json=body)).status_code == 200


async def _logout(client: httpx.AsyncClient, admin: dict[str, str], tokens: dict[str, str], me: dict[str, str]) -> None:
    assert (await client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})).status_code == 204


async def _reuse_refresh_token(
    client: httpx.AsyncClient, admin: dict[str, str], tokens: dict[str, str], me: dict[str, str]
) -> None:
    assert (await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 200
    assert (await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 401


@pytest.mark.parametrize(
    "trigger",
    [_demote, _promote, _deactivate, _change_password, _logout, _reuse_refresh_token],
    ids=["demote", "promote", "deactivate", "change-password", "logout", "refresh-reuse"],
)
async def test_each_revocation_voids_older_access_tokens_and_tells_the_replicas(
    quick: httpx.AsyncClient, users_settings: UsersSettings, trigger: Trigger
) -> None:
    admin = await _admin(quick, users_settings)
    me = await register(quick, "member@example.com")
    if trigger is _demote:
        await _promote(quick, admin, {}, me)
    tokens = await login(quick, "member@example.com")
    before = datetime.datetime.now(datetime.UTC)
    await trigger(quick, admin, tokens, me)

    await eventually(lambda: _refused(quick, bearer(tokens)), within=10, what="the old access token refused")
    events = [(kind, payload) for kind, payload, _ in await outbox_events(users_settings.database_url)]
    kind, payload = events[-1]
    assert kind in ("users.user.updated", "users.user.deactivated")
    assert isinstance(payload, UserUpdated | UserDeactivated)
    assert payload.user_id == uuid.UUID(me["id"])
    assert payload.tokens_valid_after is not None
    assert payload.tokens_valid_after > before


async def test_a_demoted_administrators_old_token_loses_admin_rights_and_a_new_one_has_none(
    quick: httpx.AsyncClient, users_settings: UsersSettings
) -> None:
    admin = await _admin(quick, users_settings)
    me = await register(quick, "second@example.com")
    assert (await quick.patch(f"/users/{me['id']}", headers=admin, json={"role": "admin"})).status_code == 200
    tokens = await login(quick, "second@example.com")
    assert (await quick.get("/users", headers=bearer(tokens))).status_code == 200
    assert (await quick.patch(f"/users/{me['id']}", headers=admin, json={"role": "user"})).status_code == 200

    async def admin_route_refused() -> bool:
        return (await quick.get("/users", headers=bearer(tokens))).status_code == 401

    await eventually(admin_route_refused, within=10, what="the demoted administrator's token refused")
    # Signing in or refreshing right away (within the same second) gives a working token, without admin rights.
    for fresh in (
        await login(quick, "second@example.com"),
        (await quick.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).json(),
    ):
        assert (await quick.get("/users/me", headers=bearer(fresh))).status_code == 200
        assert (await quick.get("/users", headers=bearer(fresh))).status_code == 403


async def test_tokens_issued_right_after_a_revocation_work_at_once(quick: httpx.AsyncClient) -> None:
    await register(quick, "quick@example.com")
    old = await login(quick, "quick@example.com")
    assert (await quick.post("/auth/logout", json={"refresh_token": old["refresh_token"]})).status_code == 204
    new = await login(quick, "quick@example.com")
    claims = jwt.decode(new["access_token"], options={"verify_signature": False})
    assert claims["iat_us"] // 1_000_000 == claims["iat"]
    assert (await quick.get("/users/me", headers=bearer(new))).status_code == 200
    await eventually(lambda: _refused(quick, bearer(old)), within=10, what="the signed-out token refused")
    assert (await quick.get("/users/me", headers=bearer(new))).status_code == 200


def _principal(user_id: uuid.UUID, issued_at_us: int) -> Principal:
    return Principal(id=user_id, roles=frozenset({"user"}), token_id="t", expires_at=0, issued_at_us=issued_at_us)


def test_within_one_second_the_microseconds_decide() -> None:
    # iat has whole seconds: a token issued 1 µs before the revocation, in the same second, must be refused,
    # and one issued 1 µs after it accepted; a token without iat_us counts from the start of its second.
    revocations = TokenRevocations(User.id, User.tokens_valid_after)
    user_id = uuid.uuid4()
    revoked_at = datetime.datetime(2030, 1, 1, 12, 0, 0, 500_000, tzinfo=datetime.UTC)
    revocations.apply({user_id: microseconds(revoked_at)})
    same_second = microseconds(revoked_at.replace(microsecond=0))
    assert revocations.is_revoked(_principal(user_id, microseconds(revoked_at) - 1))
    assert not revocations.is_revoked(_principal(user_id, microseconds(revoked_at) + 1))
    assert revocations.is_revoked(_principal(user_id, same_second))  # legacy token of that second
    assert not revocations.is_revoked(_principal(uuid.uuid4(), 0))  # other accounts are untouched


def test_revocation_watchers_hear_only_of_newer_revocations() -> None:
    revocations = TokenRevocations(User.id, User.tokens_valid_after)
    user_id = uuid.uuid4()
    heard: list[int] = []
    unwatch = revocations.watch(user_id, heard.append)
    revocations.apply({user_id: 10})
    revocations.apply({user_id: 10})
    revocations.apply({user_id: 20})
    unwatch()
    revocations.apply({user_id: 30})
    assert heard == [10, 20]
