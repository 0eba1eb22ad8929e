from __future__ import annotations

import asyncio
import email
import email.policy
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import func, pool, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from devtools.stack.servers import free_port
from devtools.testing import prepare_service_database, serve_app, truncate_schema
from notify.app import DATABASE, create_app
from notify.events import NotificationPipeline
from notify.live import LivePublisher
from notify.models import EVENT_TABLES, OUTBOX, Contact, EmailDelivery, Notification
from notify.settings import NotifySettings
from notify.templates import NotificationTemplates
from notify.tokens import UnsubscribeLinks
from notify.worker import worker_plan
from shared.events.consumer import EventContext
from shared.events.contracts import (
    EventPayload,
    OrderLine,
    OrderPlaced,
    UserRegistered,
    encode_event,
    new_envelope,
)
from shared.worker import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from email.message import EmailMessage

    import httpx
    from aiosmtpd.smtp import SMTP, Envelope, Session
    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer, PostgresServer
    from shared.auth import AccessTokenSigner
    from shared.events.consumer import EventHandlers
    from shared.events.contracts import Envelope as EventEnvelope

UNSUBSCRIBE_SECRET = "unsubscribe-secret-for-the-tests"
PUBLIC_BASE_URL = "http://notify.test"


@pytest.fixture(scope="session")
def notify_database_url(postgres_server: PostgresServer) -> str:
    return prepare_service_database(postgres_server, DATABASE)


@pytest.fixture
async def notify_database(notify_database_url: str) -> AsyncIterator[str]:
    yield notify_database_url
    await truncate_schema(notify_database_url, "notify")


class MailServer:
    """A real SMTP server (aiosmtpd) on loopback that keeps what it accepts and refuses on demand."""

    def __init__(
        self, port: int | None = None, *, credentials: tuple[str, str] | None = None, smtputf8: bool = False
    ) -> None:
        self.port = port or free_port()
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []
        """Each accepted message as it came over the wire."""
        self.envelopes: list[tuple[str, list[str], list[str]]] = []
        """Each accepted message's envelope: sender, recipients, MAIL FROM options."""
        self.refusals: list[str] = []
        """Replies to the next DATA commands instead of accepting, like ``451 4.3.0 try again later``."""
        self.logins: list[str] = []
        self.credentials = credentials
        options: dict[str, Any] = {}
        if credentials is not None:
            options = {"authenticator": self._authenticate, "auth_require_tls": False}
        self.controller = Controller(
            self, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=smtputf8, decode_data=False, **options
        )

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        if self.refusals:
            return self.refusals.pop(0)
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.raw.append(content)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos), list(envelope.mail_options)))
        self.messages.append(email.message_from_bytes(content, policy=email.policy.default))
        return "250 OK"

    def _authenticate(self, _server: SMTP, _session: Session, _envelope: Envelope, _how: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword) and self.credentials is not None:
            login, password = data.login.decode(), data.password.decode()
            if (login, password) == self.credentials:
                self.logins.append(login)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def mail_server() -> Iterator[MailServer]:
    server = MailServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def notify_settings(
    notify_database: str, access_token_signer: AccessTokenSigner, mail_server: MailServer, nats_server: NatsServer
) -> NotifySettings:
    return NotifySettings(
        database_url=notify_database,
        jwt_public_keys=access_token_signer.public_key_pem(),
        nats_url=nats_server.url,
        unsubscribe_secret=UNSUBSCRIBE_SECRET,
        public_base_url=PUBLIC_BASE_URL,
        email_url=f"smtp://127.0.0.1:{mail_server.port}",
        email_sweep_seconds=0.1,
        email_retry_base_seconds=0.2,
        email_timeout_seconds=5.0,
        stream_heartbeat_seconds=0.5,
        worker_health_port=0,
        outbox_poll_seconds=0.2,
    )


