"""The notify schema: the users replica, notifications, preferences and the email delivery log."""

from __future__ import annotations

import datetime
import uuid

from advanced_alchemy.base import CommonTableAttributes
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import Index, Integer, String, Text, UniqueConstraint, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from uuid_utils.compat import uuid7

from shared.db import schema_registry
from shared.events.outbox import Outbox
from shared.events.tables import define_event_tables

__all__ = (
    "EVENT_TABLES",
    "OUTBOX",
    "SCHEMA",
    "Base",
    "Contact",
    "DeliveryStatus",
    "EmailDelivery",
    "Notification",
    "Preference",
)

SCHEMA = "notify"


class Base(CommonTableAttributes, DeclarativeBase):
    """Every table of this service lives in the ``notify`` schema."""

    registry = schema_registry(SCHEMA)


class Contact(Base):
    """What notify knows of a user, kept from users' events (never read from users' schema)."""

    __tablename__ = "contact"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), server_default="")
    """Empty when only a deactivation has arrived so far."""
    display_name: Mapped[str] = mapped_column(String(100), server_default="")
    is_active: Mapped[bool] = mapped_column(server_default=text("true"))
    sequence: Mapped[int] = mapped_column(Integer)
    """The user's version in the newest event applied: an older, redelivered event never wins."""
    tokens_valid_after: Mapped[datetime.datetime | None] = mapped_column(
        DateTimeUTC(timezone=True), default=None, index=True
    )
    """From users' events: access tokens issued before it are refused (``shared.revocations``)."""


class Notification(Base):
    """One in-app notification: at most one per user and source event."""

    __tablename__ = "notification"
    __table_args__ = (
        UniqueConstraint("user_id", "source_event_id"),
        Index("ix_notification_user_id_id", "user_id", "id"),
        Index("ix_notification_unread", "user_id", "id", postgresql_where=text("read_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    """UUIDv7: sorts by creation time, so it is also the stream's event id and the page order."""
    user_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    source_event_id: Mapped[uuid.UUID]
    """The event that caused it: the second guard, after the inbox, against a notification twice."""
    source_event_type: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=func.now())
    read_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class Preference(Base):
    """A user's choice for one kind of notification; without a row, every channel is on."""

    __tablename__ = "preference"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    in_app: Mapped[bool] = mapped_column(server_default=text("true"))
    email: Mapped[bool] = mapped_column(server_default=text("true"))
    updated_at: Mapped[datetime.datetime] = mapped_column(
        DateTimeUTC(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class DeliveryStatus:
    """Where an email stands."""

    QUEUED = "queued"
    """Waiting for its next attempt (``next_attempt_at``), the first or a retry."""
    SENT = "sent"
    """Accepted by the mail server (or written to the mail directory)."""
    FAILED = "failed"
    """Given up: refused for good, or out of attempts."""
    CANCELLED = "cancelled"
    """Not sent: the user was deactivated or turned this email off before it left."""


class EmailDelivery(Base):
    """The delivery log: one email per user and source event, sent and retried by the worker's sweep."""

    __tablename__ = "email_delivery"
    __table_args__ = (
        UniqueConstraint("user_id", "source_event_id"),
        Index("ix_email_delivery_due", "next_attempt_at", postgresql_where=text("status = 'queued'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)
    """Also the email's ``Message-ID``, so a resend after an unknown outcome is recognisably the same."""
    user_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(32))
    source_event_id: Mapped[uuid.UUID]
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    unsubscribe_url: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), server_default=DeliveryStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    next_attempt_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=func.now())
    recipient: Mapped[str | None] = mapped_column(String(254), default=None)
    """The address it went to, filled in when sent (the contact's address at that moment)."""
    created_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


EVENT_TABLES = define_event_tables(Base.metadata)
OUTBOX = Outbox(EVENT_TABLES, source="notify")
"""The service's one outbox: every route, handler, sweep and command of notify adds its events here."""
"""The outbox notify publishes ``notify.notification.created`` through, and the inbox of its consumers."""
