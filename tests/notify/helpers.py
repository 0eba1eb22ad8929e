"""What notify's tests share: a real SMTP server, the worker in the test's loop, ``notify api``
processes and their event streams, events as users and orders publish them, and reads of the tables."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from devtools.stack.servers import die_with_parent, free_port, stop_process
from notify.events import users_replica_handlers
from notify.live import LivePublisher
from notify.mail import transport_from_url
from notify.models import EVENT_TABLES, OUTBOX, Contact, EmailDelivery, Notification
from notify.schemas import KINDS
from notify.sending import EmailSender
from notify.worker import worker_plan
from shared.events.consumer import EventContext
from shared.events.contracts import OrderLine, OrderPlaced, UserRegistered, encode_event, new_envelope
from shared.worker import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from email.message import EmailMessage

    from aiosmtpd.smtp import SMTP, Envelope, Session
    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

    from notify.events import NotificationPipeline
    from notify.settings import NotifySettings
    from shared.auth import AccessTokenSigner
    from shared.events.consumer import EventHandlers
    from shared.events.contracts import Envelope as EventEnvelope
    from shared.events.contracts import EventPayload
    from shared.events.outbox import Outbox

UNSUBSCRIBE_SECRET = "unsubscribe-secret-for-the-tests"
PUBLIC_BASE_URL = "http://notify.test"
HEARTBEAT_SECONDS = 0.5
"""The streams' heartbeat in the ``notify api`` processes the tests start."""
ALL_ON = {kind: {"in_app": True, "email": True} for kind in KINDS}
"""The preferences of a user who never changed them."""
INJECTED_URL = "http://notify.test/notifications/unsubscribe?token=x\r\nBcc: victim@example.com"


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


def registered(user_id: uuid.UUID, *, email: str = "ada@example.com", name: str = "Ada") -> UserRegistered:
    return UserRegistered(user_id=user_id, email=email, display_name=name, role="user")


def placed(user_id: uuid.UUID, *, total: int = 2500, quantity: int = 2) -> OrderPlaced:
    line = OrderLine(product_id=uuid.uuid4(), sku="MUG", name="Mug", quantity=quantity, unit_price=total // quantity)
    return OrderPlaced(order_id=uuid.uuid4(), user_id=user_id, lines=[line], total=total, currency="EUR")


def bearer(signer: AccessTokenSigner, user_id: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {signer.sign(subject=user_id, roles=['user'])}"}


async def apply_directly(
    sessions: async_sessionmaker[AsyncSession],
    handlers: EventHandlers,
    payload: EventPayload,
    *,
    sequence: int = 1,
    envelope: EventEnvelope | None = None,
    outbox: Outbox = OUTBOX,
) -> EventContext:
    """Run the handler for ``payload`` in a transaction of its own, as the consumer would, minus the inbox."""
    source = payload.event_type.split(".", 1)[0]
    envelope = envelope or new_envelope(payload, source=source, sequence=sequence)
    handler = handlers.get(type(payload))
    assert handler is not None
    async with sessions() as session, session.begin():
        context = EventContext(session=session, envelope=envelope, outbox=outbox)
        await handler(payload, context)
    for effect in context.after_commit:
        await effect()
    return context


async def queue_welcome(
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    *,
    address: str = "a@example.com",
    name: str = "Ada",
) -> uuid.UUID:
    """A user as a ``users.user.registered`` event made them (whatever it held), and their welcome email queued."""
    user_id = uuid.uuid4()
    await apply_directly(sessions, users_replica_handlers(pipeline), registered(user_id, email=address, name=name))
    return user_id


async def known_user(engine: AsyncEngine) -> uuid.UUID:
    """A user notify already knows (straight into the replica: no welcome to get in the way)."""
    user_id = uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            insert(Contact).values(
                user_id=user_id, email=f"{user_id.hex[:8]}@example.com", display_name="Lin", sequence=1
            )
        )
    return user_id


def sender_for(settings: NotifySettings) -> EmailSender:
    """An email sweep over the transport ``settings.email_url`` names."""
    transport = transport_from_url(settings.email_url, sender=settings.email_from, timeout=5)
    return EmailSender(transport=transport, settings=settings)


async def corrupt_unsubscribe_url(sessions: async_sessionmaker[AsyncSession], user_id: uuid.UUID) -> None:
    """A delivery row whose stored header value would add a header: building its email raises."""
    async with sessions() as session, session.begin():
        delivery = await session.scalar(select(EmailDelivery).where(EmailDelivery.user_id == user_id))
        assert delivery is not None
        delivery.unsubscribe_url = INJECTED_URL


async def count(engine: AsyncEngine, model: type[Any], *conditions: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)


async def at_least(engine: AsyncEngine, model: type[Any], expected: int) -> bool:
    """Whether ``model``'s table holds ``expected`` rows or more (for ``eventually``)."""
    return await count(engine, model) >= expected


async def notifications_of(engine: AsyncEngine, user_id: uuid.UUID) -> list[Notification]:
    async with AsyncSession(engine) as session:
        query = select(Notification).where(Notification.user_id == user_id).order_by(Notification.id)
        return list((await session.scalars(query)).all())


async def deliveries_of(engine: AsyncEngine, user_id: uuid.UUID) -> list[EmailDelivery]:
    async with AsyncSession(engine) as session:
        query = select(EmailDelivery).where(EmailDelivery.user_id == user_id).order_by(EmailDelivery.id)
        return list((await session.scalars(query)).all())


async def delivery_of(engine: AsyncEngine, user_id: uuid.UUID) -> EmailDelivery:
    """The user's one email delivery, as it is now."""
    [delivery] = await deliveries_of(engine, user_id)
    return delivery


async def contact_of(engine: AsyncEngine, user_id: uuid.UUID) -> Contact | None:
    async with AsyncSession(engine) as session:
        return await session.get(Contact, user_id)


async def outbox_types(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(EVENT_TABLES.outbox.c.subject).order_by(EVENT_TABLES.outbox.c.id))
        return [row.subject for row in rows]


class ApiProcess:
    """``notify api`` (granian, one worker) on a free loopback port, configured by ``NOTIFY_*`` variables.

    httpx's in-process ASGI transport hands over a response only once it is complete, and a stream
    never completes: the stream tests read real HTTP from such processes.
    """

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = env | {"NOTIFY_HTTP_PORT": str(self.port)}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "notify"), "api"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"notify api exited with {self.process.returncode}: {self.log.read_text()}")
            with suppress(OSError), urllib.request.urlopen(f"{self.url}/health/ready", timeout=1) as response:
                if json.load(response)["status"] == "ok":
                    return
            time.sleep(0.1)
        raise TimeoutError(f"notify api not ready in {timeout}s: {self.log.read_text()}")

    def stop(self) -> None:
        stop_process(self.process, 30)


