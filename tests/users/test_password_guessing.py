"""Password guessing: every check costs one verify, attempts are taken before verifying, and the
limits hold for bursts, for ``current_password``, for registrations, and per real client address."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec
import pytest

from devtools.testing import serve_app
from tests.users.helpers import PASSWORD, bearer, login, register
from users.app import create_app
from users.passwords import PasswordHasher

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx

    from users.settings import UsersSettings

WRONG = "not the password"


class CountingHasher(PasswordHasher):
    """The real argon2 hasher, counting its verifies: ``real`` against an account's hash, ``all`` of them."""

    def __init__(self, settings: UsersSettings) -> None:
        super().__init__(time_cost=settings.password_hash_time_cost, memory_kib=settings.password_hash_memory_kib)
        self.real = 0
        self.all = 0

    async def verify(self, password_hash: str | None, password: str) -> bool:
        self.all += 1
        if password_hash is not None:
            self.real += 1
        return await super().verify(password_hash, password)


@pytest.fixture
def hasher(users_settings: UsersSettings) -> CountingHasher:
    return CountingHasher(users_settings)


@pytest.fixture
async def counted(users_settings: UsersSettings, hasher: CountingHasher) -> AsyncIterator[httpx.AsyncClient]:
    # Enough connections that the burst really runs side by side rather than queueing for the pool.
    settings = msgspec.structs.replace(users_settings, database_pool_size=25)
    async with serve_app(create_app(settings, hasher=hasher)) as client:
        yield client


async def _attempt(client: httpx.AsyncClient, email: str, password: str) -> int:
    return (await client.post("/auth/login", json={"email": email, "password": password})).status_code


@pytest.mark.parametrize("burst", [20, 50])
async def test_a_concurrent_burst_gets_at_most_the_limit_verified(
    counted: httpx.AsyncClient, hasher: CountingHasher, burst: int
) -> None:
    await register(counted, "burst@example.com")
    hasher.real = 0
    passwords = [f"{WRONG} {index}" for index in range(burst)]
    statuses = await asyncio.gather(*(_attempt(counted, "burst@example.com", password) for password in passwords))
    assert hasher.real <= 5, statuses
    assert statuses.count(401) == hasher.real, statuses
    assert statuses.count(429) == burst - hasher.real, statuses
    # The burst spent the limit: even the right password is refused now, unverified.
    hasher.real = 0
    assert await _attempt(counted, "burst@example.com", PASSWORD) == 429
    assert hasher.real == 0


@pytest.mark.parametrize(
    "path",
    ["unknown email", "wrong password", "deactivated account", "throttled account", "right password"],
)
async def test_every_sign_in_path_costs_exactly_one_verify(
    counted: httpx.AsyncClient, hasher: CountingHasher, path: str
) -> None:
    # The same argon2 work on every path: an unknown email cannot answer faster than a known one.
    await register(counted, "known@example.com")
    email, password, expected = "known@example.com", WRONG, 401
    if path == "unknown email":
        email = "nobody@example.com"
    elif path == "deactivated account":
        tokens = await login(counted, "known@example.com")
        assert (await counted.delete("/users/me", headers=bearer(tokens))).status_code == 204
    elif path == "throttled account":
        for _ in range(5):
            assert await _attempt(counted, email, WRONG) == 401
        password, expected = PASSWORD, 429
    elif path == "right password":
        password, expected = PASSWORD, 200
    hasher.all = 0
    assert await _attempt(counted, email, password) == expected
    assert hasher.all == 1


async def test_unknown_and_known_emails_are_throttled_alike(counted: httpx.AsyncClient) -> None:
    # A 429 for known emails only would tell which emails have accounts.
    await register(counted, "known@example.com")
    for email in ("known@example.com", "nobody@example.com"):
        statuses = [await _attempt(counted, email, WRONG) for _ in range(6)]
        assert statuses == [401] * 5 + [429]


async def test_a_successful_sign_in_gives_its_attempt_back(counted: httpx.AsyncClient) -> None:
    await register(counted, "regular@example.com")
    for _ in range(4):
        assert await _attempt(counted, "regular@example.com", WRONG) == 401
    for _ in range(5):  # signing in often does not eat the budget...
        assert await _attempt(counted, "regular@example.com", PASSWORD) == 200
    assert await _attempt(counted, "regular@example.com", WRONG) == 401
    # ...nor does it reset the failures: the fifth failure closed the window.
    assert await _attempt(counted, "regular@example.com", PASSWORD) == 429


