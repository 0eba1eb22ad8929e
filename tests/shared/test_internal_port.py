"""The internal listener both processes use: the API's metrics port and the worker's health port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from shared.internal_port import Answer, start_internal_server


async def answer(path: str) -> Answer | None:
    return ("200 OK", "text/plain", b"here") if path == "/here" else None


async def get(port: int, target: str) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body


@pytest.fixture
def taken_port() -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield listener.getsockname()[1]
    listener.close()


async def test_it_answers_a_known_path_ignoring_the_query_and_404s_the_rest() -> None:
    server = await start_internal_server("127.0.0.1", 0, answer)
    assert server is not None
    port = server.sockets[0].getsockname()[1]
    try:
        assert await get(port, "/here?x=1") == ("HTTP/1.1 200 OK", b"here")
        status, body = await get(port, "/elsewhere")
        assert status == "HTTP/1.1 404 Not Found"
        assert b'"status":404' in body
    finally:
        server.close()
        await server.wait_closed()


async def test_a_taken_port_is_tolerated_where_optional_and_refused_where_required(taken_port: int) -> None:
    # The API's second granian worker finds the first one's metrics listener: it goes on without.
    assert await start_internal_server("127.0.0.1", taken_port, answer) is None
    # A worker's probes must reach that very worker: a taken health port stops it from starting.
    with pytest.raises(OSError, match="address already in use"):
        await start_internal_server("127.0.0.1", taken_port, answer, required=True)
