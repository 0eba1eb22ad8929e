"""Waiting inside the worker's loops without outliving a stop request."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ("pause", "wait_for_either")


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def wait_for_either(stop: asyncio.Event, other: asyncio.Event, seconds: float | None) -> None:
    """Wait until ``stop`` or ``other`` is set, or ``seconds`` pass (``None``: no time limit)."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(other.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
