"""One address, one account: every route that takes an email compares it in the same canonical form,
and names that could reach an email header hold no control character."""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

import pytest

from shared.errors import DomainError
from tests.users.helpers import PASSWORD, bearer, count_users, login, register, signed_in, users_command
from users.cli import create_admin_account

if TYPE_CHECKING:
    import httpx

    from users.settings import UsersSettings

NFC = unicodedata.normalize("NFC", "Zoë.Müller@Exämple.com")
NFD = unicodedata.normalize("NFD", "Zoë.Müller@Exämple.com")
CANONICAL = "zoë.müller@xn--exmple-cua.com"

LOOK_ALIKES = [
    pytest.param(NFD, id="nfd"),
    pytest.param(NFC.upper(), id="upper-case"),
    pytest.param(f"  {NFC}\t", id="padded"),
    pytest.param("zoë.müller@xn--exmple-cua.com", id="ascii-domain"),
    pytest.param("ZOË.MÜLLER@ＥＸÄＭＰＬＥ.COM", id="full-width-domain"),
]

CONTROL_NAMES = [
    pytest.param("Eve\r\nBcc: x@y", id="crlf"),
    pytest.param("Eve\nBcc: x@y", id="lf"),
    pytest.param("Eve\rx", id="cr"),
    pytest.param("Eve\x00", id="nul"),
    pytest.param("Eve\x1b[31m", id="escape"),
    pytest.param("Eve\x85x", id="next-line"),
    pytest.param("Eve\u2028x", id="line-separator"),
    pytest.param("Eve\u2029x", id="paragraph-separator"),
    pytest.param("Eve\u202egnp.exe", id="bidi-override"),
    pytest.param("Eve\tx", id="tab"),
]


def field_errors(response: httpx.Response) -> set[str]:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return {error["field"] for error in response.json().get("errors", [])}


def assert_names_field(response: httpx.Response, field: str, value: str) -> None:
    if "\x00" in value:
        # NUL is refused for every field at the HTTP boundary, before the body is decoded.
        assert field_errors(response) <= {field}
    else:
        assert field_errors(response) == {field}


async def test_a_non_ascii_address_is_stored_in_its_canonical_form(client: httpx.AsyncClient) -> None:
    account = await register(client, NFC)
    assert account["email"] == CANONICAL


@pytest.mark.parametrize("look_alike", LOOK_ALIKES)
async def test_a_look_alike_of_a_registered_address_cannot_register_again(
    client: httpx.AsyncClient, look_alike: str
) -> None:
    await register(client, NFC)
    again = await client.post(
        "/auth/register", json={"email": look_alike, "password": PASSWORD, "display_name": "Twin"}
    )
    assert again.status_code == 409, again.text


@pytest.mark.parametrize("look_alike", LOOK_ALIKES)
async def test_a_look_alike_signs_in_to_the_same_account_by_json_and_by_form(
    client: httpx.AsyncClient, look_alike: str
) -> None:
    account = await register(client, NFC)
    by_json = await login(client, look_alike)
    by_form = await client.post("/auth/token", data={"username": look_alike, "password": PASSWORD})
    assert by_form.status_code == 200, by_form.text
    me_json = await client.get("/users/me", headers=bearer(by_json))
    me_form = await client.get("/users/me", headers=bearer(by_form.json()))
    assert me_json.json()["id"] == me_form.json()["id"] == account["id"]


async def test_a_profile_email_change_is_canonical_and_look_alikes_of_it_are_taken(client: httpx.AsyncClient) -> None:
    tokens = await signed_in(client, "first@example.com")
    changed = await client.patch("/users/me", json={"email": NFD, "current_password": PASSWORD}, headers=bearer(tokens))
    assert changed.status_code == 200, changed.text
    assert changed.json()["email"] == CANONICAL
    await login(client, NFC.upper())

    other = await signed_in(client, "second@example.com")
    taken = await client.patch("/users/me", json={"email": NFC, "current_password": PASSWORD}, headers=bearer(other))
    assert taken.status_code == 409, taken.text


