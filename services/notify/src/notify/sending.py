"""The worker's email sweep: due deliveries claimed, sent through a transport, each outcome recorded.

The delivery rows are written by ``Notifier`` (``notify.service``) in the event's transaction; how an
email leaves is the transport's (``notify.mail``); this module is what happens in between.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter
from sqlalchemy import Float, and_, bindparam, func, select, true, update

from notify.mail import OutgoingEmail, SendFailure
from notify.models import SCHEMA, Base, Contact, DeliveryStatus, EmailDelivery, Preference
from shared.db import unit_of_work

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from notify.mail import EmailTransport
    from notify.settings import NotifySettings

__all__ = ("EMAIL_DELIVERIES", "EMAIL_OUTCOMES", "EmailSender")

log = structlog.get_logger("notify.sending")

DELIVERIES = Base.metadata.tables[f"{SCHEMA}.email_delivery"]

EMAIL_DELIVERIES = Counter(
    "notify_email_deliveries",
    "Email attempts by outcome, counted once recorded: sent, retried (a later attempt follows), failed (for "
    "good), cancelled (recipient deactivated, email turned off, no usable address).",
    ["outcome"],
)
"""On the worker's ``/metrics``; the prod alerts watch ``failed`` and ``retried`` (deploy/k8s/components/alerts)."""
EMAIL_OUTCOMES = ("sent", "retried", "failed", "cancelled")


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
        async with sessions() as session, unit_of_work(session):
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
        async with sessions() as session, unit_of_work(session):
            for statement, rows in ((self._mark_sent, sent), (self._mark_failed, failed), (self._mark_retry, retried)):
                if rows:
                    await session.execute(statement, rows)
        for outcome, rows in (("sent", sent), ("failed", failed), ("retried", retried)):
            EMAIL_DELIVERIES.labels(outcome).inc(len(rows))
