"""Email: queued in the event's transaction, sent by the worker's sweep over real SMTP, retried, logged."""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import uuid
from typing import TYPE_CHECKING

import msgspec
import pytest

from devtools.stack.servers import free_port
from devtools.testing import eventually
from notify.events import users_replica_handlers
from notify.mail import FileTransport, SmtpTransport, transport_from_url
from notify.models import DeliveryStatus
from notify.service import NotificationService
from shared.events.contracts import UserDeactivated
from tests.notify.helpers import (
    MailServer,
    Publisher,
    RunningWorker,
    apply_directly,
    deliveries_of,
    delivery_of,
    queue_welcome,
    registered,
    sender_for,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from notify.events import NotificationPipeline
    from notify.models import EmailDelivery
    from notify.sending import EmailSender
    from notify.settings import NotifySettings


async def welcome_after_one_pass(
    sender: EmailSender,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> EmailDelivery:
    """A welcome email queued, one pass of ``sender`` (which handles exactly it), and its delivery row after."""
    user_id = await queue_welcome(pipeline, sessions)
    assert await sender.run_once(sessions) == 1
    return await delivery_of(engine, user_id)


async def test_an_email_is_sent_once_with_its_unsubscribe_header_and_logged_as_sent(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    mail_server: MailServer,
) -> None:
    sender = sender_for(notify_settings)

    first_pass = await welcome_after_one_pass(sender, pipeline, sessions, engine)
    assert await sender.run_once(sessions) == 0
    assert await sender.run_once(sessions) == 0

    [message] = mail_server.messages
    delivery = await delivery_of(engine, first_pass.user_id)
    assert message["To"] == "Ada <a@example.com>"
    assert message["From"] == notify_settings.email_from
    assert message["Subject"] == "Welcome to Relay Shop, Ada"
    assert message["Message-ID"] == f"<{delivery.id}@relay-shop.example>"
    assert message["List-Unsubscribe"] == f"<{delivery.unsubscribe_url}>"
    assert delivery.unsubscribe_url in message.get_content()
    assert (delivery.status, delivery.attempts, delivery.recipient) == (DeliveryStatus.SENT, 1, "a@example.com")
    assert delivery.sent_at is not None
    assert delivery.last_error is None


async def test_a_temporary_refusal_is_retried_by_the_worker_and_logged(
    worker: RunningWorker, publisher: Publisher, engine: AsyncEngine, mail_server: MailServer
) -> None:
    mail_server.refusals.append("451 4.3.0 Try again later")
    user_id = uuid.uuid4()
    await publisher.publish(registered(user_id))

    await eventually(lambda: _status(engine, user_id, DeliveryStatus.SENT), what="the email sent on a retry")
    delivery = await delivery_of(engine, user_id)
    assert delivery.attempts == 2
    assert delivery.last_error is not None
    assert "451" in delivery.last_error
    assert len(mail_server.messages) == 1


async def test_a_retry_waits_for_its_backoff(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    mail_server: MailServer,
) -> None:
    settings = msgspec.structs.replace(notify_settings, email_retry_base_seconds=3600.0)
    mail_server.refusals.append("421 4.7.0 Too busy")
    sender = sender_for(settings)

    delivery = await welcome_after_one_pass(sender, pipeline, sessions, engine)
    assert await sender.run_once(sessions) == 0  # not due again for an hour

    assert (delivery.status, delivery.attempts) == (DeliveryStatus.QUEUED, 1)
    assert delivery.next_attempt_at > datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=59)
    assert mail_server.messages == []


async def test_a_mail_server_that_is_down_at_first_gets_the_email_once_it_is_up(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> None:
    port = free_port()
    settings = msgspec.structs.replace(notify_settings, email_url=f"smtp://127.0.0.1:{port}")
    sender = sender_for(settings)

    failed_once = await welcome_after_one_pass(sender, pipeline, sessions, engine)
    assert (failed_once.status, failed_once.attempts) == (DeliveryStatus.QUEUED, 1)
    assert "SMTPConnectError" in (failed_once.last_error or "")
    user_id = failed_once.user_id

    late_server = MailServer(port)
    late_server.start()
    try:
        await eventually(lambda: _sent_by(sender, sessions, engine, user_id), what="sent once the server is up")
    finally:
        late_server.stop()
    assert len(late_server.messages) == 1
    assert (await delivery_of(engine, user_id)).attempts == 2


async def test_a_permanent_refusal_is_not_retried(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    mail_server: MailServer,
) -> None:
    mail_server.refusals.append("554 5.6.0 Message refused")

    delivery = await welcome_after_one_pass(sender_for(notify_settings), pipeline, sessions, engine)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 1)
    assert "554" in (delivery.last_error or "")
    assert await sender_for(notify_settings).run_once(sessions) == 0  # not retried, ever


async def test_an_email_is_given_up_after_its_last_attempt(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    mail_server: MailServer,
) -> None:
    settings = msgspec.structs.replace(notify_settings, email_max_attempts=2, email_retry_base_seconds=0.05)
    mail_server.refusals.extend(["451 4.3.0 Try again later"] * 3)
    user_id = await queue_welcome(pipeline, sessions)
    sender = sender_for(settings)

    await eventually(lambda: _settled(sender, sessions, engine, user_id), what="the email given up")
    delivery = await delivery_of(engine, user_id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 2)
    assert mail_server.messages == []


async def deactivate(
    pipeline: NotificationPipeline, sessions: async_sessionmaker[AsyncSession], user: uuid.UUID
) -> None:
    await apply_directly(sessions, users_replica_handlers(pipeline), UserDeactivated(user_id=user), sequence=2)


async def unsubscribe(
    pipeline: NotificationPipeline, sessions: async_sessionmaker[AsyncSession], user: uuid.UUID
) -> None:
    async with sessions() as session:
        await NotificationService(session=session, links=pipeline.links).unsubscribe(
            pipeline.links.token(user, "welcome")
        )


@pytest.mark.parametrize(
    ("change", "reason"),
    [(deactivate, "recipient deactivated"), (unsubscribe, "email turned off by the recipient")],
    ids=["deactivated", "unsubscribed"],
)
async def test_an_email_still_queued_when_its_user_is_deactivated_or_unsubscribes_is_cancelled(
    change: Callable[[NotificationPipeline, async_sessionmaker[AsyncSession], uuid.UUID], Awaitable[None]],
    reason: str,
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    mail_server: MailServer,
) -> None:
    user_id = await queue_welcome(pipeline, sessions)
    await change(pipeline, sessions, user_id)

    assert await sender_for(notify_settings).run_once(sessions) == 1
    delivery = await delivery_of(engine, user_id)
    assert (delivery.status, delivery.last_error) == (DeliveryStatus.CANCELLED, reason)
    assert mail_server.messages == []


async def test_two_senders_at_once_send_every_email_exactly_once(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    mail_server: MailServer,
) -> None:
    settings = msgspec.structs.replace(notify_settings, email_batch_size=4)
    for index in range(24):
        await queue_welcome(pipeline, sessions, address=f"user{index}@example.com")
    first, second = sender_for(settings), sender_for(settings)

    while sum(await asyncio.gather(first.run_once(sessions), second.run_once(sessions))):
        pass

    recipients = [str(message["To"]) for message in mail_server.messages]
    assert len(recipients) == 24
    assert len(set(recipients)) == 24


async def test_credentials_in_the_email_url_sign_in_to_the_mail_server(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> None:
    guarded = MailServer(credentials=("mailer", "p@ss:word/1"))
    guarded.start()
    try:
        url = f"smtp://mailer:p%40ss%3Aword%2F1@127.0.0.1:{guarded.port}"
        user_id = await queue_welcome(pipeline, sessions)
        assert await sender_for(msgspec.structs.replace(notify_settings, email_url=url)).run_once(sessions) == 1
    finally:
        guarded.stop()
    assert guarded.logins == ["mailer"]
    assert len(guarded.messages) == 1
    assert (await delivery_of(engine, user_id)).status == DeliveryStatus.SENT


async def test_the_file_transport_writes_each_email_as_an_eml_file(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    mail_dir = tmp_path / "mail"
    settings = msgspec.structs.replace(notify_settings, email_url=mail_dir.as_uri())
    user_id = await queue_welcome(pipeline, sessions)

    assert await sender_for(settings).run_once(sessions) == 1
    delivery = await delivery_of(engine, user_id)
    [written] = list(mail_dir.iterdir())
    assert written.name == f"{delivery.id}.eml"
    message = email.message_from_bytes(written.read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "Welcome to Relay Shop, Ada"
    assert delivery.status == DeliveryStatus.SENT


def test_the_email_url_chooses_the_transport() -> None:
    sender = "Relay <no-reply@example.com>"
    plain = transport_from_url("smtp://mail.example.com:2525", sender=sender)
    secured = transport_from_url("smtp://u%40x:pw@mail.example.com:587?starttls=true", sender=sender)
    implicit = transport_from_url("smtps://mail.example.com", sender=sender)
    files = transport_from_url("file:///var/mail/relay", sender=sender)
    relative = transport_from_url("file:.data/mail", sender=sender)

    assert isinstance(plain, SmtpTransport)
    assert (plain.hostname, plain.port, plain.start_tls, plain.use_tls, plain.username) == (
        "mail.example.com",
        2525,
        False,
        False,
        None,
    )
    assert isinstance(secured, SmtpTransport)
    assert (secured.port, secured.start_tls, secured.username, secured.password) == (587, True, "u@x", "pw")
    assert isinstance(implicit, SmtpTransport)
    assert (implicit.port, implicit.use_tls) == (465, True)
    assert isinstance(files, FileTransport)
    assert str(files.directory) == "/var/mail/relay"
    assert isinstance(relative, FileTransport)
    assert str(relative.directory) == ".data/mail"
    with pytest.raises(ValueError, match="smtp://, smtps:// or file://"):
        transport_from_url("http://mail.example.com", sender=sender)


async def _status(engine: AsyncEngine, user_id: uuid.UUID, status: str) -> bool:
    deliveries = await deliveries_of(engine, user_id)
    return bool(deliveries) and deliveries[0].status == status


async def _sent_by(
    sender: EmailSender, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, user_id: uuid.UUID
) -> bool:
    await sender.run_once(sessions)
    return await _status(engine, user_id, DeliveryStatus.SENT)


async def _settled(
    sender: EmailSender, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, user_id: uuid.UUID
) -> bool:
    await sender.run_once(sessions)
    return not await _status(engine, user_id, DeliveryStatus.QUEUED)
