"""What the users API accepts and answers: msgspec Structs, never models."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared.addresses import InvalidDisplayName, InvalidEmail, canonical_email, check_display_name
from shared.pagination import Page

__all__ = (
    "AdminUserUpdate",
    "Email",
    "LoginForm",
    "LoginRequest",
    "Password",
    "ProfileUpdate",
    "RefreshRequest",
    "RegisterUser",
    "Role",
    "TokenPair",
    "UserOut",
    "UserPage",
)

Email = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=254,
        pattern=r"^\s*[^@\s]+@[^@\s]+\.[^@\s]+\s*$",
        # Documented as an email address (shared.addresses decides what is one): clients and
        # schemathesis then send addresses, not any text with an @ in it.
        extra_json_schema={"extra": {"format": "email"}},
    ),
]
Password = Annotated[str, Meta(min_length=10, max_length=128)]
DisplayName = Annotated[
    str,
    # No control character, line or paragraph separator or bidi control: what
    # shared.addresses.check_display_name refuses, said in the document too (a lone surrogate,
    # also refused, is no character a JSON text in UTF-8 can carry).
    Meta(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]+$",
    ),
]
Role = Literal["user", "admin"]


_CANONICAL_FORMS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("email", canonical_email),
    ("display_name", check_display_name),
)


def _canonical_fields(struct: msgspec.Struct) -> None:
    """Put ``email`` and ``display_name`` in their stored form, or refuse them naming the field.

    Runs while the body is decoded, so a refusal is a 400 that names the field (the problem
    handler reads the field from "field `...`"), and the service only ever sees canonical values.
    """
    for field, canonical in _CANONICAL_FORMS:
        value = getattr(struct, field, UNSET)
        if not isinstance(value, str):
            continue
        try:
            msgspec.structs.force_setattr(struct, field, canonical(value))
        except (InvalidEmail, InvalidDisplayName) as error:
            raise ValueError(f"Invalid value for field `{field}`: {error}") from None


class RegisterUser(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A new account. The password has at least 10 characters and is not the email."""

    email: Email
    password: Password
    display_name: DisplayName

    def __post_init__(self) -> None:
        """Canonical email (NFC, lower case, IDNA domain); display name without control characters."""
        _canonical_fields(self)


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Email and password, as JSON."""

    email: Annotated[str, Meta(max_length=254)]
    password: Annotated[str, Meta(max_length=128)]


class LoginForm(msgspec.Struct, frozen=True):
    """The OAuth2 password grant form (RFC 6749 §4.3): the email goes in ``username``."""

    username: Annotated[str, Meta(max_length=254)]
    password: Annotated[str, Meta(max_length=128)]
    grant_type: Literal["password"] | None = None
    scope: str = ""


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A refresh token to rotate or revoke."""

    refresh_token: Annotated[str, Meta(min_length=1, max_length=200)]


class TokenPair(msgspec.Struct, frozen=True):
    """An access token for the APIs and a refresh token to get the next one."""

    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret


class ProfileUpdate(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Changes to one's own account. A new email or password needs the current password."""

    display_name: DisplayName | UnsetType = UNSET
    email: Email | UnsetType = UNSET
    password: Password | UnsetType = UNSET
    current_password: Annotated[str, Meta(max_length=128)] | UnsetType = UNSET

    def __post_init__(self) -> None:
        """The same checks and canonical forms as at registration."""
        _canonical_fields(self)


class AdminUserUpdate(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What an administrator may change about an account."""

    role: Role | UnsetType = UNSET
    is_active: bool | UnsetType = UNSET


class UserOut(msgspec.Struct, frozen=True):
    """An account as its owner and administrators see it."""

    id: uuid.UUID
    email: str
    display_name: str
    role: Role
    is_active: bool
    created_at: datetime.datetime
    updated_at: datetime.datetime


class UserPage(Page[UserOut], frozen=True):
    """One page of accounts."""

    items: list[UserOut]
