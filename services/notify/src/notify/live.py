"""Live push: a stored notification reaches its user's open Server-Sent Events streams, on any replica.

The worker that stored a notification publishes it, after the commit, on the core NATS subject
``live.notify.<user_id>`` (``LivePublisher``). Every API process subscribes to ``live.notify.>``
once and hands each message to the streams it holds for that user, through one bounded queue per
stream (``LiveHub``). Core NATS is at-most-once: what a stream misses (a reconnect, a slow
client, a replica restart) it gets from the table when the client comes back with
``Last-Event-ID`` (``NotificationFeed``), since notification ids are UUIDv7 and sort by time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from litestar.response import ServerSentEventMessage

from notify.schemas import NotificationOut
from notify.service import notifications_after
from shared.errors import TooManyRequests
from shared.events.connection import connect_nats
from shared.events.permissions import inbox_prefix
from shared.events.streams import LIVE_NOTIFICATIONS

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator, Callable, Iterator
    from types import FrameType

    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from sqlalchemy.ext.asyncio import AsyncEngine

    from shared.auth import Principal
    from shared.revocations import TokenRevocations
    from shared.settings import ServiceSettings

__all__ = ("LiveConnection", "LiveHub", "LivePublisher", "NotificationFeed", "live_subject")

SHUTTING_DOWN = "server shutting down; reconnect"
ENDED_BY_EXPIRY = "access token expired; reconnect with a fresh token and Last-Event-ID"
ENDED_BY_REVOCATION = "access token revoked; sign in again and reconnect with Last-Event-ID"

log = structlog.get_logger("notify.live")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(NotificationOut)


def live_subject(user_id: uuid.UUID) -> str:
    """The core NATS subject of one user's live notifications."""
    return f"{LIVE_NOTIFICATIONS}.{user_id}"


class LivePublisher:
    """The worker's half: publishes committed notifications for every API process to push.

    It keeps its own NATS connection, opened at the first publish, because a worker plan's handlers
    have no access to the worker's connection. Publishing is best effort and never holds up the
    consumer for long: a client that misses a push gets it from the table when it resumes.

    Args:
        settings: Where NATS is, and as whom to connect.
        connect_timeout: How long the first connect may take.
        retry_after: After a failed connect, seconds during which publishes are skipped.
    """

    def __init__(self, settings: ServiceSettings, *, connect_timeout: float = 5.0, retry_after: float = 10.0) -> None:
        self.settings = settings
        self.connect_timeout = connect_timeout
        self.retry_after = retry_after
        self._connection: NatsClient | None = None
        self._lock = asyncio.Lock()
        self._failed_at = -retry_after

    async def publish(self, user_id: uuid.UUID, notification: NotificationOut) -> None:
        """Publish ``notification`` on its user's live subject (buffered while NATS reconnects)."""
        connection = await self._connect()
        if connection is not None:
            await connection.publish(live_subject(user_id), _encoder.encode(notification))

    async def _connect(self) -> NatsClient | None:
        if self._connection is not None:
            return self._connection
        async with self._lock:
            if self._connection is None and time.monotonic() - self._failed_at >= self.retry_after:
                try:
                    self._connection = await connect_nats(
                        self.settings.nats_url,
                        name="notify-live",
                        user=self.settings.nats_user,
                        password=self.settings.nats_password,
                        inbox_prefix=inbox_prefix("notify"),
                        connect_timeout=self.connect_timeout,
                    )
                except (OSError, ConnectionError) as error:
                    self._failed_at = time.monotonic()
                    log.warning("live push unavailable", error=repr(error), retry_in=self.retry_after)
        return self._connection

    async def close(self) -> None:
        """Flush what is buffered and close the connection."""
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.drain(), 5)


class LiveConnection:
    """One open stream's inbox of live notifications.

    The queue is bounded: a client that cannot keep up is closed rather than let it hold memory or
    slow the others; its browser reconnects with ``Last-Event-ID`` and reads the rest from the table.
    """

    def __init__(self, user_id: uuid.UUID, capacity: int) -> None:
        self.user_id = user_id
        self.capacity = capacity
        self.closed = False
        self.reason: str | None = None
        """Why the server closed it, told to the client in a last comment (None: no comment)."""
        self._queue: asyncio.Queue[NotificationOut | None] = asyncio.Queue()

    def offer(self, notification: NotificationOut) -> None:
        """Queue a notification, or close the stream if it is too far behind."""
        if self.closed:
            return
        if self._queue.qsize() >= self.capacity:
            log.info("live stream too slow; closing it", user_id=str(self.user_id))
            self.close()
            return
        self._queue.put_nowait(notification)

    def close(self, reason: str | None = None) -> None:
        """End the stream (the queue is unbounded underneath, so the end marker always fits)."""
        if not self.closed:
            self.closed = True
            self.reason = reason
            self._queue.put_nowait(None)

    async def next(self, wait_seconds: float) -> NotificationOut | None:
        """The next notification, or None after ``wait_seconds`` without one or once closed."""
        try:
            return await asyncio.wait_for(self._queue.get(), wait_seconds)
        except TimeoutError:
            return None


