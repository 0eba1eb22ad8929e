"""The users schema: identities, refresh tokens and login throttling counters."""

from __future__ import annotations

import datetime
import uuid

from advanced_alchemy.base import CommonTableAttributes
from advanced_alchemy.mixins import AuditColumns, UUIDv7PrimaryKey
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import schema_registry
from shared.events.outbox import Outbox
from shared.events.tables import define_event_tables

__all__ = ("EVENT_TABLES", "OUTBOX", "SCHEMA", "Base", "LoginThrottle", "RefreshToken", "User")

SCHEMA = "users"


class Base(CommonTableAttributes, DeclarativeBase):
    """Every table of this service lives in the ``users`` schema."""

    registry = schema_registry(SCHEMA)


class User(UUIDv7PrimaryKey, AuditColumns, Base):
    """A person who can sign in."""

    __tablename__ = "user_account"

    email: Mapped[str] = mapped_column(String(254), unique=True)
    """Normalised (trimmed, lower-case), so uniqueness ignores case."""
    password_hash: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20), default="user", server_default="user")
    is_active: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """Bumped on every change: the aggregate sequence events carry, so replicas can drop stale ones."""
    deactivated_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    tokens_valid_after: Mapped[datetime.datetime | None] = mapped_column(
        DateTimeUTC(timezone=True), default=None, index=True
    )
    """Access tokens issued before this instant are void (``shared.revocations``); set by a role change,
    deactivation, password change or a revoked refresh family, and carried in every ``users.user.*`` event."""


class RefreshToken(UUIDv7PrimaryKey, Base):
    """One refresh token of a rotation family; only its SHA-256 is stored."""

    __tablename__ = "refresh_token"
    __table_args__ = (Index("ix_refresh_token_family_id", "family_id"), Index("ix_refresh_token_user_id", "user_id"))

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(f"{SCHEMA}.user_account.id", ondelete="CASCADE"))
    family_id: Mapped[uuid.UUID]
    """Every token rotated from one login shares the family; reuse of any revokes all of them."""
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    issued_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True))
    expires_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True))
    used_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    revoked_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class LoginThrottle(Base):
    """Attempts per (scope, key) in a fixed window, shared by every process through Postgres.

    Scopes: ``account`` (sign-in and ``current_password`` checks, keyed by email), ``address`` (the
    same, keyed by client address), ``registration`` (keyed by client address). An attempt is taken
    with one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` before the password is verified, so
    a concurrent burst cannot read a stale count; a successful sign-in gives its attempt back.
    """

    __tablename__ = "login_throttle"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    """``account``, ``address`` or ``registration``."""
    key: Mapped[str] = mapped_column(String(254), primary_key=True)
    window_start: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


EVENT_TABLES = define_event_tables(Base.metadata)
"""The outbox users publishes through, and the inbox (unused: users consumes no events yet)."""
OUTBOX = Outbox(EVENT_TABLES, source="users")
"""The service's one outbox: every route, handler, sweep and command of users adds its events here."""
