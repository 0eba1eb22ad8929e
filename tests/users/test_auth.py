from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from devtools.testing import serve_app
from shared.auth import AccessTokenSigner, generate_private_key_pem, keys_from_jwks
from shared.events.topology import SERVICE_NAMES
from tests.users.helpers import PASSWORD, bearer, login, register, signed_in
from users.app import create_app

if TYPE_CHECKING:
    import httpx

    from users.settings import UsersSettings


async def test_registered_user_can_sign_in_with_json_and_use_the_access_token(client: httpx.AsyncClient) -> None:
    account = await register(client, "Ada@Example.com ")
    assert account["email"] == "ada@example.com"
    assert account["role"] == "user"

    tokens = await login(client, "ADA@example.com")
    me = await client.get("/users/me", headers=bearer(tokens))

    assert me.status_code == 200
    assert me.json()["id"] == account["id"]
    assert tokens["token_type"] == "bearer"
    assert int(tokens["expires_in"]) == 900


async def test_oauth2_password_form_signs_in(client: httpx.AsyncClient) -> None:
    await register(client, "form@example.com")
    response = await client.post(
        "/auth/token", data={"grant_type": "password", "username": "form@example.com", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    assert (await client.get("/users/me", headers=bearer(response.json()))).status_code == 200


async def test_access_token_carries_issuer_audiences_subject_roles_and_id(
    client: httpx.AsyncClient, private_key_pem: str
) -> None:
    account = await register(client, "claims@example.com")
    tokens = await login(client, "claims@example.com")
    public_key = AccessTokenSigner(private_key_pem, issuer="users", audiences=["x"], ttl_seconds=1).public_key
    claims = jwt.decode(tokens["access_token"], public_key, algorithms=["EdDSA"], audience="orders")
    assert claims["iss"] == "users"
    assert set(claims["aud"]) == set(SERVICE_NAMES)  # every declared service
    assert claims["sub"] == account["id"]
    assert claims["roles"] == ["user"]
    assert claims["exp"] - claims["iat"] == 900
    assert claims["jti"]


async def test_duplicate_email_in_any_case_is_a_conflict(client: httpx.AsyncClient) -> None:
    await register(client, "dup@example.com")
    response = await client.post(
        "/auth/register", json={"email": "DUP@example.com", "password": PASSWORD, "display_name": "Other"}
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 409


async def test_wrong_email_and_wrong_password_get_the_same_answer(client: httpx.AsyncClient) -> None:
    await register(client, "who@example.com")
    wrong_password = await client.post("/auth/login", json={"email": "who@example.com", "password": "not the password"})
    wrong_email = await client.post("/auth/login", json={"email": "nobody@example.com", "password": PASSWORD})
    assert wrong_password.status_code == wrong_email.status_code == 401
    assert wrong_password.json() == wrong_email.json()


@pytest.mark.parametrize(
    ("password", "status"),
    [("short", 400), ("pw@example.com", 422), ("PW@EXAMPLE.COM", 422)],
)
async def test_weak_passwords_are_refused(client: httpx.AsyncClient, password: str, status: int) -> None:
    response = await client.post(
        "/auth/register", json={"email": "pw@example.com", "password": password, "display_name": "Pw"}
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


async def test_refresh_rotates_and_each_refresh_token_works_once(client: httpx.AsyncClient) -> None:
    tokens = await signed_in(client, "rotate@example.com")
    rotated = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert rotated.status_code == 200
    assert rotated.json()["refresh_token"] != tokens["refresh_token"]
    assert (await client.get("/users/me", headers=bearer(rotated.json()))).status_code == 200


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(client: httpx.AsyncClient) -> None:
    tokens = await signed_in(client, "reuse@example.com")
    other_sign_in = await login(client, "reuse@example.com")
    rotated = (await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).json()

    replay = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    after_replay = await client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    other_family = await client.post("/auth/refresh", json={"refresh_token": other_sign_in["refresh_token"]})

    assert replay.status_code == 401
    assert after_replay.status_code == 401
    assert other_family.status_code == 200


async def test_logout_revokes_the_refresh_token(client: httpx.AsyncClient) -> None:
    tokens = await signed_in(client, "bye@example.com")
    assert (await client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})).status_code == 204
    assert (await client.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})).status_code == 204
    refresh = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status_code == 401


