"""The rules of accounts: registration, one's own profile, and administration.

Signing in and tokens are ``users.sign_in``; the attempt counters ``users.throttle``; hashing and
the password rules ``users.passwords``; revoking tokens ``users.revocation``.
"""

from __future__ import annotations

import datetime
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from advanced_alchemy.filters import LimitOffset
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from msgspec import UNSET
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from shared.addresses import (
    InvalidDisplayName,
    InvalidEmail,
    canonical_email,
    check_display_name,
    email_lookup_key,
    email_search_keys,
)
from shared.db import contains_pattern, unit_of_work
from shared.errors import Conflict, DomainError, Forbidden, NotFound, Unauthorized
from users.events import user_event
from users.models import User
from users.passwords import check_new_password, check_password_is_not_email
from users.revocation import invalidate_access_tokens, revoke_all_tokens
from users.schemas import UserOut, UserPage
from users.throttle import Attempt, AttemptThrottle

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession

    from shared.auth import Principal
    from shared.events.outbox import Outbox
    from shared.pagination import PageRequest
    from users.events import UserEventKind
    from users.passwords import PasswordHasher
    from users.schemas import AdminUserUpdate, ProfileUpdate, RegisterUser
    from users.settings import UsersSettings

__all__ = ("UserService",)

DEACTIVATED = "This account is deactivated."
USER_COLUMNS = (User.id, User.email, User.display_name, User.role, User.is_active, User.created_at, User.updated_at)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True, slots=True)
class _CheckedPassword:
    """A right ``current_password``: the hash it matched and the attempt to give back."""

    password_hash: str
    attempt: Attempt


class UserRepository(SQLAlchemyAsyncRepository[User]):
    """Accounts, for the ordinary reads and writes."""

    model_type = User


