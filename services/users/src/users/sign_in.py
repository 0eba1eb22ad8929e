"""Signing in and the refresh-token lifecycle: credentials, rotation with reuse detection, logout."""

from __future__ import annotations

import datetime
import hashlib
import secrets
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from uuid_utils.compat import uuid7

from shared.addresses import email_lookup_key
from shared.db import unit_of_work
from shared.errors import Unauthorized
from shared.revocations import microseconds
from users.events import user_event
from users.models import RefreshToken, User
from users.revocation import invalidate_access_tokens, revoke_refresh_family
from users.schemas import TokenPair
from users.throttle import AttemptThrottle

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.auth import AccessTokenSigner
    from shared.events.outbox import Outbox
    from users.passwords import PasswordHasher
    from users.settings import UsersSettings

__all__ = ("SignInService",)

WRONG_CREDENTIALS = "Wrong email or password."
DEACTIVATED = "This account is deactivated."
CREDENTIALS = select(User.id, User.password_hash, User.role, User.is_active, User.tokens_valid_after)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _token_hash(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode()).hexdigest()


class SignInService:
    """Turns credentials into tokens and rotates or revokes them; every step is one ``unit_of_work``."""

    def __init__(
        self,
        *,
        session: AsyncSession,
        settings: UsersSettings,
        signer: AccessTokenSigner,
        hasher: PasswordHasher,
        outbox: Outbox,
    ) -> None:
        self.session = session
        self.settings = settings
        self.signer = signer
        self.hasher = hasher
        self.outbox = outbox
        self.throttle = AttemptThrottle(session=session, settings=settings)

    async def login(self, *, email: str, password: str, client_address: str) -> TokenPair:
        """Check the credentials and start a new refresh-token family.

        Each sign-in takes an attempt for the email and for ``client_address`` before the password is
        checked; a successful one gives it back, so the limits count failures (and checks in flight).

        Raises:
            TooManyRequests: Too many failures for this account or this address in the current window.
            Unauthorized: Wrong email or password (one message for both), or a deactivated account.
        """
        email = email_lookup_key(email)
        now = _now()
        # Deliberately its own transaction, committed before the slow verify and kept when the
        # sign-in then fails: every process sees the attempt at once, so a burst of any size gets
        # at most the limit verified, and a failed sign-in stays counted.
        async with unit_of_work(self.session):
            attempt = await self.throttle.take_password_check(email, client_address, now)
            account = (await self.session.execute(CREDENTIALS.where(User.email == email))).one_or_none()
        # Every path (unknown email, wrong password, deactivated, throttled) costs one verify.
        matches = await self.hasher.verify_attempt(attempt, account.password_hash if account else None, password)
        if account is None or not matches:
            raise Unauthorized(WRONG_CREDENTIALS)
        if not account.is_active:
            raise Unauthorized(DEACTIVATED)
        async with unit_of_work(self.session):
            await self.throttle.give_back(attempt)
            if self.hasher.needs_rehash(account.password_hash):
                new_hash = await self.hasher.hash(password)
                await self.session.execute(update(User).where(User.id == account.id).values(password_hash=new_hash))
            return self._issue_tokens(
                account.id, account.role, family_id=uuid7(), now=now, valid_after=account.tokens_valid_after
            )

    async def refresh(self, raw_token: str) -> TokenPair:
        """Rotate a refresh token: the old one is spent, a new one of the same family is returned.

        A spent token presented again means it was stolen or replayed: the whole family is revoked.

        Raises:
            Unauthorized: Unknown, expired, revoked or reused token, or a deactivated account.
        """
        async with unit_of_work(self.session):
            outcome = await self._rotate(raw_token, _now())
        # Raised only now that the transaction is committed: a refusal that revoked a family
        # (reuse, deactivated account) must keep that revocation though the request fails.
        if isinstance(outcome, Unauthorized):
            raise outcome
        return outcome

    async def logout(self, raw_token: str) -> None:
        """Revoke the refresh-token family of ``raw_token``, and the account's access tokens issued so far.

        Access tokens do not name their family, so every access token of the account is revoked:
        the other sessions refresh once (their refresh tokens still work). Unknown tokens are
        ignored: logout is idempotent.
        """
        async with unit_of_work(self.session):
            token = (
                await self.session.execute(
                    select(RefreshToken.family_id, RefreshToken.user_id).where(
                        RefreshToken.token_hash == _token_hash(raw_token)
                    )
                )
            ).one_or_none()
            if token is not None:
                await self._revoke_family(token.family_id, _now(), user_id=token.user_id)

    async def _rotate(self, raw_token: str, now: datetime.datetime) -> TokenPair | Unauthorized:
        """The next pair of the family, or the refusal to raise once this transaction is committed."""
        token = await self.session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == _token_hash(raw_token)).with_for_update()
        )
        if token is None or token.revoked_at is not None:
            return Unauthorized("Invalid refresh token.")
        if token.used_at is not None:
            await self._revoke_family(token.family_id, now, user_id=token.user_id)
            return Unauthorized("Refresh token reuse detected: every session of this sign-in is revoked.")
        if token.expires_at <= now:
            return Unauthorized("Refresh token expired.")
        user = await self.session.get(User, token.user_id)
        if user is None or not user.is_active:
            await self._revoke_family(token.family_id, now, user_id=token.user_id)
            return Unauthorized(DEACTIVATED)
        token.used_at = now
        return self._issue_tokens(
            user.id, user.role, family_id=token.family_id, now=now, valid_after=user.tokens_valid_after
        )

    def _issue_tokens(
        self,
        user_id: uuid.UUID,
        role: str,
        *,
        family_id: uuid.UUID,
        now: datetime.datetime,
        valid_after: datetime.datetime | None,
    ) -> TokenPair:
        """A signed access token and a new refresh token of ``family_id`` (added to this transaction)."""
        raw_token = secrets.token_urlsafe(32)
        self.session.add(
            RefreshToken(
                user_id=user_id,
                family_id=family_id,
                token_hash=_token_hash(raw_token),
                issued_at=now,
                expires_at=now + datetime.timedelta(seconds=self.settings.refresh_token_ttl_seconds),
            )
        )
        # ``now`` was read before the account row: a revocation this read did not see is later than
        # it (REVOCATION_MARGIN), one it saw is passed by a microsecond.
        issued_at_us = microseconds(now)
        if valid_after is not None:
            issued_at_us = max(issued_at_us, microseconds(valid_after) + 1)
        access_token = self.signer.sign(subject=user_id, roles=[role], issued_at_us=issued_at_us)
        return TokenPair(access_token=access_token, refresh_token=raw_token, expires_in=self.signer.ttl_seconds)

    async def _revoke_family(self, family_id: uuid.UUID, now: datetime.datetime, *, user_id: uuid.UUID) -> None:
        """Revoke a refresh family and the account's access tokens; replicas hear of it through ``updated``."""
        await revoke_refresh_family(self.session, family_id, now)
        user = await self.session.scalar(select(User).where(User.id == user_id).with_for_update())
        if user is not None:
            invalidate_access_tokens(user, now)
            user.version += 1
            await self.outbox.add(self.session, user_event("updated", user), sequence=user.version)
