"""Drive an app in the test's own event loop, lifespan included, without a network socket."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from litestar import Litestar

__all__ = ("serve_app",)


@asynccontextmanager
async def serve_app(app: Litestar, *, client_address: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    """Start ``app`` (its lifespan: database, NATS) and yield an HTTP client talking to it.

    The app runs on the caller's loop, unlike Litestar's ``AsyncTestClient`` which runs it on a
    loop of its own in another thread, so the app's pooled connections stay usable. The lifespan
    runs in a task of its own because pytest may set a fixture up and tear it down in different
    tasks, and the lifespan's cancel scopes must be left in the task that entered them.
    """
    started = asyncio.Event()
    stopping = asyncio.Event()

    async def run_lifespan() -> None:
        async with app.lifespan():
            started.set()
            await stopping.wait()

    lifespan = asyncio.create_task(run_lifespan())
    started_wait = asyncio.create_task(started.wait())
    await asyncio.wait({lifespan, started_wait}, return_when=asyncio.FIRST_COMPLETED)
    if lifespan.done():
        started_wait.cancel()
        await lifespan  # start-up failed: raise its error here
    try:
        transport = httpx.ASGITransport(app=app, client=(client_address, 54321))  # type: ignore[arg-type]  # Litestar's precise ASGI types vs httpx's loose ones
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    finally:
        stopping.set()
        await lifespan