class LiveHub:
    """The API process's half: one NATS subscription, fanned out to the streams this process holds.

    Args:
        queue_size: Notifications buffered per stream before a slow client is disconnected.
        max_per_user: Streams one user may hold open in this process at once (0: no limit).
    """

    def __init__(self, *, queue_size: int, max_per_user: int = 0) -> None:
        self.queue_size = queue_size
        self.max_per_user = max_per_user
        self.closing = False
        self._streams: dict[str, set[LiveConnection]] = {}
        self._subscription: Subscription | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, nats: NatsClient | None) -> None:
        """Subscribe to every user's live subject (without NATS, streams still replay and beat)."""
        self._loop = asyncio.get_running_loop()
        SHUTDOWN_SIGNALS.add(self._on_shutdown_signal)
        if nats is not None:
            self._subscription = await nats.subscribe(f"{LIVE_NOTIFICATIONS}.>", cb=self._on_message)
            await nats.flush()

    async def close(self) -> None:
        """End every stream and stop listening (application shutdown)."""
        SHUTDOWN_SIGNALS.remove(self._on_shutdown_signal)
        self.close_streams()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def close_streams(self) -> None:
        """End every open stream now; new ones end at once."""
        self.closing = True
        for streams in self._streams.values():
            for stream in streams:
                stream.close(SHUTTING_DOWN)

    def _on_shutdown_signal(self) -> None:
        # Runs in a signal handler: only schedule the work on the loop.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.close_streams)

    def open(self, user_id: uuid.UUID) -> LiveConnection:
        """Register a stream of ``user_id``; the caller must ``release`` it.

        Raises:
            TooManyRequests: The user already holds ``max_per_user`` streams in this process.
        """
        key = str(user_id)
        streams = self._streams.get(key, set())
        if self.max_per_user and len(streams) >= self.max_per_user:
            raise TooManyRequests(f"At most {self.max_per_user} live streams per user; close one first.", retry_after=5)
        stream = LiveConnection(user_id, self.queue_size)
        self._streams.setdefault(key, streams).add(stream)
        if self.closing:
            stream.close(SHUTTING_DOWN)
        return stream

    def release(self, stream: LiveConnection) -> None:
        """Forget a stream (idempotent): its place counts no more against its user's limit."""
        key = str(stream.user_id)
        streams = self._streams.get(key)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._streams[key]

    @contextlib.contextmanager
    def connect(self, user_id: uuid.UUID) -> Iterator[LiveConnection]:
        """Register a stream of ``user_id`` for as long as the block runs (``open`` and ``release``)."""
        stream = self.open(user_id)
        try:
            yield stream
        finally:
            self.release(stream)

    def deliver(self, user_id: str, notification: NotificationOut) -> None:
        """Hand ``notification`` to every stream of the user this process holds."""
        for stream in list(self._streams.get(user_id, ())):
            stream.offer(notification)

    @property
    def stream_count(self) -> int:
        """Streams open in this process."""
        return sum(len(streams) for streams in self._streams.values())

    async def _on_message(self, message: Msg) -> None:
        user_id = message.subject.rpartition(".")[2]
        if user_id not in self._streams:
            return  # nobody here: not even worth decoding
        try:
            notification = _decoder.decode(message.data)
        except msgspec.DecodeError as error:
            log.warning("undecodable live notification", subject=message.subject, error=str(error))
            return
        self.deliver(user_id, notification)


