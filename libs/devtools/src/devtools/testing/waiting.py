"""Waiting for something that happens asynchronously (an event crossing services), with a deadline."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ("eventually",)

T = TypeVar("T")


async def eventually(
    condition: Callable[[], Awaitable[T]], within: float = 20.0, what: str = "condition", interval: float = 0.05
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises:
        AssertionError: ``within`` seconds passed first; the message names ``what``.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if result := await condition():
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {within}s")
