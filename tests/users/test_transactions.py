"""Every write of users is committed when its answer says so; a refused change leaves nothing behind,
except the attempts and revocations that must outlive the refusal (their own transaction, on purpose).

Each check reads Postgres on a connection of its own after the answer: what another process or
replica sees. A route that writes without a case here fails the walk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import NullPool, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from devtools.testing.transactions import (
    assert_committed_after_reads,
    assert_joins_callers_transaction,
    assert_leaves_no_transaction,
    public_calls,
)
from shared.auth import Principal
from shared.errors import Conflict, Forbidden, NotFound, Unauthorized
from shared.pagination import PageRequest
from tests.users.helpers import PASSWORD, admin_tokens, bearer, login, outbox_events, read, register, signed_in
from users.app import create_app, create_signer
from users.models import EVENT_TABLES, OUTBOX, LoginThrottle, RefreshToken, User
from users.passwords import PasswordHasher
from users.schemas import AdminUserUpdate, ProfileUpdate, RegisterUser
from users.service import UserService
from users.sign_in import SignInService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from typing import Any

    import httpx
    from sqlalchemy import Row
    from sqlalchemy.ext.asyncio import AsyncSession

    from users.settings import UsersSettings

    Case = Callable[[httpx.AsyncClient, UsersSettings], Awaitable[None]]

WRONG = "not the password"


async def _account(settings: UsersSettings, email: str) -> Row[Any]:
    rows = await read(settings.database_url, select(User.__table__).where(User.email == email))
    assert len(rows) == 1, email
    return rows[0]


async def _refresh_tokens(settings: UsersSettings, email: str) -> list[Row[Any]]:
    account = await _account(settings, email)
    statement = select(RefreshToken.__table__).where(RefreshToken.user_id == account.id).order_by(RefreshToken.id)
    return list(await read(settings.database_url, statement))


async def _attempts(settings: UsersSettings) -> dict[tuple[str, str], int]:
    rows = await read(settings.database_url, select(LoginThrottle.scope, LoginThrottle.key, LoginThrottle.attempts))
    return {(row.scope, row.key): row.attempts for row in rows}


def _hash(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode()).hexdigest()


async def _register(client: httpx.AsyncClient, settings: UsersSettings) -> None:
    account = await register(client, "new@example.com")
    assert str((await _account(settings, "new@example.com")).id) == account["id"]
    assert [kind for kind, _, _ in await outbox_events(settings.database_url)] == ["users.user.registered"]
    assert list((await _attempts(settings)).values()) == [1]  # the registration, counted


async def _sign_in(client: httpx.AsyncClient, settings: UsersSettings, tokens: dict[str, str]) -> None:
    (token,) = await _refresh_tokens(settings, "in@example.com")
    assert (token.token_hash, token.revoked_at, token.used_at) == (_hash(tokens["refresh_token"]), None, None)
    # The attempt taken before the verify was given back, in the same transaction as the token.
    attempts = await _attempts(settings)
    assert attempts[("account", "in@example.com")] == 0
    assert [count for (scope, _), count in attempts.items() if scope == "address"] == [0]


async def _login(client: httpx.AsyncClient, settings: UsersSettings) -> None:
    await register(client, "in@example.com")
    await _sign_in(client, settings, await login(client, "in@example.com"))


async def _token(client: httpx.AsyncClient, settings: UsersSettings) -> None:
    await register(client, "in@example.com")
    response = await client.post("/auth/token", data={"username": "in@example.com", "password": PASSWORD})
    assert response.status_code == 200, response.text
    await _sign_in(client, settings, response.json())


async def _refresh(client: httpx.AsyncClient, settings: UsersSettings) -> None:
    tokens = await signed_in(client, "rotate@example.com")
    response = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 200, response.text
    spent, fresh = await _refresh_tokens(settings, "rotate@example.com")
    assert spent.token_hash == _hash(tokens["refresh_token"])
    assert spent.used_at is not None
    assert (fresh.token_hash, fresh.family_id, fresh.used_at) == (
        _hash(response.json()["refresh_token"]),
        spent.family_id,
        None,
    )


async def _logout(client: httpx.AsyncClient, settings: UsersSettings) -> None:
    tokens = await signed_in(client, "out@example.com")
    assert (await client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})).status_code == 204
    assert all(token.revoked_at is not None for token in await _refresh_tokens(settings, "out@example.com"))
    account = await _account(settings, "out@example.com")
    assert (account.version, account.tokens_valid_after is not None) == (2, True)


async def _update_profile(client: httpx.AsyncClient, settings: UsersSettings) -> None:
    tokens = await signed_in(client, "me@example.com")
    response = await client.patch("/users/me", json={"display_name": "Renamed"}, headers=bearer(tokens))
    assert response.status_code == 200, response.text
    account = await _account(settings, "me@example.com")
    assert (account.display_name, account.version) == ("Renamed", 2)


async def _deactivate(client: httpx.AsyncClient, settings: UsersSettings) -> None:
    tokens = await signed_in(client, "gone@example.com")
    assert (await client.delete("/users/me", headers=bearer(tokens))).status_code == 204
    account = await _account(settings, "gone@example.com")
    assert (account.is_active, account.deactivated_at is not None) == (False, True)
    assert all(token.revoked_at is not None for token in await _refresh_tokens(settings, "gone@example.com"))


async def _administer(client: httpx.AsyncClient, settings: UsersSettings) -> None:
    account = await register(client, "staff@example.com")
    admin = bearer(await admin_tokens(client, settings))
    response = await client.patch(f"/users/{account['id']}", json={"role": "admin"}, headers=admin)
    assert response.status_code == 200, response.text
    assert (await _account(settings, "staff@example.com")).role == "admin"


WRITES: dict[tuple[str, str], Case] = {
    ("POST", "/auth/register"): _register,
    ("POST", "/auth/login"): _login,
    ("POST", "/auth/token"): _token,
    ("POST", "/auth/refresh"): _refresh,
    ("POST", "/auth/logout"): _logout,
    ("PATCH", "/users/me"): _update_profile,
    ("DELETE", "/users/me"): _deactivate,
    ("PATCH", "/users/{user_id:uuid}"): _administer,
}


def test_every_route_that_may_write_has_a_case(users_settings: UsersSettings) -> None:
    routes = {
        (method, route.path)
        for route in create_app(users_settings).routes
        for method in route.methods - {"GET", "HEAD", "OPTIONS"}
    }
    assert routes == set(WRITES)


@pytest.mark.parametrize("route", list(WRITES), ids=" ".join)
async def test_a_successful_write_is_committed(
    client: httpx.AsyncClient, users_settings: UsersSettings, route: tuple[str, str]
) -> None:
    await WRITES[route](client, users_settings)


async def test_a_failed_sign_in_stays_counted(client: httpx.AsyncClient, users_settings: UsersSettings) -> None:
    await register(client, "in@example.com")
    response = await client.post("/auth/login", json={"email": "in@example.com", "password": WRONG})
    assert response.status_code == 401
    attempts = await _attempts(users_settings)
    assert attempts[("account", "in@example.com")] == 1
    assert [count for (scope, _), count in attempts.items() if scope == "address"] == [1]


async def test_a_refused_registration_stays_counted(client: httpx.AsyncClient, users_settings: UsersSettings) -> None:
    await register(client, "new@example.com")
    again = await client.post(
        "/auth/register", json={"email": "NEW@example.com", "password": PASSWORD, "display_name": "Again"}
    )
    assert again.status_code == 409
    assert list((await _attempts(users_settings)).values()) == [2]
    assert [kind for kind, _, _ in await outbox_events(users_settings.database_url)] == ["users.user.registered"]


async def test_a_wrong_current_password_stays_counted(client: httpx.AsyncClient, users_settings: UsersSettings) -> None:
    tokens = await signed_in(client, "me@example.com")
    response = await client.patch(
        "/users/me", json={"password": "a brand new secret", "current_password": WRONG}, headers=bearer(tokens)
    )
    assert response.status_code == 403
    assert (await _attempts(users_settings))[("account", "me@example.com")] == 1  # the sign-in gave its own back
    assert (await _account(users_settings, "me@example.com")).version == 1


async def test_a_reused_refresh_token_is_refused_and_its_family_stays_revoked(
    client: httpx.AsyncClient, users_settings: UsersSettings
) -> None:
    tokens = await signed_in(client, "stolen@example.com")
    assert (await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 200
    replay = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert replay.status_code == 401
    family = await _refresh_tokens(users_settings, "stolen@example.com")
    assert len(family) == 2
    assert all(token.revoked_at is not None for token in family)
    account = await _account(users_settings, "stolen@example.com")
    assert (account.version, account.tokens_valid_after is not None) == (2, True)
    events = await outbox_events(users_settings.database_url)
    assert [(kind, sequence) for kind, _, sequence in events] == [
        ("users.user.registered", 1),
        ("users.user.updated", 2),
    ]


async def test_a_refused_profile_change_writes_none_of_it(
    client: httpx.AsyncClient, users_settings: UsersSettings
) -> None:
    await register(client, "taken@example.com")
    tokens = await signed_in(client, "mover@example.com")
    response = await client.patch(
        "/users/me",
        json={"display_name": "Half", "email": "taken@example.com", "current_password": PASSWORD},
        headers=bearer(tokens),
    )
    assert response.status_code == 409
    account = await _account(users_settings, "mover@example.com")
    assert (account.display_name, account.version) == ("Ada", 1)
    events = await outbox_events(users_settings.database_url)
    assert [kind for kind, _, _ in events] == ["users.user.registered"] * 2
    # The right current_password was given back in the change's transaction, rolled back with it.
    assert (await _attempts(users_settings))[("account", "mover@example.com")] == 1


async def test_an_administrator_refused_a_self_demotion_stays_an_administrator(
    client: httpx.AsyncClient, users_settings: UsersSettings
) -> None:
    admin = bearer(await admin_tokens(client, users_settings))
    me = (await client.get("/users/me", headers=admin)).json()
    assert (await client.patch(f"/users/{me['id']}", json={"role": "user"}, headers=admin)).status_code == 409
    account = await _account(users_settings, "root@example.com")
    assert (account.role, account.version, account.tokens_valid_after) == ("admin", 1, None)


# The services themselves, on sessions the test holds: every call is one unit of work.


@dataclass(frozen=True)
class Account:
    """A signed-in user (one refresh token) and an administrator to act on them."""

    settings: UsersSettings
    user_id: uuid.UUID
    refresh_token: str
    admin: Principal

    def users(self, session: AsyncSession) -> UserService:
        return UserService(session=session, settings=self.settings, hasher=HASHER, outbox=OUTBOX)

    def sign_in(self, session: AsyncSession) -> SignInService:
        signer = create_signer(self.settings)
        return SignInService(session=session, settings=self.settings, signer=signer, hasher=HASHER, outbox=OUTBOX)

    async def stored(self) -> list[object]:
        """What another connection sees of the schema: accounts, refresh tokens, counters, events."""
        tables = (User.__table__, RefreshToken.__table__, LoginThrottle.__table__, EVENT_TABLES.outbox)
        return [sorted(map(tuple, await read(self.settings.database_url, select(table)))) for table in tables]


if TYPE_CHECKING:
    Call = Callable[[AsyncSession, Account], Awaitable[object]]

HASHER = PasswordHasher(time_cost=1, memory_kib=8192)
ADDRESS = "192.0.2.1"
READS: dict[str, Call] = {
    "UserService.get_active": lambda session, account: account.users(session).get_active(account.user_id),
    "UserService.get": lambda session, account: account.users(session).get(account.user_id),
    "UserService.list": lambda session, account: account.users(session).list(
        search="ada", page=PageRequest(limit=20, offset=0)
    ),
}
SERVICE_WRITES: dict[str, Call] = {
    "UserService.register": lambda session, account: account.users(session).register(
        RegisterUser(email="new@example.com", password=PASSWORD, display_name="New"), client_address=ADDRESS
    ),
    "UserService.create_admin": lambda session, account: account.users(session).create_admin(
        email="boss@example.com", password=PASSWORD, display_name="Boss"
    ),
    "UserService.update_profile": lambda session, account: account.users(session).update_profile(
        account.user_id, ProfileUpdate(password="a brand new secret", current_password=PASSWORD), client_address=ADDRESS
    ),
    "UserService.deactivate": lambda session, account: account.users(session).deactivate(account.user_id),
    "UserService.administer": lambda session, account: account.users(session).administer(
        account.admin, account.user_id, AdminUserUpdate(role="admin")
    ),
    "SignInService.login": lambda session, account: account.sign_in(session).login(
        email="ada@example.com", password=PASSWORD, client_address=ADDRESS
    ),
    "SignInService.refresh": lambda session, account: account.sign_in(session).refresh(account.refresh_token),
    "SignInService.logout": lambda session, account: account.sign_in(session).logout(account.refresh_token),
}
REFUSALS: dict[str, tuple[Call, type[Exception]]] = {
    "a wrong password": (
        lambda session, account: account.sign_in(session).login(
            email="ada@example.com", password=WRONG, client_address=ADDRESS
        ),
        Unauthorized,
    ),
    "a taken email": (
        lambda session, account: account.users(session).register(
            RegisterUser(email="ada@example.com", password=PASSWORD, display_name="Again"), client_address=ADDRESS
        ),
        Conflict,
    ),
    "a wrong current password": (
        lambda session, account: account.users(session).update_profile(
            account.user_id, ProfileUpdate(email="moved@example.com", current_password=WRONG), client_address=ADDRESS
        ),
        Forbidden,
    ),
    "an unknown account": (
        lambda session, account: account.users(session).administer(
            account.admin, uuid.uuid4(), AdminUserUpdate(role="admin")
        ),
        NotFound,
    ),
}


@pytest.fixture
async def sessions(users_settings: UsersSettings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(users_settings.database_url, poolclass=NullPool)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


@pytest.fixture
async def account(users_settings: UsersSettings, sessions: async_sessionmaker[AsyncSession]) -> Account:
    async with sessions() as session:
        users = UserService(session=session, settings=users_settings, hasher=HASHER, outbox=OUTBOX)
        user = await users.register(
            RegisterUser(email="ada@example.com", password=PASSWORD, display_name="Ada"), client_address=ADDRESS
        )
    admin = Principal(id=uuid.uuid4(), roles=frozenset({"admin"}), token_id="t", expires_at=0, issued_at_us=0)
    account = Account(settings=users_settings, user_id=user.id, refresh_token="", admin=admin)
    async with sessions() as session:
        tokens = await account.sign_in(session).login(
            email="ada@example.com", password=PASSWORD, client_address=ADDRESS
        )
    return dataclasses.replace(account, refresh_token=tokens.refresh_token)


def _on(account: Account, call: Call) -> Callable[[AsyncSession], Awaitable[object]]:
    return lambda session: call(session, account)


def test_every_call_of_the_services_is_walked_here() -> None:
    """A new method must be added to READS or SERVICE_WRITES, so these tests cover it too."""
    assert public_calls(UserService, SignInService) == set(READS) | set(SERVICE_WRITES)


@pytest.mark.parametrize("name", sorted(READS | SERVICE_WRITES))
async def test_a_call_leaves_no_transaction_open_behind_it(
    name: str, account: Account, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await assert_leaves_no_transaction(sessions, _on(account, (READS | SERVICE_WRITES)[name]))


@pytest.mark.parametrize("name", sorted(SERVICE_WRITES))
async def test_a_write_is_committed_when_it_returns_even_after_reads_on_the_same_session(
    name: str, account: Account, sessions: async_sessionmaker[AsyncSession]
) -> None:
    reads = [_on(account, read_call) for read_call in READS.values()]
    await assert_committed_after_reads(sessions, _on(account, SERVICE_WRITES[name]), reads=reads, stored=account.stored)


@pytest.mark.parametrize("name", sorted(SERVICE_WRITES))
async def test_a_write_inside_the_callers_transaction_joins_it_and_goes_with_its_rollback(
    name: str, account: Account, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await assert_joins_callers_transaction(sessions, _on(account, SERVICE_WRITES[name]), stored=account.stored)


@pytest.mark.parametrize("name", sorted(REFUSALS))
async def test_a_refused_call_leaves_nothing_open_and_the_next_call_still_commits(
    name: str, account: Account, sessions: async_sessionmaker[AsyncSession]
) -> None:
    call, refusal = REFUSALS[name]
    async with sessions() as session:
        with pytest.raises(refusal):
            await call(session, account)
        assert not session.in_transaction()
        await account.users(session).update_profile(
            account.user_id, ProfileUpdate(display_name="Next"), client_address=ADDRESS
        )
    assert (await _account(account.settings, "ada@example.com")).display_name == "Next"
