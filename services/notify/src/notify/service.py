"""The rules of notifications: the users replica, what an event turns into, reading, preferences.

The hot reads (a page of notifications, the catch-up of a live stream) are compiled Core
statements whose rows go straight into msgspec Structs; writes that must happen once use the
table's unique keys (``ON CONFLICT DO NOTHING``) as the second guard after the consumer's inbox. The
emails queued here are sent by the worker's sweep (``notify.sending``).
"""

from __future__ import annotations

import datetime
import uuid
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import and_, bindparam, func, select, true, update
from sqlalchemy.dialects.postgresql import insert
from uuid_utils.compat import uuid7

from notify.models import SCHEMA, Base, Contact, EmailDelivery, Notification, Preference
from notify.schemas import (
    KINDS,
    ChannelChoice,
    NotificationOut,
    NotificationPage,
    Preferences,
    ReadAllOut,
    UnsubscribeOut,
)
from notify.templates import KIND_LABELS, unsubscribe_page
from shared.addresses import printable_name
from shared.db import driver_connection, unit_of_work
from shared.errors import NotFound
from shared.events.contracts import NotificationCreated
from shared.events.replicas import upsert_if_newer

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy import CursorResult
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    from notify.schemas import NotificationKind
    from notify.templates import NotificationTemplates, Rendered
    from notify.tokens import UnsubscribeLinks
    from shared.events.contracts import Envelope
    from shared.events.outbox import Outbox
    from shared.pagination import PageRequest

__all__ = (
    "ContactNotReplicatedYet",
    "ContactReplica",
    "NotificationService",
    "Notifier",
    "notifications_after",
)

CONTACTS = Base.metadata.tables[f"{SCHEMA}.contact"]

_COLUMNS = (
    Notification.id,
    Notification.kind,
    Notification.title,
    Notification.body,
    Notification.created_at,
    Notification.read_at,
)
_OWNER = Notification.user_id == bindparam("user_id")
_UNREAD = Notification.read_at.is_(None)
# GET /notifications in one statement for the session's asyncpg connection (shared.db.driver_connection):
# the counts, and the page joined to them (no page rows: one row of counts with NULLs). One round
# trip instead of BEGIN, two SELECTs and COMMIT, and no statement building per request.
_PAGE_WITH_COUNTS_SQL = (
    "WITH counts AS (SELECT count(*) AS total, count(*) FILTER (WHERE read_at IS NULL) AS unread"
    f" FROM {SCHEMA}.notification WHERE user_id = $1)"
    " SELECT counts.total, counts.unread, page.id, page.kind, page.title, page.body, page.created_at, page.read_at"
    " FROM counts LEFT JOIN LATERAL (SELECT id, kind, title, body, created_at, read_at"
    f" FROM {SCHEMA}.notification WHERE user_id = $1{{unread}} ORDER BY id DESC LIMIT $2 OFFSET $3) AS page ON true"
    " ORDER BY page.id DESC"
)
_PAGE_SQL = {
    False: _PAGE_WITH_COUNTS_SQL.format(unread=""),
    True: _PAGE_WITH_COUNTS_SQL.format(unread=" AND read_at IS NULL"),
}
"""By ``unread_only``."""
_AFTER = (
    select(*_COLUMNS)
    .where(_OWNER, Notification.id > bindparam("after"))
    .order_by(Notification.id)
    .limit(bindparam("limit"))
)
_RECIPIENT = (
    select(
        Contact.email,
        Contact.display_name,
        Contact.is_active,
        func.coalesce(Preference.in_app, true()).label("in_app"),
        func.coalesce(Preference.email, true()).label("by_email"),
    )
    .select_from(Contact)
    .outerjoin(Preference, and_(Preference.user_id == Contact.user_id, Preference.kind == bindparam("kind")))
    .where(Contact.user_id == bindparam("user_id"))
)


def _notification(row: Any) -> NotificationOut:
    return NotificationOut(
        id=row.id, kind=row.kind, title=row.title, body=row.body, created_at=row.created_at, read_at=row.read_at
    )


async def notifications_after(
    connection: AsyncConnection, *, user_id: uuid.UUID, after: uuid.UUID, limit: int
) -> list[NotificationOut]:
    """The user's notifications newer than ``after`` (a notification id), oldest first."""
    rows = await connection.execute(_AFTER, {"user_id": user_id, "after": after, "limit": limit})
    return [_notification(row) for row in rows]


class ContactNotReplicatedYet(Exception):
    """An event about a user arrived before the user's registration did; retrying will find it.

    Orders and users travel in different streams, so their relative order is not guaranteed. The
    consumer retries with backoff and, should the user never appear, dead-letters the event.
    """


