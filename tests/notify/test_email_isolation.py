"""One account's data never stops anyone else's email: each delivery succeeds or fails alone.

Rows written before addresses and names were checked at the edge (or arriving in old events) can
still hold anything; these tests put such rows between good ones, over a real SMTP server.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import msgspec
import pytest
from sqlalchemy import func, insert, select, update
from uuid_utils.compat import uuid7

from devtools.testing import eventually
from notify.mail import OutgoingEmail, SendFailure, build_message
from notify.models import DeliveryStatus, EmailDelivery
from notify.sending import EmailSender
from notify.service import ContactReplica
from tests.notify.helpers import (
    INJECTED_URL,
    MailServer,
    Publisher,
    RunningWorker,
    corrupt_unsubscribe_url,
    deliveries_of,
    delivery_of,
    notifications_of,
    queue_welcome,
    registered,
    sender_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from notify.events import NotificationPipeline
    from notify.settings import NotifySettings


@pytest.fixture
def utf8_mail_server() -> Iterator[MailServer]:
    server = MailServer(smtputf8=True)
    server.start()
    yield server
    server.stop()


async def test_poisoned_rows_between_good_ones_fail_alone_and_the_good_ones_go_once_in_the_first_pass(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    mail_server: MailServer,
) -> None:
    settings = msgspec.structs.replace(notify_settings, email_batch_size=20, email_max_attempts=3)
    good = [await queue_welcome(pipeline, sessions, address=f"good{index}@example.com") for index in range(3)]
    non_ascii = await queue_welcome(pipeline, sessions, address="ünï@exämple.com")  # this server has no SMTPUTF8
    good.append(await queue_welcome(pipeline, sessions, address="good3@example.com"))
    not_an_address = await queue_welcome(pipeline, sessions, address="not an address")
    injected_name = await queue_welcome(pipeline, sessions, address="eve@example.com", name="Eve\r\nBcc: x@y")
    broken_header = await queue_welcome(pipeline, sessions, address="good4@example.com")
    await corrupt_unsubscribe_url(sessions, broken_header)
    good.append(await queue_welcome(pipeline, sessions, address="good5@example.com"))
    sender = sender_for(settings)

    assert await sender.run_once(sessions) == 9  # one pass settles or schedules every row

    received = sorted(str(envelope[1][0]) for envelope in mail_server.envelopes)
    assert received == sorted([*(f"good{index}@example.com" for index in range(6) if index != 4), "eve@example.com"])
    for user_id in [*good, injected_name]:
        delivery = await delivery_of(engine, user_id)
        assert (delivery.status, delivery.attempts, delivery.last_error) == (DeliveryStatus.SENT, 1, None)
    for user_id, reason in ((non_ascii, "SMTPUTF8"), (not_an_address, "recipient address refused")):
        delivery = await delivery_of(engine, user_id)
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 1)
        assert delivery.last_error is not None
        assert reason in delivery.last_error
    retried = await delivery_of(engine, broken_header)
    assert (retried.status, retried.attempts) == (DeliveryStatus.QUEUED, 1)
    assert retried.last_error is not None
    assert "could not build the email" in retried.last_error

    eve = next(message for message in mail_server.messages if "eve@" in str(message["To"]))
    assert str(eve["To"]) == '"Eve Bcc: x@y" <eve@example.com>'  # one quoted name, no header added
    assert eve["Bcc"] is None
    assert all(b"victim" not in raw for raw in mail_server.raw)


async def test_a_row_that_cannot_be_built_is_retried_with_backoff_and_fails_after_its_last_attempt(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    mail_server: MailServer,
) -> None:
    settings = msgspec.structs.replace(notify_settings, email_max_attempts=3, email_retry_base_seconds=0.05)
    broken = await queue_welcome(pipeline, sessions, address="broken@example.com")
    await corrupt_unsubscribe_url(sessions, broken)
    sender = sender_for(settings)

    async def given_up() -> bool:
        await sender.run_once(sessions)
        return (await delivery_of(engine, broken)).status != DeliveryStatus.QUEUED

    await eventually(given_up, what="the broken row given up")
    delivery = await delivery_of(engine, broken)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 3)
    assert delivery.last_error is not None
    assert "linefeed or carriage return" in delivery.last_error
    assert mail_server.messages == []


async def test_through_the_worker_events_from_before_the_checks_poison_nothing(
    notify_settings: NotifySettings,
    publisher: Publisher,
    engine: AsyncEngine,
    mail_server: MailServer,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The worker's sweep, fed by events: good emails arrive exactly once; poisoned ones end failed."""
    settings = msgspec.structs.replace(notify_settings, email_max_attempts=3, email_batch_size=5)
    started = time.monotonic()
    timeline: list[str] = []

    def note(what: str) -> None:
        timeline.append(f"t={time.monotonic() - started:6.3f}s {what}")

    good = [uuid.uuid4() for _ in range(12)]
    poisoned = {uuid.uuid4(): "ünï@exämple.com", uuid.uuid4(): "not an address", uuid.uuid4(): "a@exa mple.com"}
    users = [*good[:4], *list(poisoned)[:2], *good[4:8], *list(poisoned)[2:], *good[8:]]
    for user_id in users:
        await publisher.publish(registered(user_id, email=poisoned.get(user_id, f"{user_id.hex[:8]}@example.com")))
    note(f"published {len(users)} users.user.registered ({len(poisoned)} with addresses from before the checks)")
    # A stored row that is corrupt on its own (not through an event): it raises while being built.
    corrupt_user = uuid.uuid4()
    async with sessions() as session, session.begin():
        await session.execute(
            insert(EmailDelivery).values(
                id=uuid7(),
                user_id=corrupt_user,
                kind="welcome",
                source_event_id=uuid.uuid4(),
                subject="Hello",
                body="Hello",
                unsubscribe_url=INJECTED_URL,
            )
        )
    await apply_directly_contact(sessions, corrupt_user)
    note("inserted one corrupt delivery row directly")

    async with RunningWorker(settings):

        async def all_good_sent() -> bool:
            return len(mail_server.messages) >= len(good)

        await eventually(all_good_sent, what="every good email")
        note(f"{len(mail_server.messages)} good emails received")

        async def all_settled() -> bool:
            async with engine.connect() as connection:
                statuses = (await connection.execute(select(EmailDelivery.status))).scalars().all()
            return len(statuses) == len(users) + 1 and DeliveryStatus.QUEUED not in statuses

        await eventually(all_settled, what="every delivery settled")
        note("every delivery settled (sent or failed)")

    recipients = [envelope[1][0] for envelope in mail_server.envelopes]
    assert sorted(recipients) == sorted(f"{user_id.hex[:8]}@example.com" for user_id in good)  # each exactly once
    for user_id in poisoned:
        delivery = await delivery_of(engine, user_id)
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 1)
        assert delivery.last_error
        timeline.append(f"  poisoned {user_id.hex[:8]}: failed, attempts=1: {delivery.last_error[:90]}")
    corrupt = await delivery_of(engine, corrupt_user)
    assert (corrupt.status, corrupt.attempts) == (DeliveryStatus.FAILED, 3)
    timeline.append(f"  corrupt row: failed, attempts={corrupt.attempts}: {(corrupt.last_error or '')[:90]}")
    print("\n".join(["", "poisoned batch timeline:", *timeline]))