async def test_unknown_refresh_token_is_unauthorized(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/refresh", json={"refresh_token": "made-up"})
    assert response.status_code == 401


async def test_failed_logins_per_account_are_limited_with_retry_after(client: httpx.AsyncClient) -> None:
    await register(client, "victim@example.com")
    for _ in range(5):
        response = await client.post("/auth/login", json={"email": "victim@example.com", "password": "guess guess 1"})
        assert response.status_code == 401
    limited = await client.post("/auth/login", json={"email": "victim@example.com", "password": PASSWORD})
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 900
    assert limited.headers["content-type"] == "application/problem+json"


async def test_failed_logins_per_address_are_limited_across_processes(users_settings: UsersSettings) -> None:
    # Two app instances stand for two processes: the count lives in Postgres, not in memory.
    settings = msgspec.structs.replace(users_settings, login_max_failures_per_address=4)
    async with (
        serve_app(create_app(settings), client_address="10.9.8.7") as first,
        serve_app(create_app(settings), client_address="10.9.8.7") as second,
    ):
        await register(first, "one@example.com")
        for index in range(4):
            client = first if index % 2 else second
            response = await client.post(
                "/auth/login", json={"email": f"guess{index}@example.com", "password": "x" * 10}
            )
            assert response.status_code == 401
        limited = await first.post("/auth/login", json={"email": "one@example.com", "password": PASSWORD})
        assert limited.status_code == 429
    async with serve_app(create_app(settings), client_address="10.1.1.1") as elsewhere:
        assert (
            await elsewhere.post("/auth/login", json={"email": "one@example.com", "password": PASSWORD})
        ).status_code == 200


def _token(signer: AccessTokenSigner, subject: uuid.UUID, now: int | None = None) -> str:
    return signer.sign(subject=subject, roles=["user"], now=now)


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(
            lambda key, sub: _token(
                AccessTokenSigner(key, issuer="users", audiences=["users"], ttl_seconds=60),
                sub,
                now=int(time.time()) - 3600,
            ),
            id="expired",
        ),
        pytest.param(
            lambda key, sub: _token(
                AccessTokenSigner(generate_private_key_pem(), issuer="users", audiences=["users"], ttl_seconds=60), sub
            ),
            id="other-key",
        ),
        pytest.param(
            lambda key, sub: _token(
                AccessTokenSigner(key, issuer="intruder", audiences=["users"], ttl_seconds=60), sub
            ),
            id="wrong-issuer",
        ),
        pytest.param(
            lambda key, sub: _token(AccessTokenSigner(key, issuer="users", audiences=["billing"], ttl_seconds=60), sub),
            id="wrong-audience",
        ),
        pytest.param(
            lambda key, sub: (
                _token(AccessTokenSigner(key, issuer="users", audiences=["users"], ttl_seconds=60), sub)[:-4] + "AAAA"
            ),
            id="forged-signature",
        ),
        pytest.param(
            lambda key, sub: jwt.encode(
                {
                    "sub": str(sub),
                    "iss": "users",
                    "aud": "users",
                    "exp": int(time.time()) + 60,
                    "iat": int(time.time()),
                    "jti": "x",
                },
                "a shared secret that is long enough!",
                algorithm="HS256",
            ),
            id="hs256",
        ),
        pytest.param(lambda key, sub: "not.a.token", id="garbage"),
    ],
)
async def test_bad_access_tokens_are_unauthorized(
    client: httpx.AsyncClient, private_key_pem: str, make_token: object
) -> None:
    account = await register(client, "target@example.com")
    token = make_token(private_key_pem, uuid.UUID(account["id"]))  # type: ignore[operator]
    response = await client.get("/users/me", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_missing_or_malformed_authorization_is_unauthorized(client: httpx.AsyncClient) -> None:
    assert (await client.get("/users/me")).status_code == 401
    assert (await client.get("/users/me", headers={"Authorization": "Basic abc"})).status_code == 401


async def test_jwks_publishes_the_key_that_verifies_access_tokens(client: httpx.AsyncClient) -> None:
    tokens = await signed_in(client, "jwks@example.com")
    document = (await client.get("/.well-known/jwks.json")).json()
    keys = keys_from_jwks(document)
    assert len(keys) == 1
    assert isinstance(keys[0], Ed25519PublicKey)
    assert document["keys"][0]["kid"] == jwt.get_unverified_header(tokens["access_token"])["kid"]
    assert jwt.decode(tokens["access_token"], keys[0], algorithms=["EdDSA"], audience="notify")["iss"] == "users"
