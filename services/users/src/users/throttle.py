"""Counting attempts in Postgres: password checks per account and per address, registrations per address.

Every process and replica shares the counters (``users.login_throttle``, one row per scope, key and
fixed window). An attempt is taken by one statement that increments and returns the count, so
concurrent requests each see their own number: no read-then-write race lets a burst through.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from shared.errors import TooManyRequests
from users.models import LoginThrottle

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy.ext.asyncio import AsyncSession

    from users.settings import UsersSettings

__all__ = ("Attempt", "AttemptThrottle")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt taken: the counters it went into, their window, and whether it was over a limit."""

    keys: tuple[tuple[str, str], ...]
    """(scope, key) pairs, in the order their rows are locked."""
    window_start: datetime.datetime
    refusal: TooManyRequests | None
    """The 429 to answer when a counter passed its limit with this attempt; None within every limit."""


class AttemptThrottle:
    """Takes and gives back attempts; every call joins the caller's transaction.

    The caller commits an attempt before any slow work (``unit_of_work`` around taking it), so the
    other requests see it at once, and keeps it committed even when the request then fails.
    """

    def __init__(self, *, session: AsyncSession, settings: UsersSettings) -> None:
        self.session = session
        self.settings = settings

    async def take_password_check(self, email: str, address: str, now: datetime.datetime) -> Attempt:
        """One password check (a sign-in or a ``current_password``) for the account and the address."""
        # The account row first, always: concurrent attempts lock the same rows in the same order.
        limits = {
            ("account", email): self.settings.login_max_failures_per_account,
            ("address", address): self.settings.login_max_failures_per_address,
        }
        return await self._take(
            limits, self.settings.login_window_seconds, now, "Too many failed sign-ins; try again later."
        )

    async def take_registration(self, address: str, now: datetime.datetime) -> Attempt:
        """One registration from ``address``, whatever its outcome."""
        limits = {("registration", address): self.settings.registration_max_per_address}
        return await self._take(
            limits,
            self.settings.registration_window_seconds,
            now,
            "Too many registrations from this address; try again later.",
        )

    async def give_back(self, attempt: Attempt) -> None:
        """Return a successful check's attempt, so the limits count failures (and checks in flight)."""
        # Row by row, in the order they were taken: the same lock order, so the two cannot deadlock.
        for scope, key in attempt.keys:
            await self.session.execute(
                update(LoginThrottle)
                .where(
                    LoginThrottle.scope == scope,
                    LoginThrottle.key == key,
                    LoginThrottle.window_start == attempt.window_start,
                    LoginThrottle.attempts > 0,
                )
                .values(attempts=LoginThrottle.attempts - 1)
            )

    async def _take(
        self, limits: Mapping[tuple[str, str], int], window_seconds: int, now: datetime.datetime, message: str
    ) -> Attempt:
        """Count one attempt for each (scope, key) in the current window and compare with its limit."""
        keys = tuple(limits)
        window_start = _window_start(now, window_seconds)
        statement = insert(LoginThrottle).values(
            [{"scope": scope, "key": key, "window_start": window_start, "attempts": 1} for scope, key in keys]
        )
        rows = await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[LoginThrottle.scope, LoginThrottle.key, LoginThrottle.window_start],
                set_={"attempts": LoginThrottle.attempts + 1},
            ).returning(LoginThrottle.scope, LoginThrottle.key, LoginThrottle.attempts)
        )
        over = any(row.attempts > limits[row.scope, row.key] for row in rows)
        # Older windows of these keys are spent: drop them while their rows are at hand.
        await self.session.execute(
            delete(LoginThrottle).where(
                tuple_(LoginThrottle.scope, LoginThrottle.key).in_(keys),
                LoginThrottle.window_start < window_start,
            )
        )
        refusal = None
        if over:
            retry_after = int((window_start - now).total_seconds()) + window_seconds
            refusal = TooManyRequests(message, retry_after=retry_after)
        return Attempt(keys=keys, window_start=window_start, refusal=refusal)


def _window_start(now: datetime.datetime, window_seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(now.timestamp()) // window_seconds * window_seconds, datetime.UTC)