class NotificationFeed:
    """One client's stream: what it missed since ``Last-Event-ID``, then live notifications and heartbeats.

    A stream lives no longer than the token it was opened with: it ends at the token's ``exp``, and
    as soon as this process learns that the token was revoked (``tokens_valid_after``). The client
    then reconnects with a fresh token and ``Last-Event-ID``, and the catch-up sends what it missed.

    Args:
        hub: This process's live hub.
        engine: The database, for the catch-up query (a connection is held only during that query).
        heartbeat_seconds: The longest silence before a comment line.
        replay_page: Rows per catch-up query.
        revocations: This process's view of revoked tokens, to end their streams.
    """

    def __init__(
        self,
        *,
        hub: LiveHub,
        engine: AsyncEngine,
        heartbeat_seconds: float,
        replay_page: int,
        revocations: TokenRevocations | None = None,
    ) -> None:
        self.hub = hub
        self.engine = engine
        self.heartbeat_seconds = heartbeat_seconds
        self.replay_page = replay_page
        self.revocations = revocations

    def open(self, user: Principal, *, after: uuid.UUID | None) -> AsyncIterator[ServerSentEventMessage]:
        """Take a place for a stream of ``user`` now, and return its events.

        The place is taken before the response starts, so a user over the limit gets a 429 problem
        document rather than a stream; it is given back when the events end, or when they are
        dropped unstarted (a client gone before the first byte).

        Raises:
            TooManyRequests: The user holds too many streams in this process.
        """
        connection = self.hub.open(user.id)
        events = self._events(connection, user, after=after)
        weakref.finalize(events, self.hub.release, connection)
        return events

    async def _events(
        self, connection: LiveConnection, user: Principal, *, after: uuid.UUID | None
    ) -> AsyncIterator[ServerSentEventMessage]:
        unwatch = None
        try:
            if self.revocations is not None:

                def on_revoked(valid_after_us: int) -> None:
                    if user.issued_at_us < valid_after_us:
                        connection.close(ENDED_BY_REVOCATION)

                unwatch = self.revocations.watch(user.id, on_revoked)
                if self.revocations.is_revoked(user):  # revoked between the check at the door and now
                    connection.close(ENDED_BY_REVOCATION)
            async for message in self._follow(connection, after=after, expires_at=user.expires_at):
                yield message
        finally:
            if unwatch is not None:
                unwatch()
            self.hub.release(connection)

    async def _follow(
        self, connection: LiveConnection, *, after: uuid.UUID | None, expires_at: int
    ) -> AsyncIterator[ServerSentEventMessage]:
        # Listening starts before the catch-up query, so nothing committed in between is lost;
        # what arrives both ways is sent once.
        yield ServerSentEventMessage(comment="connected", retry=2000, data=None)
        replayed: set[uuid.UUID] = set()
        cursor = after
        while cursor is not None:
            page = await self._missed(connection.user_id, cursor)
            for notification in page:
                replayed.add(notification.id)
                yield _event(notification)
            cursor = page[-1].id if len(page) == self.replay_page else None
        while True:
            left = expires_at - time.time()
            if left <= 0:
                yield ServerSentEventMessage(comment=ENDED_BY_EXPIRY, data=None)
                return
            live = await connection.next(min(self.heartbeat_seconds, left))
            if connection.closed:
                if connection.reason is not None:
                    yield ServerSentEventMessage(comment=connection.reason, data=None)
                return
            if live is None:
                if time.time() >= expires_at:
                    continue  # the token's end, not a silence: said at the top of the loop
                yield ServerSentEventMessage(comment="heartbeat", data=None)
            elif live.id not in replayed:
                yield _event(live)

    async def _missed(self, user_id: uuid.UUID, after: uuid.UUID) -> list[NotificationOut]:
        async with self.engine.connect() as connection:
            return await notifications_after(connection, user_id=user_id, after=after, limit=self.replay_page)


def _event(notification: NotificationOut) -> ServerSentEventMessage:
    return ServerSentEventMessage(
        data=_encoder.encode(notification).decode(), event="notification", id=str(notification.id)
    )


class _ShutdownSignals:
    """Tells open streams about SIGTERM and SIGINT before the server waits for them to finish.

    granian (like uvicorn) runs the lifespan shutdown only after every in-flight response has
    ended, and a stream never ends by itself: without this, each open stream would hold its worker
    until granian's kill timeout, then be cut off. The handler chains to whatever handled the
    signal before (granian's own shutdown goes on unchanged), and is removed with the last listener.
    Signal handlers belong to the main thread; elsewhere this does nothing.
    """

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []
        self._previous: dict[int, Any] = {}

    def add(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from the signal handler: keep it tiny) on SIGTERM or SIGINT."""
        if threading.current_thread() is not threading.main_thread():
            return
        if not self._listeners:
            for signum in self._SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        self._listeners.append(listener)

    def remove(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``; the previous handlers come back after the last one."""
        if listener not in self._listeners:
            return
        self._listeners.remove(listener)
        if not self._listeners and threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous.items():
                if signal.getsignal(signum) == self._handle:  # unless someone replaced ours meanwhile
                    signal.signal(signum, previous)
            self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        for listener in list(self._listeners):
            listener()
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


SHUTDOWN_SIGNALS = _ShutdownSignals()