async def apply_directly_contact(sessions: async_sessionmaker[AsyncSession], user_id: uuid.UUID) -> None:
    async with sessions() as session, session.begin():
        await ContactReplica(session).apply(user_id, sequence=1, email="corrupt@example.com", name="C", active=True)


async def test_a_non_ascii_address_goes_with_smtputf8_when_the_server_offers_it(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    utf8_mail_server: MailServer,
) -> None:
    settings = msgspec.structs.replace(notify_settings, email_url=f"smtp://127.0.0.1:{utf8_mail_server.port}")
    user_id = await queue_welcome(pipeline, sessions, address="Ünï@Exämple.com", name="Zoë")
    ascii_user = await queue_welcome(pipeline, sessions, address="ada@example.com")

    assert await sender_for(settings).run_once(sessions) == 2

    by_recipient = {envelope[1][0]: envelope for envelope in utf8_mail_server.envelopes}
    assert set(by_recipient) == {"ünï@xn--exmple-cua.com", "ada@example.com"}
    assert "SMTPUTF8" in by_recipient["ünï@xn--exmple-cua.com"][2]
    assert "SMTPUTF8" not in by_recipient["ada@example.com"][2]  # only the address that needs it
    message = next(m for m in utf8_mail_server.messages if "xn--" in str(m["To"]))
    assert str(message["To"]) == "Zoë <ünï@xn--exmple-cua.com>"
    assert (await delivery_of(engine, user_id)).status == DeliveryStatus.SENT
    assert (await delivery_of(engine, ascii_user)).status == DeliveryStatus.SENT


