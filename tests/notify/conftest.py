"""notify's fixtures: its database, a real SMTP server, the app, the worker, the handlers' pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from devtools.testing import prepare_service_database, serve_app, truncate_schema
from notify.app import DATABASE, create_app
from notify.events import NotificationPipeline
from notify.live import LivePublisher
from notify.settings import NotifySettings
from notify.templates import NotificationTemplates
from notify.tokens import UnsubscribeLinks
from tests.notify.helpers import (
    PUBLIC_BASE_URL,
    UNSUBSCRIBE_SECRET,
    MailServer,
    Publisher,
    RunningWorker,
    api_environment,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import httpx
    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer, PostgresServer
    from shared.auth import AccessTokenSigner


@pytest.fixture(scope="session")
def notify_database_url(postgres_server: PostgresServer) -> str:
    return prepare_service_database(postgres_server, DATABASE)


@pytest.fixture
async def notify_database(notify_database_url: str) -> AsyncIterator[str]:
    yield notify_database_url
    await truncate_schema(notify_database_url, "notify")


@pytest.fixture(scope="session")
def notify_api_env(
    notify_database_url: str, nats_server: NatsServer, access_token_signer: AccessTokenSigner
) -> dict[str, str]:
    """The environment of a ``notify api`` process the tests start (``helpers.running_apis``)."""
    return api_environment(notify_database_url, nats_server.url, access_token_signer)


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
        links=UnsubscribeLinks(notify_settings.unsubscribe_secret, notify_settings.public_base_url),
        live=live,
    )
    await live.close()


@pytest.fixture
def publisher(jetstream: JetStreamContext) -> Publisher:
    return Publisher(jetstream)