class ContactReplica:
    """notify's copy of each user's address, name and active flag, from users' events."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def apply(
        self,
        user_id: uuid.UUID,
        *,
        sequence: int,
        email: str | None = None,
        name: str | None = None,
        active: bool,
        tokens_valid_after: datetime.datetime | None = None,
    ) -> bool:
        """Apply one state of the user unless a newer one is already held; returns whether it was applied.

        ``tokens_valid_after`` (when the event carries it) makes the API refuse older access tokens
        and end the live streams opened with them.
        """
        values: dict[str, Any] = {"is_active": active}
        if tokens_valid_after is not None:
            values["tokens_valid_after"] = tokens_valid_after
        if email is not None:
            # Postgres text cannot hold NUL: such an address (only in events from before users
            # checked addresses) is kept as none, and that user's emails are cancelled, not retried.
            values["email"] = "" if "\x00" in email else email
        if name is not None:
            values["display_name"] = printable_name(name)[:100]
        return await upsert_if_newer(self.session, CONTACTS, key={"user_id": user_id}, values=values, sequence=sequence)


class Notifier:
    """Turns an event about a user into their notification and email, in the event's transaction.

    Args:
        session: The consumer's transaction (the notifier never commits).
        templates: The words of each kind.
        outbox: Where ``notify.notification.created`` goes.
        links: Makes the unsubscribe link of each email.
    """

    def __init__(
        self, *, session: AsyncSession, templates: NotificationTemplates, outbox: Outbox, links: UnsubscribeLinks
    ) -> None:
        self.session = session
        self.templates = templates
        self.outbox = outbox
        self.links = links

    async def notify(
        self, user_id: uuid.UUID, kind: NotificationKind, context: Mapping[str, Any], *, source: Envelope
    ) -> NotificationOut | None:
        """Store the in-app notification and queue the email the user's preferences ask for.

        Nothing happens for a deactivated user, and nothing a second time for the same source event.

        Returns:
            The new in-app notification, for live push after the commit; None if none was stored now.

        Raises:
            ContactNotReplicatedYet: notify has not heard of this user yet.
        """
        recipient = (await self.session.execute(_RECIPIENT, {"user_id": user_id, "kind": kind})).one_or_none()
        if recipient is None:
            raise ContactNotReplicatedYet(f"no contact for user {user_id} yet ({source.type} {source.id})")
        if not recipient.is_active or not (recipient.in_app or recipient.by_email):
            return None
        rendered = self.templates.render(kind, {**context, "name": recipient.display_name})
        source_event_id = uuid.UUID(source.id)
        stored = None
        if recipient.in_app:
            stored = await self._store(user_id, kind, rendered, source_event_id, source.type)
        if recipient.by_email and recipient.email:
            unsubscribe_url = self.links.url(user_id, kind)
            await self.session.execute(
                insert(EmailDelivery)
                .values(
                    id=uuid7(),
                    user_id=user_id,
                    kind=kind,
                    source_event_id=source_event_id,
                    subject=rendered.title,
                    body=self.templates.email_text(
                        kind=kind, name=recipient.display_name, body=rendered.body, unsubscribe_url=unsubscribe_url
                    ),
                    unsubscribe_url=unsubscribe_url,
                )
                .on_conflict_do_nothing(index_elements=[EmailDelivery.user_id, EmailDelivery.source_event_id])
            )
        return stored

    async def _store(
        self, user_id: uuid.UUID, kind: NotificationKind, rendered: Rendered, source_event_id: uuid.UUID, source: str
    ) -> NotificationOut | None:
        notification_id = uuid7()
        title, body = rendered.title, rendered.body
        created_at = await self.session.scalar(
            insert(Notification)
            .values(
                id=notification_id,
                user_id=user_id,
                kind=kind,
                title=title,
                body=body,
                source_event_id=source_event_id,
                source_event_type=source,
            )
            .on_conflict_do_nothing(index_elements=[Notification.user_id, Notification.source_event_id])
            .returning(Notification.created_at)
        )
        if created_at is None:
            return None  # this event already made its notification
        await self.outbox.add(
            self.session,
            NotificationCreated(notification_id=notification_id, user_id=user_id, kind=kind, title=title),
            sequence=1,
        )
        return NotificationOut(id=notification_id, kind=kind, title=title, body=body, created_at=created_at)


class NotificationService:
    """A signed-in user's notifications and preferences, and unsubscribing from a link; one transaction per call.

    Every call, reads included, is one ``unit_of_work``: a read leaves no transaction open behind it
    (SQLAlchemy begins one at the first statement), so a write that follows on the same session
    still commits its own. Every query is scoped to the caller: another user's notification is
    indistinguishable from none.
    """

    def __init__(self, *, session: AsyncSession, links: UnsubscribeLinks) -> None:
        self.session = session
        self.links = links

    async def page(self, user_id: uuid.UUID, *, unread_only: bool, request: PageRequest) -> NotificationPage:
        """A page of the user's notifications, newest first, with the unread count."""
        async with driver_connection(self.session) as connection:
            rows = await connection.fetch(_PAGE_SQL[unread_only], user_id, request.limit, request.offset)
        total, unread = rows[0]["total"], rows[0]["unread"]
        items = [
            NotificationOut(
                id=row["id"],
                kind=row["kind"],
                title=row["title"],
                body=row["body"],
                created_at=row["created_at"],
                read_at=row["read_at"],
            )
            for row in rows
            if row["id"] is not None
        ]
        return NotificationPage.of(items, total=unread if unread_only else total, request=request, unread=unread)

    async def mark_read(self, user_id: uuid.UUID, notification_id: uuid.UUID) -> NotificationOut:
        """Mark one of the user's notifications read (it keeps the first time it was read).

        Raises:
            NotFound: No such notification of this user.
        """
        async with unit_of_work(self.session):
            row = (
                await self.session.execute(
                    update(Notification)
                    .where(Notification.id == notification_id, Notification.user_id == user_id)
                    .values(read_at=func.coalesce(Notification.read_at, func.now()))
                    .returning(*_COLUMNS)
                    .execution_options(synchronize_session=False)
                )
            ).one_or_none()
            if row is None:
                raise NotFound("No such notification.")
        return _notification(row)

    async def mark_all_read(self, user_id: uuid.UUID) -> ReadAllOut:
        """Mark every unread notification of the user read."""
        async with unit_of_work(self.session):
            result = await self.session.execute(
                update(Notification)
                .where(Notification.user_id == user_id, _UNREAD)
                .values(read_at=func.now())
                .execution_options(synchronize_session=False)
            )
        return ReadAllOut(marked=cast("CursorResult[Any]", result).rowcount)

    async def preferences(self, user_id: uuid.UUID) -> Preferences:
        """The user's channels for every kind (on, unless turned off)."""
        async with unit_of_work(self.session):
            rows = await self.session.execute(
                select(Preference.kind, Preference.in_app, Preference.email).where(Preference.user_id == user_id)
            )
            chosen = {row.kind: ChannelChoice(in_app=row.in_app, email=row.email) for row in rows if row.kind in KINDS}
        return Preferences(**chosen)

    async def replace_preferences(self, user_id: uuid.UUID, preferences: Preferences) -> Preferences:
        """Make ``preferences`` the user's whole choice."""
        rows = [
            {
                "user_id": user_id,
                "kind": kind,
                "in_app": preferences.of(kind).in_app,
                "email": preferences.of(kind).email,
            }
            for kind in KINDS
        ]
        statement = insert(Preference).values(rows)
        async with unit_of_work(self.session):
            await self.session.execute(
                statement.on_conflict_do_update(
                    index_elements=[Preference.user_id, Preference.kind],
                    set_={
                        "in_app": statement.excluded.in_app,
                        "email": statement.excluded.email,
                        "updated_at": func.now(),
                    },
                )
            )
        return preferences

    async def unsubscribe(self, token: str) -> UnsubscribeOut:
        """Follow an email's unsubscribe link: that kind's emails stop (in-app stays as it was), no sign-in needed.

        Raises:
            MalformedToken: Not a token (400).
            Forbidden: A forged or altered token (403).
        """
        user_id, kind = self.links.verify(token)
        statement = insert(Preference).values(user_id=user_id, kind=kind, in_app=True, email=False)
        async with unit_of_work(self.session):
            await self.session.execute(
                statement.on_conflict_do_update(
                    index_elements=[Preference.user_id, Preference.kind],
                    set_={"email": False, "updated_at": func.now()},
                )
            )
        return UnsubscribeOut(kind=kind, email=False, message=f"You will get no more emails about {KIND_LABELS[kind]}.")

    def unsubscribe_page(self, token: str) -> str:
        """The confirmation page of an unsubscribe link; it checks the token and changes nothing.

        Raises:
            MalformedToken: Not a token (400).
            Forbidden: A forged or altered token (403).
        """
        _, kind = self.links.verify(token)
        return unsubscribe_page(kind=kind, token=token)