async def test_list_unsubscribe_is_a_raw_url_with_one_click_post_on_the_wire_and_in_files(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    mail_server: MailServer,
    tmp_path: Path,
) -> None:
    user_id = await queue_welcome(pipeline, sessions, address="ada@example.com", name="Zoë")
    assert await sender_for(notify_settings).run_once(sessions) == 1
    url = (await delivery_of(engine, user_id)).unsubscribe_url
    assert len(url) > 78  # long enough that default folding would have encoded it
    async with sessions() as session, session.begin():
        await session.execute(update(EmailDelivery).values(status=DeliveryStatus.QUEUED, next_attempt_at=func.now()))
    files = msgspec.structs.replace(notify_settings, email_url=(tmp_path / "mail").as_uri())
    assert await sender_for(files).run_once(sessions) == 1
    [eml] = (tmp_path / "mail").iterdir()

    for raw in (mail_server.raw[0], eml.read_bytes()):
        headers = raw.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n")
        assert f"List-Unsubscribe: <{url}>" in headers
        assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in headers
        assert not any("=?" in line for line in headers if line.startswith("List-Unsubscribe"))


def test_no_stored_value_adds_a_header() -> None:
    values = ["x\r\nBcc: victim@example.com", "x\nBcc: victim@example.com", "x\rBcc: v@e", "x\x85Bcc: v@e"]
    for value in values:
        outgoing = OutgoingEmail(
            delivery_id=uuid.uuid4(),
            recipient="ada@example.com",
            recipient_name=value,
            subject=value,
            body="Hello",
            unsubscribe_url="http://notify.test/u?token=t",
        )
        message = build_message(outgoing, sender="Relay <no-reply@relay.example>")
        assert message["Bcc"] is None
        assert set(message.keys()) == {
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "Auto-Submitted",
            "Content-Type",
            "Content-Transfer-Encoding",
            "MIME-Version",
        }
        with pytest.raises(ValueError, match="linefeed or carriage return"):
            build_message(msgspec.structs.replace(outgoing, unsubscribe_url=value), sender="r@relay.example")


async def test_one_pass_goes_on_while_batches_come_back_full(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    mail_server: MailServer,
) -> None:
    settings = msgspec.structs.replace(notify_settings, email_batch_size=4, email_pass_seconds=600.0)
    for index in range(30):
        await queue_welcome(pipeline, sessions, address=f"user{index}@example.com")

    assert await sender_for(settings).run_once(sessions) == 30
    assert len(mail_server.messages) == 30
    assert len({envelope[1][0] for envelope in mail_server.envelopes}) == 30


async def test_the_worker_starts_the_next_pass_at_once_while_passes_find_work(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    mail_server: MailServer,
    jetstream: object,
) -> None:
    # One batch per pass and an hour between idle passes: only draining sends all 20 in this test's life.
    settings = msgspec.structs.replace(
        notify_settings, email_batch_size=5, email_pass_seconds=0.0, email_sweep_seconds=3600.0
    )
    for index in range(20):
        await queue_welcome(pipeline, sessions, address=f"drain{index}@example.com")

    async with RunningWorker(settings):

        async def all_sent() -> bool:
            return len(mail_server.messages) == 20

        await eventually(all_sent, what="four full batches, one pass after the other")
    assert len({envelope[1][0] for envelope in mail_server.envelopes}) == 20


class BrokenTransport:
    """A transport that breaks its promise to answer per email."""

    async def send(self, emails: Sequence[OutgoingEmail]) -> list[SendFailure | None]:
        raise RuntimeError("the transport itself broke")

    async def close(self) -> None:
        pass


async def test_a_transport_that_raises_leaves_its_batch_recorded_for_a_retry_not_leased(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> None:
    users = [await queue_welcome(pipeline, sessions, address=f"user{index}@example.com") for index in range(3)]

    assert await EmailSender(transport=BrokenTransport(), settings=notify_settings).run_once(sessions) == 3

    for user_id in users:
        delivery = await delivery_of(engine, user_id)
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.QUEUED, 1)
        assert delivery.last_error == "transport failed: RuntimeError: the transport itself broke"
        lease_left = delivery.next_attempt_at - delivery.created_at
        assert lease_left.total_seconds() < notify_settings.email_lease_seconds  # the backoff, not the lease


async def test_an_old_event_with_nul_in_the_name_and_address_is_stored_without_an_email_to_send(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    mail_server: MailServer,
) -> None:
    user_id = await queue_welcome(pipeline, sessions, address="e\x00ve@example.com", name="E\x00ve\r\n\u202eX")

    [welcome] = await notifications_of(engine, user_id)  # the event applied: no retry, no dead letter
    assert welcome.title == "Welcome to Relay Shop, E ve X"
    assert await deliveries_of(engine, user_id) == []  # no usable address: nothing queued to fail later
    assert await sender_for(notify_settings).run_once(sessions) == 0
    assert mail_server.messages == []
