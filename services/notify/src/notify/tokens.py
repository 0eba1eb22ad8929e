"""Unsubscribe links: a user id and a kind, signed with HMAC-SHA256, good without signing in.

A token reads ``<user id hex>.<kind>.<signature>``; the signature covers a purpose and version
prefix too, so a MAC made for anything else with the same key never passes as one of these.
Tokens do not expire: an unsubscribe link in an old email must keep working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from urllib.parse import urlencode

from notify.schemas import KINDS, NotificationKind
from shared.errors import DomainError, Forbidden

__all__ = ("TOKEN_PATTERN", "MalformedToken", "UnsubscribeLinks")

_PURPOSE = b"relay-shop:notify:unsubscribe:v1"
_MIN_SECRET_LENGTH = 16
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{43}")
"""HMAC-SHA256 in unpadded URL-safe base64: anything else was never written by this service."""
TOKEN_PATTERN = rf"^[0-9a-fA-F]{{32}}\.(?:{'|'.join(KINDS)})\.{_SIGNATURE.pattern}$"
"""The shape of every token this service writes; the routes document it (a token of another shape is a 400)."""


class MalformedToken(DomainError):
    """The unsubscribe token is not one this service writes (cut off, or not a token at all)."""

    title = "Malformed unsubscribe token"


class UnsubscribeLinks:
    """Makes and checks unsubscribe links.

    Args:
        secret: The HMAC key (``NOTIFY_UNSUBSCRIBE_SECRET``).
        base_url: The notify API as email readers reach it.
    """

    def __init__(self, secret: str, base_url: str) -> None:
        if len(secret) < _MIN_SECRET_LENGTH:
            raise ValueError(
                f"NOTIFY_UNSUBSCRIBE_SECRET (or NOTIFY_UNSUBSCRIBE_SECRET_FILE) needs {_MIN_SECRET_LENGTH}+ characters"
            )
        self._key = secret.encode()
        self.base_url = base_url.rstrip("/")

    def token(self, user_id: uuid.UUID, kind: NotificationKind) -> str:
        """The token that turns ``kind`` emails off for ``user_id``."""
        return f"{user_id.hex}.{kind}.{self._signature(user_id.hex, kind)}"

    def url(self, user_id: uuid.UUID, kind: NotificationKind) -> str:
        """The link an email carries."""
        return f"{self.base_url}/notifications/unsubscribe?{urlencode({'token': self.token(user_id, kind)})}"

    def verify(self, token: str) -> tuple[uuid.UUID, NotificationKind]:
        """The user and kind a genuine token names.

        Raises:
            MalformedToken: It is not shaped like a token (400).
            Forbidden: The signature does not match: forged or tampered with (403).
        """
        if not token.isascii():
            # Every token this service writes is ASCII; anything else is not one (and comparing
            # non-ASCII str with hmac.compare_digest would raise TypeError).
            raise MalformedToken("The unsubscribe token holds characters no token has; copy the whole link.")
        parts = token.split(".")
        if len(parts) != 3:  # noqa: PLR2004 - user, kind, signature
            raise MalformedToken("The unsubscribe token is incomplete; copy the whole link from the email.")
        user_hex, kind, signature = parts
        try:
            user_id = uuid.UUID(hex=user_hex)
        except ValueError as error:
            raise MalformedToken("The unsubscribe token names no user.") from error
        if kind not in KINDS:
            raise MalformedToken("The unsubscribe token names no kind of notification.")
        if not _SIGNATURE.fullmatch(signature):
            raise MalformedToken("The unsubscribe token's signature is cut off or altered; copy the whole link.")
        if not hmac.compare_digest(signature.encode(), self._signature(user_hex, kind).encode()):
            raise Forbidden("This unsubscribe link is not genuine.")
        return user_id, kind

    def _signature(self, user_hex: str, kind: str) -> str:
        mac = hmac.new(self._key, b"%s\n%s\n%s" % (_PURPOSE, user_hex.encode(), kind.encode()), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
