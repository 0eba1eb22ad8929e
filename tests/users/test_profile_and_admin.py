from __future__ import annotations

from typing import TYPE_CHECKING

from tests.users.helpers import PASSWORD, admin_tokens, bearer, login, register, signed_in
from users.cli import create_admin_account

if TYPE_CHECKING:
    import httpx

    from users.settings import UsersSettings


async def test_profile_shows_and_updates_display_name(client: httpx.AsyncClient) -> None:
    tokens = await signed_in(client, "me@example.com")
    response = await client.patch("/users/me", json={"display_name": "Ada L."}, headers=bearer(tokens))
    assert response.status_code == 200
    assert response.json()["display_name"] == "Ada L."
    assert (await client.get("/users/me", headers=bearer(tokens))).json()["display_name"] == "Ada L."


async def test_changing_email_needs_the_current_password(client: httpx.AsyncClient) -> None:
    tokens = await signed_in(client, "old@example.com")
    refused = await client.patch("/users/me", json={"email": "new@example.com"}, headers=bearer(tokens))
    assert refused.status_code == 403
    changed = await client.patch(
        "/users/me", json={"email": "New@Example.com", "current_password": PASSWORD}, headers=bearer(tokens)
    )
    assert changed.status_code == 200
    assert changed.json()["email"] == "new@example.com"
    assert (
        await client.post("/auth/login", json={"email": "new@example.com", "password": PASSWORD})
    ).status_code == 200


async def test_changing_email_to_a_taken_one_is_a_conflict(client: httpx.AsyncClient) -> None:
    await register(client, "taken@example.com")
    tokens = await signed_in(client, "mover@example.com")
    response = await client.patch(
        "/users/me", json={"email": "TAKEN@example.com", "current_password": PASSWORD}, headers=bearer(tokens)
    )
    assert response.status_code == 409


async def test_changing_password_revokes_refresh_tokens(client: httpx.AsyncClient) -> None:
    tokens = await signed_in(client, "pw@example.com")
    response = await client.patch(
        "/users/me", json={"password": "a brand new secret", "current_password": PASSWORD}, headers=bearer(tokens)
    )
    assert response.status_code == 200
    assert (await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 401
    assert (await client.post("/auth/login", json={"email": "pw@example.com", "password": PASSWORD})).status_code == 401
    await login(client, "pw@example.com", password="a brand new secret")


async def test_deactivated_user_can_neither_sign_in_nor_refresh_nor_read_profile(client: httpx.AsyncClient) -> None:
    tokens = await signed_in(client, "gone@example.com")
    assert (await client.delete("/users/me", headers=bearer(tokens))).status_code == 204

    assert (
        await client.post("/auth/login", json={"email": "gone@example.com", "password": PASSWORD})
    ).status_code == 401
    assert (await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 401
    assert (await client.get("/users/me", headers=bearer(tokens))).status_code == 401


async def test_non_admin_gets_403_on_admin_routes(client: httpx.AsyncClient) -> None:
    tokens = await signed_in(client, "plain@example.com")
    me = (await client.get("/users/me", headers=bearer(tokens))).json()
    assert (await client.get("/users", headers=bearer(tokens))).status_code == 403
    assert (await client.get(f"/users/{me['id']}", headers=bearer(tokens))).status_code == 403
    assert (await client.patch(f"/users/{me['id']}", json={"role": "admin"}, headers=bearer(tokens))).status_code == 403
    assert (await client.get("/users")).status_code == 401


async def test_admin_lists_users_paginated_and_searches(
    client: httpx.AsyncClient, users_settings: UsersSettings
) -> None:
    for index in range(3):
        await register(client, f"shopper{index}@example.com", name=f"Shopper {index}")
    await register(client, "zed@example.com", name="Zed")
    tokens = await admin_tokens(client, users_settings)

    response = await client.get("/users", params={"limit": 2, "offset": 0}, headers=bearer(tokens))
    assert response.status_code == 200, response.text
    page = response.json()
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 0)
    assert len(page["items"]) == 2
    assert page["items"][0]["email"] == "root@example.com"  # newest first

    found = (await client.get("/users", params={"q": "SHOPPER"}, headers=bearer(tokens))).json()
    assert sorted(item["email"] for item in found["items"]) == [f"shopper{i}@example.com" for i in range(3)]
    wildcard = (await client.get("/users", params={"q": "%"}, headers=bearer(tokens))).json()
    assert wildcard["total"] == 0

    bad_limit = await client.get("/users", params={"limit": 1000}, headers=bearer(tokens))
    assert bad_limit.status_code == 400


async def test_admin_reads_and_changes_role_and_active_flag(
    client: httpx.AsyncClient, users_settings: UsersSettings
) -> None:
    account = await register(client, "staff@example.com")
    tokens = await admin_tokens(client, users_settings)

    shown = await client.get(f"/users/{account['id']}", headers=bearer(tokens))
    assert shown.status_code == 200, shown.text
    assert shown.json()["email"] == "staff@example.com"
    promoted = await client.patch(f"/users/{account['id']}", json={"role": "admin"}, headers=bearer(tokens))
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["role"] == "admin"
    deactivated = await client.patch(f"/users/{account['id']}", json={"is_active": False}, headers=bearer(tokens))
    assert deactivated.status_code == 200, deactivated.text
    assert deactivated.json()["is_active"] is False
    assert (
        await client.post("/auth/login", json={"email": "staff@example.com", "password": PASSWORD})
    ).status_code == 401
    reactivated = await client.patch(f"/users/{account['id']}", json={"is_active": True}, headers=bearer(tokens))
    assert reactivated.status_code == 200, reactivated.text
    assert (reactivated.json()["is_active"], reactivated.json()["role"]) == (True, "admin")
    await login(client, "staff@example.com")
    shown_again = await client.get(f"/users/{account['id']}", headers=bearer(tokens))
    assert shown_again.json() == reactivated.json()


async def test_admin_cannot_demote_or_deactivate_themselves(
    client: httpx.AsyncClient, users_settings: UsersSettings
) -> None:
    tokens = await admin_tokens(client, users_settings)
    me = (await client.get("/users/me", headers=bearer(tokens))).json()
    assert (await client.patch(f"/users/{me['id']}", json={"role": "user"}, headers=bearer(tokens))).status_code == 409
    assert (
        await client.patch(f"/users/{me['id']}", json={"is_active": False}, headers=bearer(tokens))
    ).status_code == 409


async def test_unknown_user_id_is_404_for_admin(client: httpx.AsyncClient, users_settings: UsersSettings) -> None:
    tokens = await admin_tokens(client, users_settings)
    missing = "0190c9f2-0000-7000-8000-000000000000"
    assert (await client.get(f"/users/{missing}", headers=bearer(tokens))).status_code == 404
    assert (await client.patch(f"/users/{missing}", json={"role": "admin"}, headers=bearer(tokens))).status_code == 404


async def test_create_admin_promotes_an_existing_account(
    client: httpx.AsyncClient, users_settings: UsersSettings
) -> None:
    account = await register(client, "later-admin@example.com")
    account_id, created = await create_admin_account(
        users_settings, email="Later-Admin@example.com", password=PASSWORD, display_name="ignored"
    )
    assert not created
    assert account_id == account["id"]
    tokens = await login(client, "later-admin@example.com")
    assert (await client.get("/users", headers=bearer(tokens))).status_code == 200
