"""The rules of notifications: the users replica, what an event turns into, reading, preferences, email.

The hot reads (a page of notifications, the catch-up of a live stream) are compiled Core
statements whose rows go straight into msgspec Structs; writes that must happen once use the
table's unique keys (``ON CONFLICT DO NOTHING``) as the second guard after the consumer's inbox.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from typing import TYPE_CHECKING, Any, cast

import structlog
from prometheus_client import Counter
from sqlalchemy import Float, and_, bindparam, func, select, true, update
from sqlalchemy.dialects.postgresql import insert
from uuid_utils.compat import uuid7

from notify.mail import OutgoingEmail, SendFailure
from notify.models import SCHEMA, Base, Contact, DeliveryStatus, EmailDelivery, Notification, Preference
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
from shared.errors import NotFound
from shared.events.contracts import NotificationCreated
from shared.events.replicas import upsert_if_newer

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy import CursorResult
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

    from notify.mail import EmailTransport
    from notify.schemas import NotificationKind
    from notify.settings import NotifySettings
    from notify.templates import NotificationTemplates, Rendered
    from notify.tokens import UnsubscribeLinks
    from shared.events.contracts import Envelope
    from shared.events.outbox import Outbox

__all__ = (
    "EMAIL_DELIVERIES",
    "ContactNotReplicatedYet",
    "ContactReplica",
    "EmailSender",
    "NotificationService",
    "Notifier",
    "notifications_after",
)

log = structlog.get_logger("notify.service")

CONTACTS = Base.metadata.tables[f"{SCHEMA}.contact"]
DELIVERIES = Base.metadata.tables[f"{SCHEMA}.email_delivery"]

EMAIL_DELIVERIES = Counter(
    "notify_email_deliveries",
    "Email attempts by outcome, counted once recorded: sent, retried (a later attempt follows), failed (for "
    "good), cancelled (recipient deactivated, email turned off, no usable address).",
    ["outcome"],
)
"""On the worker's ``/metrics``; the prod alerts watch ``failed`` and ``retried`` (deploy/k8s/components/alerts)."""
EMAIL_OUTCOMES = ("sent", "retried", "failed", "cancelled")

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
_PAGE = (
    select(*_COLUMNS)
    .where(_OWNER)
    .order_by(Notification.id.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
_UNREAD_PAGE = _PAGE.where(_UNREAD)
_COUNTS = select(func.count(), func.count().filter(_UNREAD)).where(_OWNER)
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

    Every query is scoped to the caller: another user's notification is indistinguishable from none.
    """

    def __init__(self, *, session: AsyncSession, links: UnsubscribeLinks) -> None:
        self.session = session
        self.links = links

    async def page(self, user_id: uuid.UUID, *, unread_only: bool, limit: int, offset: int) -> NotificationPage:
        """A page of the user's notifications, newest first, with the unread count."""
        query = _UNREAD_PAGE if unread_only else _PAGE
        rows = await self.session.execute(query, {"user_id": user_id, "limit": limit, "offset": offset})
        items = [_notification(row) for row in rows]
        total, unread = (await self.session.execute(_COUNTS, {"user_id": user_id})).one()
        return NotificationPage(
            items=items, total=unread if unread_only else total, unread=unread, limit=limit, offset=offset
        )

    async def mark_read(self, user_id: uuid.UUID, notification_id: uuid.UUID) -> NotificationOut:
        """Mark one of the user's notifications read (it keeps the first time it was read).

        Raises:
            NotFound: No such notification of this user.
        """
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
        await self.session.commit()
        return _notification(row)

    async def mark_all_read(self, user_id: uuid.UUID) -> ReadAllOut:
        """Mark every unread notification of the user read."""
        result = await self.session.execute(
            update(Notification)
            .where(Notification.user_id == user_id, _UNREAD)
            .values(read_at=func.now())
            .execution_options(synchronize_session=False)
        )
        marked = cast("CursorResult[Any]", result).rowcount
        await self.session.commit()
        return ReadAllOut(marked=marked)

    async def preferences(self, user_id: uuid.UUID) -> Preferences:
        """The user's channels for every kind (on, unless turned off)."""
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
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[Preference.user_id, Preference.kind],
                set_={"in_app": statement.excluded.in_app, "email": statement.excluded.email, "updated_at": func.now()},
            )
        )
        await self.session.commit()
        return preferences

    async def unsubscribe(self, token: str) -> UnsubscribeOut:
        """Follow an email's unsubscribe link: that kind's emails stop, no sign-in needed.

        Raises:
            MalformedToken: Not a token (400).
            Forbidden: A forged or altered token (403).
        """
        user_id, kind = self.links.verify(token)
        await self.turn_email_off(user_id, kind)
        return UnsubscribeOut(kind=kind, email=False, message=f"You will get no more emails about {KIND_LABELS[kind]}.")

    def unsubscribe_page(self, token: str) -> str:
        """The confirmation page of an unsubscribe link; it checks the token and changes nothing.

        Raises:
            MalformedToken: Not a token (400).
            Forbidden: A forged or altered token (403).
        """
        _, kind = self.links.verify(token)
        return unsubscribe_page(kind=kind, token=token)

    async def turn_email_off(self, user_id: uuid.UUID, kind: NotificationKind) -> None:
        """Stop ``kind`` emails to the user (what an unsubscribe link does); in-app stays as it was."""
        statement = insert(Preference).values(user_id=user_id, kind=kind, in_app=True, email=False)
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[Preference.user_id, Preference.kind], set_={"email": False, "updated_at": func.now()}
            )
        )
        await self.session.commit()