async def test_the_admin_search_finds_an_address_by_any_look_alike(
    client: httpx.AsyncClient, users_settings: UsersSettings
) -> None:
    await create_admin_account(users_settings, email="root@example.com", password=PASSWORD, display_name="Root")
    admin = await login(client, "root@example.com")
    account = await register(client, NFC)
    for term in (NFD, NFC.upper(), "Exämple", "xn--exmple-cua", "ZOË.MÜLLER"):
        found = await client.get("/users", params={"q": term}, headers=bearer(admin))
        assert found.status_code == 200, found.text
        assert [user["id"] for user in found.json()["items"]] == [account["id"]], term


async def test_create_admin_stores_the_canonical_address_and_a_look_alike_promotes_it(
    users_settings: UsersSettings, client: httpx.AsyncClient
) -> None:
    admin_id, created = await create_admin_account(users_settings, email=NFD, password=PASSWORD, display_name="Root")
    again_id, created_again = await create_admin_account(
        users_settings, email=NFC.upper(), password=PASSWORD, display_name="Root"
    )
    assert (created, created_again, again_id) == (True, False, admin_id)
    me = await client.get("/users/me", headers=bearer(await login(client, NFC)))
    assert (me.json()["email"], me.json()["role"]) == (CANONICAL, "admin")


@pytest.mark.usefixtures("users_environment")
async def test_create_admin_refuses_an_invalid_address_or_name_clearly(users_database: str) -> None:
    code, output = await users_command("create-admin", "--email", "ada@exa mple.com", stdin="long enough pw\n" * 2)
    assert code == 1
    assert "domain" in output
    code, output = await users_command(
        "create-admin", "--email", "ada@example.com", "--display-name", "Ada\r\nBcc: x@y", stdin="long enough pw\n" * 2
    )
    assert code == 1
    assert "control character U+000D" in output
    assert await count_users(users_database) == 0


async def test_create_admin_refuses_a_control_character_in_the_name(users_settings: UsersSettings) -> None:
    with pytest.raises(DomainError, match="control character"):
        await create_admin_account(users_settings, email="a@example.com", password=PASSWORD, display_name="A\nB")


@pytest.mark.parametrize("name", CONTROL_NAMES)
async def test_a_display_name_with_a_control_character_is_refused_naming_the_field(
    client: httpx.AsyncClient, users_database: str, name: str
) -> None:
    response = await client.post(
        "/auth/register", json={"email": "eve@example.com", "password": PASSWORD, "display_name": name}
    )
    assert response.status_code == 400, response.text
    assert_names_field(response, "display_name", name)
    assert await count_users(users_database) == 0


@pytest.mark.parametrize("name", CONTROL_NAMES)
async def test_a_profile_update_to_a_name_with_a_control_character_is_refused(
    client: httpx.AsyncClient, name: str
) -> None:
    await register(client, "eve@example.com", name="Eve")
    tokens = await login(client, "eve@example.com")
    response = await client.patch("/users/me", json={"display_name": name}, headers=bearer(tokens))
    assert response.status_code == 400, response.text
    assert_names_field(response, "display_name", name)
    assert (await client.get("/users/me", headers=bearer(tokens))).json()["display_name"] == "Eve"


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("eve@exa mple.com", id="space-in-domain"),
        pytest.param("eve@-example.com", id="hyphen-label"),
        pytest.param("eve@example..com", id="empty-label"),
        pytest.param("eve@exam_ple.com", id="underscore-domain"),
        pytest.param("e\x00ve@example.com", id="nul"),
        pytest.param("eve\r\n@example.com", id="crlf"),
        pytest.param('"eve"@example.com', id="quoted"),
        pytest.param("e..ve@example.com", id="double-dot"),
        pytest.param("eve@localhost", id="no-dot"),
        pytest.param("x" * 65 + "@example.com", id="long-local-part"),
    ],
)
async def test_an_address_that_cannot_be_sent_to_is_refused_naming_the_field(
    client: httpx.AsyncClient, users_database: str, address: str
) -> None:
    response = await client.post("/auth/register", json={"email": address, "password": PASSWORD, "display_name": "Eve"})
    assert response.status_code == 400, response.text
    assert_names_field(response, "email", address)
    assert "Traceback" not in response.text
    assert await count_users(users_database) == 0


async def test_signing_in_with_text_that_is_no_address_is_just_wrong_credentials(client: httpx.AsyncClient) -> None:
    for text in ("eve@exa mple.com", "\u202e@x", "no-at-sign", "ünï@-bad-.com"):
        response = await client.post("/auth/login", json={"email": text, "password": PASSWORD})
        assert response.status_code == 401, (text, response.text)
