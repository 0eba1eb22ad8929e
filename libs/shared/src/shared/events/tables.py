"""The outbox and inbox tables, defined once and added to each service's own schema."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Column, DateTime, Index, Integer, LargeBinary, MetaData, String, Table, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID

__all__ = ("EventTables", "define_event_tables")


@dataclass(frozen=True)
class EventTables:
    """A service's outbox (events waiting to leave) and inbox (events already applied)."""

    outbox: Table
    inbox: Table

    @property
    def schema(self) -> str:
        """The service's schema."""
        return str(self.outbox.schema)

    @property
    def notify_channel(self) -> str:
        """The Postgres NOTIFY channel that wakes the relay when events are committed."""
        return f"{self.schema}_outbox"


def define_event_tables(metadata: MetaData) -> EventTables:
    """Add ``outbox`` and ``inbox`` to a service's metadata (and so to its migrations)."""
    outbox = Table(
        "outbox",
        metadata,
        Column("id", UUID(as_uuid=True), primary_key=True, comment="The event id (UUIDv7), also Nats-Msg-Id."),
        Column("subject", String(255), nullable=False, comment="The NATS subject, which is the event type."),
        Column("body", LargeBinary, nullable=False, comment="The CloudEvents JSON exactly as it is published."),
        Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb"), comment="Trace context."),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True)),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("last_error", Text),
    )
    # The relay only ever looks at unpublished rows, oldest first: a small partial index.
    Index("ix_outbox_unpublished", outbox.c.created_at, postgresql_where=outbox.c.published_at.is_(None))
    Index("ix_outbox_published_at", outbox.c.published_at, postgresql_where=outbox.c.published_at.isnot(None))
    inbox = Table(
        "inbox",
        metadata,
        Column("consumer", String(100), primary_key=True, comment="The durable consumer that applied it."),
        Column("event_id", UUID(as_uuid=True), primary_key=True),
        Column("event_type", String(255), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    return EventTables(outbox=outbox, inbox=inbox)