async def test_current_password_guesses_count_like_failed_sign_ins(
    counted: httpx.AsyncClient, hasher: CountingHasher
) -> None:
    await register(counted, "owner@example.com")
    tokens = await login(counted, "owner@example.com")
    hasher.real = 0
    guesses = [
        counted.patch(
            "/users/me",
            headers=bearer(tokens),
            json={"password": "brand new password", "current_password": f"{WRONG} {n}"},
        )
        for n in range(30)
    ]
    statuses = [response.status_code for response in await asyncio.gather(*guesses)]
    assert hasher.real <= 5
    assert statuses.count(403) == hasher.real
    assert statuses.count(429) == 30 - hasher.real
    # The same account counter as sign-in: the right current password and the sign-in form are refused too.
    right = await counted.patch(
        "/users/me", headers=bearer(tokens), json={"email": "moved@example.com", "current_password": PASSWORD}
    )
    assert right.status_code == 429
    assert right.headers["content-type"] == "application/problem+json"
    assert await _attempt(counted, "owner@example.com", PASSWORD) == 429


async def test_right_current_password_is_not_counted(counted: httpx.AsyncClient) -> None:
    await register(counted, "changer@example.com")
    tokens = await login(counted, "changer@example.com")
    for index in range(6):
        response = await counted.patch(
            "/users/me",
            headers=bearer(tokens),
            json={"email": f"changer{index}@example.com", "current_password": PASSWORD},
        )
        assert response.status_code == 200, response.text


async def test_registrations_are_limited_per_address(users_settings: UsersSettings) -> None:
    settings = msgspec.structs.replace(users_settings, registration_max_per_address=3)
    async with serve_app(create_app(settings), client_address="10.20.30.40") as client:
        await register(client, "first@example.com")
        taken = await client.post(
            "/auth/register", json={"email": "first@example.com", "password": PASSWORD, "display_name": "Again"}
        )
        assert taken.status_code == 409  # a refused registration counts too
        await register(client, "third@example.com")
        limited = await client.post(
            "/auth/register", json={"email": "fourth@example.com", "password": PASSWORD, "display_name": "Four"}
        )
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= settings.registration_window_seconds
        assert limited.headers["content-type"] == "application/problem+json"
    async with serve_app(create_app(settings), client_address="10.20.30.41") as elsewhere:
        await register(elsewhere, "fourth@example.com")


async def _fail_until_limited(client: httpx.AsyncClient, headers: dict[str, str], limit: int) -> None:
    for index in range(limit):
        response = await client.post(
            "/auth/login", headers=headers, json={"email": f"guess{index}@example.com", "password": WRONG}
        )
        assert response.status_code == 401
    response = await client.post("/auth/login", headers=headers, json={"email": "next@example.com", "password": WRONG})
    assert response.status_code == 429


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(users_settings: UsersSettings) -> None:
    # Without trusted proxies, rotating X-Forwarded-For does not buy a fresh per-address budget.
    settings = msgspec.structs.replace(users_settings, login_max_failures_per_address=3)
    async with serve_app(create_app(settings), client_address="198.51.100.7") as client:
        for index in range(3):
            response = await client.post(
                "/auth/login",
                headers={"X-Forwarded-For": f"203.0.113.{index}"},
                json={"email": f"guess{index}@example.com", "password": WRONG},
            )
            assert response.status_code == 401
        spoofed = await client.post(
            "/auth/login",
            headers={"X-Forwarded-For": "203.0.113.99"},
            json={"email": "x@example.com", "password": WRONG},
        )
        assert spoofed.status_code == 429


async def test_behind_a_trusted_proxy_each_client_has_its_own_budget(users_settings: UsersSettings) -> None:
    settings = msgspec.structs.replace(
        users_settings, login_max_failures_per_address=3, trusted_proxies=("10.0.0.0/8",)
    )
    async with serve_app(create_app(settings), client_address="10.1.2.3") as ingress:
        await register(ingress, "someone@example.com")
        # One client behind the ingress locks itself out...
        await _fail_until_limited(ingress, {"X-Forwarded-For": "203.0.113.5"}, 3)
        # ...whatever it writes left of what the ingress appended...
        spoofed = await ingress.post(
            "/auth/login",
            headers={"X-Forwarded-For": "192.0.2.1, 203.0.113.5"},
            json={"email": "someone@example.com", "password": PASSWORD},
        )
        assert spoofed.status_code == 429
        # ...and nobody else: another client through the same ingress signs in.
        other = await ingress.post(
            "/auth/login",
            headers={"X-Forwarded-For": "203.0.113.6"},
            json={"email": "someone@example.com", "password": PASSWORD},
        )
        assert other.status_code == 200, other.text