class UserService:
    """Everything that creates, changes or reveals an account.

    Every call, reads included, is ``unit_of_work``: a read leaves no transaction open behind it
    (SQLAlchemy begins one at the first statement), so a write that follows on the same session
    still commits its own.
    """

    def __init__(
        self,
        *,
        session: AsyncSession,
        settings: UsersSettings,
        hasher: PasswordHasher,
        outbox: Outbox,
    ) -> None:
        self.session = session
        self.hasher = hasher
        self.outbox = outbox
        self.throttle = AttemptThrottle(session=session, settings=settings)

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
        # Deliberately its own transaction, committed before the hash: a refused registration
        # (409, 422, 429) stays counted, and concurrent ones see each other's attempts.
        async with unit_of_work(self.session):
            attempt = await self.throttle.take_registration(client_address, _now())
        if attempt.refusal is not None:
            raise attempt.refusal
        email = email_lookup_key(data.email)
        check_new_password(data.password, email)
        password_hash = await self.hasher.hash(data.password)
        async with unit_of_work(self.session):
            user = User(email=email, password_hash=password_hash, display_name=data.display_name.strip(), role="user")
            await self._insert(user)
            await self._record_event("registered", user)
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
        async with unit_of_work(self.session):
            existing = await self.session.scalar(select(User).where(User.email == email).with_for_update())
            if existing is not None:
                existing.role = "admin"
                await self._record_change("updated", existing)
                return _user_out(existing), False
            check_new_password(password, email)
            user = User(
                email=email, password_hash=await self.hasher.hash(password), display_name=display_name, role="admin"
            )
            await self._insert(user)
            await self._record_event("registered", user)
        return _user_out(user), True

    async def get_active(self, user_id: uuid.UUID) -> UserOut:
        """The caller's own account, straight from a Core query (every ``/users/me`` request reads it).

        Raises:
            Unauthorized: The account is gone or deactivated, though its token is still valid.
        """
        async with unit_of_work(self.session):
            row = (await self.session.execute(select(*USER_COLUMNS).where(User.id == user_id))).one_or_none()
        if row is None or not row.is_active:
            raise Unauthorized(DEACTIVATED)
        return UserOut(**row._asdict())

    async def get(self, user_id: uuid.UUID) -> UserOut:
        """Any account, for administrators.

        Raises:
            NotFound: No such account.
        """
        async with unit_of_work(self.session):
            row = (await self.session.execute(select(*USER_COLUMNS).where(User.id == user_id))).one_or_none()
        if row is None:
            raise NotFound("No such user.")
        return UserOut(**row._asdict())

    async def list(self, *, search: str | None, page: PageRequest) -> UserPage:
        """A page of accounts, newest first, optionally matching ``search`` in email or display name."""
        filters: list[object] = [LimitOffset(limit=page.limit, offset=page.offset)]
        if search:
            # Emails are stored canonical (lower case, IDNA domain): a search for a whole address
            # matches it in that form too, whatever look-alike was typed.
            by_email = [User.email.contains(key, autoescape=True) for key in email_search_keys(search)]
            by_name = User.display_name.ilike(contains_pattern(unicodedata.normalize("NFC", search)), escape="\\")
            filters.append(or_(*by_email, by_name))
        async with unit_of_work(self.session):
            users, total = await self.repository.get_many_and_count(
                *filters,  # type: ignore[arg-type]  # list of mixed filter kinds, each accepted by list_and_count
                order_by=[(User.created_at, True), (User.id, True)],
            )
        return UserPage.of([_user_out(user) for user in users], total=total, request=page)

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
        checked = await self._check_current_password(user_id, current, client_address) if sensitive else None
        async with unit_of_work(self.session):
            if checked is not None:
                # Given back in the change's transaction (a change that fails keeps it counted),
                # before the account row is locked: counters first, as a sign-in locks them.
                await self.throttle.give_back(checked.attempt)
            user = await self._active_for_update(user_id)
            if checked is not None and user.password_hash != checked.password_hash:
                raise Conflict("The password changed meanwhile; try again with the new one.")
            if changes.display_name is not UNSET:
                user.display_name = changes.display_name.strip()
            if changes.email is not UNSET:
                user.email = email_lookup_key(changes.email)
            if changes.password is not UNSET:
                check_new_password(changes.password, user.email)
                user.password_hash = await self.hasher.hash(changes.password)
                await revoke_all_tokens(self.session, user, _now())
            elif changes.email is not UNSET:
                check_password_is_not_email(current, user.email)
            user.version += 1
            await self._flush_unique()
            await self._record_event("updated", user)
        return _user_out(user)

    async def deactivate(self, user_id: uuid.UUID) -> None:
        """Deactivate one's own account: no more sign-in, every refresh token revoked."""
        async with unit_of_work(self.session):
            user = await self._active_for_update(user_id)
            await self._deactivate(user)

    async def administer(self, actor: Principal, user_id: uuid.UUID, changes: AdminUserUpdate) -> UserOut:
        """An administrator changes an account's role or active flag.

        Raises:
            NotFound: No such account.
            Conflict: An administrator tried to demote or deactivate themselves (nobody could undo it).
        """
        async with unit_of_work(self.session):
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
                await self._record_change("updated", user)
            if changes.role is not UNSET and changes.role != user.role:
                user.role = changes.role
                invalidate_access_tokens(user, _now())  # a demoted administrator's token must stop working now
                await self._record_change("updated", user)
        return _user_out(user)

    async def _check_current_password(self, user_id: uuid.UUID, password: str, client_address: str) -> _CheckedPassword:
        """Verify ``password`` for a profile change, counted like a sign-in.

        Raises:
            Unauthorized: The account is gone or deactivated.
            TooManyRequests: Over the account's or the address's limit.
            Forbidden: Wrong password.
        """
        # Deliberately its own transaction, committed before the slow verify and kept when the
        # change is then refused: the same counting as a sign-in.
        async with unit_of_work(self.session):
            row = (
                await self.session.execute(
                    select(User.email, User.password_hash, User.is_active).where(User.id == user_id)
                )
            ).one_or_none()
            if row is None or not row.is_active:
                raise Unauthorized(DEACTIVATED)
            attempt = await self.throttle.take_password_check(email_lookup_key(row.email), client_address, _now())
        if not await self.hasher.verify_attempt(attempt, row.password_hash, password):
            raise Forbidden("Changing the email or password needs the right current_password.")
        return _CheckedPassword(password_hash=row.password_hash, attempt=attempt)

    async def _deactivate(self, user: User) -> None:
        now = _now()
        user.is_active = False
        user.deactivated_at = now
        await revoke_all_tokens(self.session, user, now)
        await self._record_change("deactivated", user)

    async def _record_change(self, kind: UserEventKind, user: User) -> None:
        """The account changed: its version moves on, and its event carries that sequence."""
        user.version += 1
        await self._record_event(kind, user)

    async def _record_event(self, kind: UserEventKind, user: User) -> None:
        """``users.user.<kind>`` joins this same transaction through the outbox."""
        await self.outbox.add(self.session, user_event(kind, user), sequence=user.version)

    async def _active_for_update(self, user_id: uuid.UUID) -> User:
        user = await self.session.scalar(select(User).where(User.id == user_id).with_for_update())
        if user is None or not user.is_active:
            raise Unauthorized(DEACTIVATED)
        return user

    async def _insert(self, user: User) -> None:
        self.session.add(user)
        await self._flush_unique()

    async def _flush_unique(self) -> None:
        # unit_of_work rolls the transaction back when the Conflict leaves its block.
        try:
            await self.session.flush()
        except IntegrityError as error:
            raise Conflict("An account with this email already exists.") from error


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