@contextmanager
def running_apis(env: dict[str, str], logs: Path, *, count: int) -> Iterator[list[ApiProcess]]:
    """``count`` ``notify api`` processes started side by side and ready; stopped on the way out."""
    processes = [ApiProcess(env, logs / f"api-{index}.log") for index in range(count)]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_ready()
        yield processes
    finally:
        for process in processes:
            process.stop()


def api_environment(database_url: str, nats_url: str, signer: AccessTokenSigner) -> dict[str, str]:
    """The ``NOTIFY_*`` variables of an API process on the tests' database and NATS (nothing else of ours)."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFY_")}
    return base | {
        "NOTIFY_DATABASE_URL": database_url,
        "NOTIFY_NATS_URL": nats_url,
        "NOTIFY_JWT_PUBLIC_KEYS": signer.public_key_pem(),
        "NOTIFY_UNSUBSCRIBE_SECRET": UNSUBSCRIBE_SECRET,
        "NOTIFY_STREAM_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "NOTIFY_LOG_JSON": "false",
    }


@dataclass
class ServerEvent:
    """One block of a Server-Sent Events stream."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads("\n".join(self.data))


class EventStream:
    """Reads a text/event-stream response block by block."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, within: float = 10.0) -> ServerEvent | None:
        """The next block, or None when the server ended the stream."""
        return await asyncio.wait_for(self._read_block(), within)

    async def next_notification(self, within: float = 10.0) -> ServerEvent:
        """The next ``notification`` event, skipping comments (heartbeats)."""
        deadline = time.monotonic() + within
        while True:
            block = await self.next(max(deadline - time.monotonic(), 0.01))
            assert block is not None, "the stream ended"
            if block.event == "notification":
                return block

    async def until_end(self, within: float) -> list[ServerEvent]:
        """Every block until the server ends the stream."""
        rest = []
        deadline = time.monotonic() + within
        while (block := await self.next(within=max(deadline - time.monotonic(), 0.01))) is not None:
            rest.append(block)
        return rest

    async def _read_block(self) -> ServerEvent | None:
        block = ServerEvent()
        seen = False
        async for line in self._lines:
            if line == "":
                if seen:
                    return block
                continue
            seen = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                block.comments.append(value)
            elif name == "data":
                block.data.append(value)
            elif name == "id":
                block.id = value
            elif name == "event":
                block.event = value
        return None


@asynccontextmanager
async def open_stream(
    base_url: str, headers: dict[str, str], *, last_event_id: str | None = None
) -> AsyncIterator[EventStream]:
    """A connected stream: its first block (the ``connected`` comment) has been read."""
    if last_event_id is not None:
        headers = headers | {"Last-Event-ID": last_event_id}
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10.0)) as client,
        client.stream("GET", "/notifications/stream", headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = EventStream(response)
        first = await stream.next()
        assert first is not None
        assert first.comments == ["connected"]
        yield stream