@pytest.fixture
async def client(notify_settings: NotifySettings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(create_app(notify_settings)) as client:
        yield client


@pytest.fixture
async def engine(notify_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(notify_database, poolclass=pool.NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


class RunningWorker:
    """The notify worker (relay, both consumers, email sweep) running in the test's loop."""

    def __init__(self, settings: NotifySettings) -> None:
        self.live = LivePublisher(settings)
        self.worker = Worker(worker_plan(settings, live=self.live))
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningWorker:
        self.task = asyncio.create_task(self.worker.run(self.stop))
        return self

    async def __aexit__(self, *_: object) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.live.close()


@pytest.fixture
async def worker(notify_settings: NotifySettings, jetstream: JetStreamContext) -> AsyncIterator[RunningWorker]:
    async with RunningWorker(notify_settings) as running:
        yield running


@pytest.fixture
async def pipeline(notify_settings: NotifySettings) -> AsyncIterator[NotificationPipeline]:
    """What the worker's handlers use, for tests that run handlers without a consumer."""
    live = LivePublisher(notify_settings)
    yield NotificationPipeline(
        templates=NotificationTemplates(),
        outbox=OUTBOX,
        links=UnsubscribeLinks(notify_settings.unsubscribe_secret, notify_settings.public_base_url),
        live=live,
    )
    await live.close()


class Publisher:
    """Publishes events as users and orders would (through JetStream, with the event id as message id)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def publish(self, payload: EventPayload, *, sequence: int = 1) -> EventEnvelope:
        source = payload.event_type.split(".", 1)[0]
        envelope = new_envelope(payload, source=source, sequence=sequence)
        await self.again(envelope, message_id=envelope.id)
        return envelope

    async def again(self, envelope: EventEnvelope, *, message_id: str) -> None:
        """The same event under another message id: what a replay or a second relay may deliver."""
        await self.js.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": message_id})


@pytest.fixture
def publisher(jetstream: JetStreamContext) -> Publisher:
    return Publisher(jetstream)


def registered(user_id: uuid.UUID, *, email: str = "ada@example.com", name: str = "Ada") -> UserRegistered:
    return UserRegistered(user_id=user_id, email=email, display_name=name, role="user")


def placed(user_id: uuid.UUID, *, total: int = 2500, quantity: int = 2) -> OrderPlaced:
    line = OrderLine(product_id=uuid.uuid4(), sku="MUG", name="Mug", quantity=quantity, unit_price=total // quantity)
    return OrderPlaced(order_id=uuid.uuid4(), user_id=user_id, lines=[line], total=total, currency="EUR")


async def apply_directly(
    sessions: async_sessionmaker[AsyncSession],
    handlers: EventHandlers,
    payload: EventPayload,
    *,
    sequence: int = 1,
    envelope: EventEnvelope | None = None,
) -> EventContext:
    """Run the handler for ``payload`` in a transaction of its own, as the consumer would, minus the inbox."""
    source = payload.event_type.split(".", 1)[0]
    envelope = envelope or new_envelope(payload, source=source, sequence=sequence)
    handler = handlers.get(type(payload))
    assert handler is not None
    async with sessions() as session, session.begin():
        context = EventContext(session=session, envelope=envelope, outbox=OUTBOX)
        await handler(payload, context)
    for effect in context.after_commit:
        await effect()
    return context


async def count(engine: AsyncEngine, model: type[Any], *conditions: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)


async def notifications_of(engine: AsyncEngine, user_id: uuid.UUID) -> list[Notification]:
    async with AsyncSession(engine) as session:
        query = select(Notification).where(Notification.user_id == user_id).order_by(Notification.id)
        return list((await session.scalars(query)).all())


async def deliveries_of(engine: AsyncEngine, user_id: uuid.UUID) -> list[EmailDelivery]:
    async with AsyncSession(engine) as session:
        query = select(EmailDelivery).where(EmailDelivery.user_id == user_id).order_by(EmailDelivery.id)
        return list((await session.scalars(query)).all())


async def contact_of(engine: AsyncEngine, user_id: uuid.UUID) -> Contact | None:
    async with AsyncSession(engine) as session:
        return await session.get(Contact, user_id)


async def outbox_types(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(EVENT_TABLES.outbox.c.subject).order_by(EVENT_TABLES.outbox.c.id))
        return [row.subject for row in rows]


def bearer(signer: AccessTokenSigner, user_id: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {signer.sign(subject=user_id, roles=['user'])}"}
