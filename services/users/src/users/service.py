"""The rules of identities: registration, sign-in, token rotation, profiles and administration."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import secrets
import unicodedata
import uuid
from functools import cached_property
from typing import TYPE_CHECKING

from advanced_alchemy.filters import LimitOffset
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from argon2 import PasswordHasher as Argon2Hasher
from argon2.exceptions import InvalidHashError, VerificationError
from msgspec import UNSET
from sqlalchemy import delete, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from uuid_utils.compat import uuid7

from shared.addresses import (
    InvalidDisplayName,
    InvalidEmail,
    canonical_email,
    check_display_name,
    email_lookup_key,
    email_search_keys,
)
from shared.db import contains_pattern
from shared.errors import Conflict, DomainError, Forbidden, NotFound, TooManyRequests, Unauthorized, Unprocessable
from shared.revocations import microseconds
from users.events import UserEventKind, user_event
from users.models import LoginThrottle, RefreshToken, User
from users.schemas import TokenPair, UserOut, UserPage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.auth import AccessTokenSigner, Principal
    from shared.events.outbox import Outbox
    from users.schemas import AdminUserUpdate, ProfileUpdate, RegisterUser
    from users.settings import UsersSettings

__all__ = ("PasswordHasher", "UserService", "normalize_email")

WRONG_CREDENTIALS = "Wrong email or password."
REVOCATION_MARGIN = datetime.timedelta(seconds=1)
"""How far ahead of the clock ``tokens_valid_after`` is set. A sign-in that read the account just before
a revocation committed took its clock reading before that commit, so less than this before the
revocation's own reading: its token is refused too. Tokens issued after it carry an ``iat_us`` just
past ``tokens_valid_after`` (at most this far ahead; verifiers allow 10 s of clock leeway)."""
USER_COLUMNS = (User.id, User.email, User.display_name, User.role, User.is_active, User.created_at, User.updated_at)


def normalize_email(email: str) -> str:
    """The one form every route compares an email in.

    ``shared.addresses``' canonical form (NFC, lower case, IDNA domain), so look-alikes neither
    register twice nor fail to sign in.
    """
    return email_lookup_key(email)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _token_hash(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode()).hexdigest()


class PasswordHasher:
    """argon2id hashing off the event loop: one hash costs tens of milliseconds of CPU."""

    def __init__(self, *, time_cost: int, memory_kib: int) -> None:
        self._argon2 = Argon2Hasher(time_cost=time_cost, memory_cost=memory_kib)
        # Made now, not at the first unknown email: that one would otherwise cost a hash more.
        self._dummy_hash = self._argon2.hash(secrets.token_urlsafe(16))

    @classmethod
    def from_settings(cls, settings: UsersSettings) -> PasswordHasher:
        """The hasher with the configured argon2 costs."""
        return cls(time_cost=settings.password_hash_time_cost, memory_kib=settings.password_hash_memory_kib)

    async def hash(self, password: str) -> str:
        """A new argon2id hash of ``password``."""
        return await asyncio.to_thread(self._argon2.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches ``password_hash``.

        Without a hash (an unknown email, a throttled attempt) a dummy one made with the same costs
        is checked and False returned: every answer costs one argon2 verify, so timing tells nothing.
        """
        try:
            return await asyncio.to_thread(self._argon2.verify, password_hash or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with weaker parameters than today's."""
        return self._argon2.check_needs_rehash(password_hash)


class UserRepository(SQLAlchemyAsyncRepository[User]):
    """Accounts, for the ordinary reads and writes."""

    model_type = User


class UserService:
    """Everything that changes or reveals an account goes through here, in one transaction per call."""

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

    @cached_property
    def repository(self) -> UserRepository:
        """advanced-alchemy's repository over this service's session."""
        return UserRepository(session=self.session, auto_commit=False)

    async def register(self, data: RegisterUser, *, client_address: str) -> UserOut:
        """Create an account with the ``user`` role.

        Every attempt counts against ``client_address`` (before the costly hash), taken or not.

        Raises:
            TooManyRequests: Too many registrations from this address in the current window.
            Unprocessable: The password equals the email.
            Conflict: The email is taken (compared without regard to case).
        """
        now = _now()
        window = self.settings.registration_window_seconds
        counts, window_start = await self._take_attempt([("registration", client_address)], window, now)
        await self.session.commit()
        if counts["registration"] > self.settings.registration_max_per_address:
            raise TooManyRequests(
                "Too many registrations from this address; try again later.",
                retry_after=_retry_after(window_start, window, now),
            )
        email = normalize_email(data.email)
        self._check_password(data.password, email)
        password_hash = await self.hasher.hash(data.password)
        user = User(email=email, password_hash=password_hash, display_name=data.display_name.strip(), role="user")
        await self._insert(user)
        await self._record_event("registered", user)
        await self.session.commit()
        return _user_out(user)

    async def create_admin(self, *, email: str, password: str, display_name: str) -> tuple[UserOut, bool]:
        """Create an administrator, or promote the existing account with that email.

        Returns:
            The account and whether it was created (False: an existing account was promoted).
        """
        try:
            email = canonical_email(email)
            display_name = check_display_name(display_name)
        except (InvalidEmail, InvalidDisplayName) as error:
            raise DomainError(f"{error}.") from None
        existing = await self.session.scalar(select(User).where(User.email == email).with_for_update())
        if existing is not None:
            existing.role = "admin"
            existing.version += 1
            await self._record_event("updated", existing)
            await self.session.commit()
            return _user_out(existing), False
        self._check_password(password, email)
        user = User(
            email=email, password_hash=await self.hasher.hash(password), display_name=display_name, role="admin"
        )
        await self._insert(user)
        await self._record_event("registered", user)
        await self.session.commit()
        return _user_out(user), True

    async def login(self, *, email: str, password: str, client_address: str) -> TokenPair:
        """Check the credentials and start a new refresh-token family.

        Each sign-in takes an attempt for the email and for ``client_address`` before the password is
        checked; a successful one gives it back, so the limits count failures (and checks in flight).

        Raises:
            TooManyRequests: Too many failures for this account or this address in the current window.
            Unauthorized: Wrong email or password (one message for both), or a deactivated account.
        """
        email = normalize_email(email)
        now = _now()
        # The attempt is taken (and committed, so every process sees it) before the slow verify:
        # a burst of any size gets at most the limit verified.
        counts, window_start = await self._take_password_attempt(email, client_address, now)
        row = (
            await self.session.execute(
                select(User.id, User.password_hash, User.role, User.is_active, User.tokens_valid_after).where(
                    User.email == email
                )
            )
        ).one_or_none()
        await self.session.commit()
        throttled = self._over_limit(counts)
        # Every path (unknown email, wrong password, deactivated, throttled) costs one verify.
        matches = await self.hasher.verify(None if throttled or row is None else row.password_hash, password)
        if throttled:
            raise self._throttled(window_start, now)
        if row is None or not matches:
            raise Unauthorized(WRONG_CREDENTIALS)
        if not row.is_active:
            raise Unauthorized("This account is deactivated.")
        await self._give_back_attempt(email, client_address, window_start)
        if self.hasher.needs_rehash(row.password_hash):
            new_hash = await self.hasher.hash(password)
            await self.session.execute(update(User).where(User.id == row.id).values(password_hash=new_hash))
        pair = await self._issue_tokens(
            row.id, row.role, family_id=uuid7(), now=now, valid_after=row.tokens_valid_after
        )
        await self.session.commit()
        return pair

    async def refresh(self, raw_token: str) -> TokenPair:
        """Rotate a refresh token: the old one is spent, a new one of the same family is returned.

        A spent token presented again means it was stolen or replayed: the whole family is revoked.

        Raises:
            Unauthorized: Unknown, expired, revoked or reused token, or a deactivated account.
        """
        now = _now()
        token = await self.session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == _token_hash(raw_token)).with_for_update()
        )
        if token is None or token.revoked_at is not None:
            raise Unauthorized("Invalid refresh token.")
        if token.used_at is not None:
            await self._revoke_family(token.family_id, now, user_id=token.user_id)
            await self.session.commit()
            raise Unauthorized("Refresh token reuse detected: every session of this sign-in is revoked.")
        if token.expires_at <= now:
            raise Unauthorized("Refresh token expired.")
        user = await self.session.get(User, token.user_id)
        if user is None or not user.is_active:
            await self._revoke_family(token.family_id, now, user_id=token.user_id)
            await self.session.commit()
            raise Unauthorized("This account is deactivated.")
        token.used_at = now
        pair = await self._issue_tokens(
            user.id, user.role, family_id=token.family_id, now=now, valid_after=user.tokens_valid_after
        )
        await self.session.commit()
        return pair

    async def logout(self, raw_token: str) -> None:
        """Revoke the refresh-token family of ``raw_token``, and the account's access tokens issued so far.

        Access tokens do not name their family, so every access token of the account is revoked:
        the other sessions refresh once (their refresh tokens still work). Unknown tokens are
        ignored: logout is idempotent.
        """
        token = (
            await self.session.execute(
                select(RefreshToken.family_id, RefreshToken.user_id).where(
                    RefreshToken.token_hash == _token_hash(raw_token)
                )
            )
        ).one_or_none()
        if token is not None:
            await self._revoke_family(token.family_id, _now(), user_id=token.user_id)
            await self.session.commit()

    async def get_active(self, user_id: uuid.UUID) -> UserOut:
        """The caller's own account, straight from a Core query (every ``/users/me`` request reads it).

        Raises:
            Unauthorized: The account is gone or deactivated, though its token is still valid.
        """
        row = (await self.session.execute(select(*USER_COLUMNS).where(User.id == user_id))).one_or_none()
        if row is None or not row.is_active:
            raise Unauthorized("This account is deactivated.")
        return UserOut(**row._asdict())

    async def get(self, user_id: uuid.UUID) -> UserOut:
        """Any account, for administrators.

        Raises:
            NotFound: No such account.
        """
        row = (await self.session.execute(select(*USER_COLUMNS).where(User.id == user_id))).one_or_none()
        if row is None:
            raise NotFound("No such user.")
        return UserOut(**row._asdict())

    async def list(self, *, search: str | None, limit: int, offset: int) -> UserPage:
        """A page of accounts, newest first, optionally matching ``search`` in email or display name."""
        filters: list[object] = [LimitOffset(limit=limit, offset=offset)]
        if search:
            # Emails are stored canonical (lower case, IDNA domain): a search for a whole address
            # matches it in that form too, whatever look-alike was typed.
            by_email = [User.email.contains(key, autoescape=True) for key in email_search_keys(search)]
            by_name = User.display_name.ilike(contains_pattern(unicodedata.normalize("NFC", search)), escape="\\")
            filters.append(or_(*by_email, by_name))
        users, total = await self.repository.get_many_and_count(
            *filters,  # type: ignore[arg-type]  # list of mixed filter kinds, each accepted by list_and_count
            order_by=[(User.created_at, True), (User.id, True)],
        )
        return UserPage(items=[_user_out(user) for user in users], total=total, limit=limit, offset=offset)

    async def update_profile(self, user_id: uuid.UUID, changes: ProfileUpdate, *, client_address: str) -> UserOut:
        """Change one's own display name, email or password.

        A ``current_password`` check is counted like a sign-in (same account and address counters),
        so a stolen access token cannot guess the password faster than the sign-in form could.

        Raises:
            Unauthorized: The account is deactivated.
            TooManyRequests: Too many password checks for this account or address in the window.
            Forbidden: A new email or password without the right current password.
            Unprocessable: The new password equals the email.
            Conflict: The new email is taken, or the password changed between its check and the update.
        """
        sensitive = changes.email is not UNSET or changes.password is not UNSET
        current = changes.current_password if changes.current_password is not UNSET else ""
        verified_hash = await self._check_current_password(user_id, current, client_address) if sensitive else None
        user = await self._active_for_update(user_id)
        if verified_hash is not None and user.password_hash != verified_hash:
            raise Conflict("The password changed meanwhile; try again with the new one.")
        if changes.display_name is not UNSET:
            user.display_name = changes.display_name.strip()
        if changes.email is not UNSET:
            user.email = normalize_email(changes.email)
        if changes.password is not UNSET:
            self._check_password(changes.password, user.email)
            user.password_hash = await self.hasher.hash(changes.password)
            await self._revoke_all_tokens(user, _now())
        elif changes.email is not UNSET:
            self._check_password_is_not_email(current, user.email)
        user.version += 1
        await self._flush_unique()
        await self._record_event("updated", user)
        await self.session.commit()
        return _user_out(user)

    async def deactivate(self, user_id: uuid.UUID) -> None:
        """Deactivate one's own account: no more sign-in, every refresh token revoked."""
        user = await self._active_for_update(user_id)
        await self._deactivate(user)
        await self.session.commit()

    async def administer(self, actor: Principal, user_id: uuid.UUID, changes: AdminUserUpdate) -> UserOut:
        """An administrator changes an account's role or active flag.

        Raises:
            NotFound: No such account.
            Conflict: An administrator tried to demote or deactivate themselves (nobody could undo it).
        """
        user = await self.session.scalar(select(User).where(User.id == user_id).with_for_update())
        if user is None:
            raise NotFound("No such user.")
        if user.id == actor.id and (changes.role == "user" or changes.is_active is False):
            raise Conflict("Administrators cannot demote or deactivate themselves.")
        if changes.is_active is False and user.is_active:
            await self._deactivate(user)
        elif changes.is_active is True and not user.is_active:
            user.is_active = True
            user.deactivated_at = None
            user.version += 1
            await self._record_event("updated", user)
        if changes.role is not UNSET and changes.role != user.role:
            user.role = changes.role
            _invalidate_access_tokens(user, _now())  # a demoted administrator's token must stop working now
            user.version += 1
            await self._record_event("updated", user)
        await self.session.commit()
        return _user_out(user)

    async def _deactivate(self, user: User) -> None:
        now = _now()
        user.is_active = False
        user.deactivated_at = now
        user.version += 1
        await self._revoke_all_tokens(user, now)
        await self._record_event("deactivated", user)

    async def _record_event(self, kind: UserEventKind, user: User) -> None:
        """``users.user.<kind>`` joins this same transaction through the outbox."""
        await self.outbox.add(self.session, user_event(kind, user), sequence=user.version)

    async def _active_for_update(self, user_id: uuid.UUID) -> User:
        user = await self.session.scalar(select(User).where(User.id == user_id).with_for_update())
        if user is None or not user.is_active:
            raise Unauthorized("This account is deactivated.")
        return user

    async def _insert(self, user: User) -> None:
        self.session.add(user)
        await self._flush_unique()

    async def _flush_unique(self) -> None:
        try:
            await self.session.flush()
        except IntegrityError as error:
            await self.session.rollback()
            raise Conflict("An account with this email already exists.") from error

    def _check_password(self, password: str, email: str) -> None:
        if len(password) < 10:  # noqa: PLR2004 - the documented minimum, also enforced by the schema
            raise Unprocessable("The password needs at least 10 characters.")
        self._check_password_is_not_email(password, email)

    @staticmethod
    def _check_password_is_not_email(password: str, email: str) -> None:
        if password.strip().lower() == email:
            raise Unprocessable("The password must not be the email address.")

    async def _issue_tokens(
        self,
        user_id: uuid.UUID,
        role: str,
        *,
        family_id: uuid.UUID,
        now: datetime.datetime,
        valid_after: datetime.datetime | None,
    ) -> TokenPair:
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
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        user = await self.session.scalar(select(User).where(User.id == user_id).with_for_update())
        if user is not None:
            _invalidate_access_tokens(user, now)
            user.version += 1
            await self._record_event("updated", user)

    async def _revoke_all_tokens(self, user: User, now: datetime.datetime) -> None:
        """Every refresh token and access token of the account; the caller records the event."""
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        _invalidate_access_tokens(user, now)

    async def _check_current_password(self, user_id: uuid.UUID, password: str, client_address: str) -> str:
        """Verify ``password`` for a profile change, counted like a sign-in; returns the hash it matched.

        Raises:
            Unauthorized: The account is gone or deactivated.
            TooManyRequests: Over the account's or the address's limit.
            Forbidden: Wrong password.
        """
        row = (
            await self.session.execute(select(User.email, User.password_hash, User.is_active).where(User.id == user_id))
        ).one_or_none()
        if row is None or not row.is_active:
            raise Unauthorized("This account is deactivated.")
        now = _now()
        email = normalize_email(row.email)
        counts, window_start = await self._take_password_attempt(email, client_address, now)
        await self.session.commit()
        throttled = self._over_limit(counts)
        matches = await self.hasher.verify(None if throttled else row.password_hash, password)
        if throttled:
            raise self._throttled(window_start, now)
        if not matches:
            raise Forbidden("Changing the email or password needs the right current_password.")
        await self._give_back_attempt(email, client_address, window_start)
        return str(row.password_hash)

    async def _take_password_attempt(
        self, email: str, address: str, now: datetime.datetime
    ) -> tuple[dict[str, int], datetime.datetime]:
        # The account row first, always: concurrent attempts lock the same rows in the same order.
        keys = [("account", email), ("address", address)]
        return await self._take_attempt(keys, self.settings.login_window_seconds, now)

    async def _take_attempt(
        self, keys: Sequence[tuple[str, str]], window_seconds: int, now: datetime.datetime
    ) -> tuple[dict[str, int], datetime.datetime]:
        """Count one attempt for each (scope, key) in the current window; the counts including it.

        One statement increments and returns, so concurrent requests each see their own count: no
        read-then-write race. Counted in Postgres so every process and replica shares the numbers.
        The caller commits (before any slow work, so the others see this attempt at once).
        """
        window_start = _window_start(now, window_seconds)
        statement = insert(LoginThrottle).values(
            [{"scope": scope, "key": key, "window_start": window_start, "attempts": 1} for scope, key in keys]
        )
        rows = await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[LoginThrottle.scope, LoginThrottle.key, LoginThrottle.window_start],
                set_={"attempts": LoginThrottle.attempts + 1},
            ).returning(LoginThrottle.scope, LoginThrottle.attempts)
        )
        counts: dict[str, int] = {row.scope: row.attempts for row in rows}
        await self.session.execute(
            delete(LoginThrottle).where(
                tuple_(LoginThrottle.scope, LoginThrottle.key).in_(keys),
                LoginThrottle.window_start < window_start,
            )
        )
        return counts, window_start

    async def _give_back_attempt(self, email: str, address: str, window_start: datetime.datetime) -> None:
        """A successful password check does not count against the limits (joins the caller's transaction)."""
        # Row by row, account first: the same lock order as taking an attempt, so the two cannot deadlock.
        for scope, key in (("account", email), ("address", address)):
            await self.session.execute(
                update(LoginThrottle)
                .where(
                    LoginThrottle.scope == scope,
                    LoginThrottle.key == key,
                    LoginThrottle.window_start == window_start,
                    LoginThrottle.attempts > 0,
                )
                .values(attempts=LoginThrottle.attempts - 1)
            )

    def _over_limit(self, counts: dict[str, int]) -> bool:
        return (
            counts.get("account", 0) > self.settings.login_max_failures_per_account
            or counts.get("address", 0) > self.settings.login_max_failures_per_address
        )

    def _throttled(self, window_start: datetime.datetime, now: datetime.datetime) -> TooManyRequests:
        return TooManyRequests(
            "Too many failed sign-ins; try again later.",
            retry_after=_retry_after(window_start, self.settings.login_window_seconds, now),
        )


def _window_start(now: datetime.datetime, window_seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(now.timestamp()) // window_seconds * window_seconds, datetime.UTC)


def _retry_after(window_start: datetime.datetime, window_seconds: int, now: datetime.datetime) -> int:
    return int((window_start - now).total_seconds()) + window_seconds


def _invalidate_access_tokens(user: User, now: datetime.datetime) -> None:
    """Void every access token issued so far; never moves ``tokens_valid_after`` back."""
    valid_after = now + REVOCATION_MARGIN
    if user.tokens_valid_after is not None and user.tokens_valid_after >= valid_after:
        valid_after = user.tokens_valid_after + datetime.timedelta(microseconds=1)
    user.tokens_valid_after = valid_after


def _user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        role=user.role,  # type: ignore[arg-type]  # the column only ever holds a Role
        is_active=user.is_active,
        created_at=user.created_at,
        updated_at=user.updated_at,
    )
