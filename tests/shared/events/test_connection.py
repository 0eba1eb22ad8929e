"""connect_nats never hands nats-py a server list it would spin on, and gives up on a dead server."""

from __future__ import annotations

import pytest

from devtools.stack.servers import free_port
from shared.events.connection import NatsConfigurationError, NatsUnavailableError, connect_nats, parse_servers


@pytest.mark.parametrize("servers", ["", "   ", ",", " , ,, "])
async def test_an_empty_server_list_is_refused_before_nats_py_sees_it(servers: str) -> None:
    # nats-py loops without ever awaiting on an empty pool (it would never return, nor let a
    # signal handler run): the refusal must come before nats.connect is called at all.
    with pytest.raises(NatsConfigurationError, match="no NATS server URL given"):
        await connect_nats(servers, name="test")


@pytest.mark.parametrize(
    ("servers", "problem"),
    [
        ("http://127.0.0.1:4222", "is not a NATS URL"),
        ("nats://127.0.0.1:port", "has an invalid port"),
        ("nats://:4222", "names no host"),
        ("nats://a:4222, ws://b:80", "cannot be mixed"),
    ],
)
async def test_a_url_nats_py_cannot_use_is_refused_with_its_reason(servers: str, problem: str) -> None:
    with pytest.raises(NatsConfigurationError, match=problem):
        await connect_nats(servers, name="test")


def test_usable_urls_are_kept_in_order() -> None:
    assert parse_servers(" nats://a:4222 ,tls://b:4223,c:4222 ") == ["nats://a:4222", "tls://b:4223", "c:4222"]


async def test_a_dead_server_is_given_up_on_with_the_reason() -> None:
    port = free_port()
    with pytest.raises(NatsUnavailableError, match=rf"could not connect to NATS at nats://127.0.0.1:{port} within 1s"):
        await connect_nats(f"nats://127.0.0.1:{port}", name="test", connect_timeout=1)
