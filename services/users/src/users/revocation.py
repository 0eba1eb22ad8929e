"""Revoking an account's tokens: refresh tokens in their table, access tokens by ``tokens_valid_after``.

Both join the caller's transaction; the caller bumps the account's version and records its event,
so replicas (``shared.revocations`` in every service) hear of it.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from sqlalchemy import update

from users.models import RefreshToken

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession

    from users.models import User

__all__ = ("REVOCATION_MARGIN", "invalidate_access_tokens", "revoke_all_tokens", "revoke_refresh_family")

REVOCATION_MARGIN = datetime.timedelta(seconds=1)
"""How far ahead of the clock ``tokens_valid_after`` is set. A sign-in that read the account just before
a revocation committed took its clock reading before that commit, so less than this before the
revocation's own reading: its token is refused too. Tokens issued after it carry an ``iat_us`` just
past ``tokens_valid_after`` (at most this far ahead; verifiers allow 10 s of clock leeway)."""


def invalidate_access_tokens(user: User, now: datetime.datetime) -> None:
    """Void every access token of ``user`` issued so far; never moves ``tokens_valid_after`` back."""
    valid_after = now + REVOCATION_MARGIN
    if user.tokens_valid_after is not None and user.tokens_valid_after >= valid_after:
        valid_after = user.tokens_valid_after + datetime.timedelta(microseconds=1)
    user.tokens_valid_after = valid_after


async def revoke_refresh_family(session: AsyncSession, family_id: uuid.UUID, now: datetime.datetime) -> None:
    """Revoke every refresh token rotated from one sign-in."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def revoke_all_tokens(session: AsyncSession, user: User, now: datetime.datetime) -> None:
    """Revoke every refresh token and every access token of ``user``."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    invalidate_access_tokens(user, now)