class EmailSender:
    """The worker's email sweep: claims due deliveries, sends them, records each outcome.

    Claims use ``FOR UPDATE SKIP LOCKED`` and a lease (the attempt is counted and the next one
    pushed out by ``email_lease_seconds`` before sending), so any number of workers share the work,
    nothing is sent by two at once, and a worker that dies mid-send leaves its emails for a retry.
    Sending happens outside any transaction: a slow mail server holds no database connection.

    Each delivery stands alone: the transport answers for every email (building it included), and
    every answer is recorded on its own row (sent; or the error, with the next try after a backoff;
    or failed for good). A sent email is marked sent, so it never goes twice.

    One pass keeps claiming while batches come back full, for up to ``email_pass_seconds``, reusing the
    transport's connections; the worker runs the next pass at once while passes find work
    (``Sweep(drain=True)``), so the queue drains at the mail server's speed.

    Args:
        transport: How emails leave.
        settings: Batch size, attempts, backoff and lease.
    """

    def __init__(self, *, transport: EmailTransport, settings: NotifySettings) -> None:
        for outcome in EMAIL_OUTCOMES:  # a series of 0 from the start, so an alert has something to evaluate
            EMAIL_DELIVERIES.labels(outcome)
        self.transport = transport
        self.settings = settings
        self._claim = (
            select(
                EmailDelivery.id,
                EmailDelivery.subject,
                EmailDelivery.body,
                EmailDelivery.unsubscribe_url,
                EmailDelivery.attempts,
                Contact.email.label("address"),
                Contact.display_name,
                func.coalesce(Contact.is_active, False).label("active"),
                func.coalesce(Preference.email, true()).label("wanted"),
            )
            .select_from(EmailDelivery)
            .outerjoin(Contact, Contact.user_id == EmailDelivery.user_id)
            .outerjoin(
                Preference, and_(Preference.user_id == EmailDelivery.user_id, Preference.kind == EmailDelivery.kind)
            )
            .where(EmailDelivery.status == DeliveryStatus.QUEUED, EmailDelivery.next_attempt_at <= func.now())
            .order_by(EmailDelivery.next_attempt_at)
            .limit(bindparam("limit"))
            .with_for_update(of=EmailDelivery, skip_locked=True)
        )
        lease = datetime.timedelta(seconds=settings.email_lease_seconds)
        self._lease = (
            update(DELIVERIES)
            .where(DELIVERIES.c.id.in_(bindparam("ids", expanding=True)))
            .values(attempts=DELIVERIES.c.attempts + 1, next_attempt_at=func.now() + lease)
        )
        self._cancel = (
            update(DELIVERIES)
            .where(DELIVERIES.c.id.in_(bindparam("ids", expanding=True)))
            .values(status=DeliveryStatus.CANCELLED, last_error=bindparam("reason"))
        )
        # The outcome is written only over the attempt that was claimed: should a lease have run out
        # and another worker claimed the row again, this late answer changes nothing.
        this_attempt = and_(DELIVERIES.c.id == bindparam("b_id"), DELIVERIES.c.attempts == bindparam("b_attempt"))
        self._mark_sent = (
            update(DELIVERIES)
            .where(this_attempt)
            .values(status=DeliveryStatus.SENT, sent_at=func.now(), recipient=bindparam("b_recipient"))
        )
        self._mark_failed = (
            update(DELIVERIES).where(this_attempt).values(status=DeliveryStatus.FAILED, last_error=bindparam("b_error"))
        )
        self._mark_retry = (
            update(DELIVERIES)
            .where(this_attempt)
            .values(
                last_error=bindparam("b_error"),
                next_attempt_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, bindparam("b_delay", type_=Float)),
            )
        )

    async def run_once(self, sessions: async_sessionmaker[AsyncSession]) -> int:
        """One pass: send what is due, batch after batch while batches come back full.

        The database and the mail server work side by side: while one batch is being sent, the next
        is claimed and the one before is recorded. Every claimed batch is sent and recorded before
        the pass returns.

        Returns:
            How many deliveries it settled, retried or cancelled.
        """
        done = 0
        deadline = time.monotonic() + self.settings.email_pass_seconds
        recording: asyncio.Task[None] | None = None
        try:
            batch = await self._claim_due(sessions)
            while True:
                outgoing, cancelled, claimed = batch
                more = claimed >= self.settings.email_batch_size and time.monotonic() < deadline
                upcoming = asyncio.ensure_future(self._claim_due(sessions)) if more else None
                try:
                    failures = await self._send(outgoing) if outgoing else []
                    if recording is not None:
                        await recording
                        recording = None
                    if outgoing:
                        recording = asyncio.ensure_future(self._record(sessions, outgoing, failures))
                except BaseException:
                    if upcoming is not None:
                        await asyncio.gather(upcoming, return_exceptions=True)  # leased rows come back after the lease
                    raise
                done += len(outgoing) + cancelled
                if upcoming is None:
                    return done
                batch = await upcoming
        finally:
            if recording is not None:
                await recording
            await self.transport.close()

    async def _send(self, outgoing: list[OutgoingEmail]) -> list[SendFailure | None]:
        try:
            return await self.transport.send(outgoing)
        except Exception as error:  # noqa: BLE001 - a transport must answer per email; if one breaks
            # that promise, its batch is still recorded (for a retry), never left leased
            failure = SendFailure(error=f"transport failed: {type(error).__name__}: {error}", permanent=False)
            return [failure] * len(outgoing)

    async def _claim_due(self, sessions: async_sessionmaker[AsyncSession]) -> tuple[list[OutgoingEmail], int, int]:
        """The due emails, claimed for this attempt; how many were cancelled instead; how many rows came."""
        async with sessions() as session, session.begin():
            rows = (await session.execute(self._claim, {"limit": self.settings.email_batch_size})).all()
            outgoing: list[OutgoingEmail] = []
            cancelled: dict[str, list[uuid.UUID]] = {}
            for row in rows:
                if not row.active or not row.wanted or not row.address:
                    if not row.active:
                        reason = "recipient deactivated"
                    elif not row.wanted:
                        reason = "email turned off by the recipient"
                    else:
                        reason = "the recipient has no usable address"
                    cancelled.setdefault(reason, []).append(row.id)
                    continue
                outgoing.append(
                    OutgoingEmail(
                        delivery_id=row.id,
                        recipient=row.address,
                        recipient_name=row.display_name,
                        subject=row.subject,
                        body=row.body,
                        unsubscribe_url=row.unsubscribe_url,
                        attempt=row.attempts + 1,
                    )
                )
            if outgoing:
                await session.execute(self._lease, {"ids": [email.delivery_id for email in outgoing]})
            for reason, ids in cancelled.items():
                await session.execute(self._cancel, {"ids": ids, "reason": reason})
        EMAIL_DELIVERIES.labels("cancelled").inc(sum(len(ids) for ids in cancelled.values()))
        return outgoing, sum(len(ids) for ids in cancelled.values()), len(rows)

    async def _record(
        self,
        sessions: async_sessionmaker[AsyncSession],
        emails: list[OutgoingEmail],
        failures: list[SendFailure | None],
    ) -> None:
        sent: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        retried: list[dict[str, Any]] = []
        for email, failure in zip(emails, failures, strict=True):
            claimed = {"b_id": email.delivery_id, "b_attempt": email.attempt}
            if failure is None:
                sent.append(claimed | {"b_recipient": email.recipient})
            elif failure.permanent or email.attempt >= self.settings.email_max_attempts:
                log.warning("email failed for good", delivery_id=str(email.delivery_id), error=failure.error)
                failed.append(claimed | {"b_error": failure.error[:2000]})
            else:
                delay = min(
                    self.settings.email_retry_max_seconds,
                    self.settings.email_retry_base_seconds * 2 ** (email.attempt - 1),
                )
                log.info(
                    "email failed; will retry", delivery_id=str(email.delivery_id), delay=delay, error=failure.error
                )
                retried.append(claimed | {"b_error": failure.error[:2000], "b_delay": delay})
        async with sessions() as session, session.begin():
            for statement, rows in ((self._mark_sent, sent), (self._mark_failed, failed), (self._mark_retry, retried)):
                if rows:
                    await session.execute(statement, rows)
        for outcome, rows in (("sent", sent), ("failed", failed), ("retried", retried)):
            EMAIL_DELIVERIES.labels(outcome).inc(len(rows))
