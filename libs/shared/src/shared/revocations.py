"""Access tokens that outlive what revoked them: refused once their account's ``tokens_valid_after`` passes them.

An access token cannot be recalled: it stays valid until its ``exp``. So users records, per account,
the instant before which every token is void (``tokens_valid_after``: set on a role change, a
deactivation, a password change, a signed-out refresh family), writes it in its own table and carries
it in every ``users.user.*`` event; orders and notify copy it into their users replica. Each service
then refuses a token issued (``iat_us``, microseconds) before that instant.

The check must cost nothing on the hot path, so each API process holds the revocations of the
last ``horizon_seconds`` (longer than any access token lives; older ones cannot matter: every token
they void has expired) in a dict, and reloads that small set from its own table every
``poll_seconds`` with one indexed range scan. A request then costs one dict lookup, no query. A
revocation takes effect in a process at most ``poll_seconds`` after it reaches that service's table.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select

from shared.errors import Unauthorized

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable

    from sqlalchemy import SQLColumnExpression
    from sqlalchemy.ext.asyncio import AsyncEngine

    from shared.auth import Principal

__all__ = ("REVOCATION_DETAIL", "TokenRevocations", "microseconds")

log = structlog.get_logger("shared.revocations")

REVOCATION_DETAIL = (
    "Access token revoked: it was issued before this account's tokens were invalidated (sign-out, "
    "password or role change, or deactivation). Refresh or sign in again."
)


def microseconds(instant: datetime.datetime) -> int:
    """``instant`` in whole microseconds since the epoch, the unit of ``iat_us``."""
    delta = instant - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class TokenRevocations:
    """One process's view of recent revocations, reloaded from the service's own table.

    Args:
        user_id: The column of the account's id.
        valid_after: The account's ``tokens_valid_after`` column (timestamptz, indexed, nullable).
        poll_seconds: How often the set is reloaded: the longest a revocation waits in this process.
        horizon_seconds: How far back revocations are kept; longer than any access token's lifetime.
    """

    def __init__(
        self,
        user_id: SQLColumnExpression[uuid.UUID],
        valid_after: SQLColumnExpression[datetime.datetime | None],
        *,
        poll_seconds: float = 1.0,
        horizon_seconds: float = 3600.0,
    ) -> None:
        self._statement = select(user_id, valid_after)
        self._valid_after = valid_after
        self.poll_seconds = poll_seconds
        self.horizon_seconds = horizon_seconds
        self._revoked: dict[uuid.UUID, int] = {}
        self._listeners: dict[uuid.UUID, set[Callable[[int], None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.loaded_at: float | None = None
        """``time.monotonic()`` of the last successful reload."""

    def valid_after_us(self, user_id: uuid.UUID) -> int | None:
        """The account's ``tokens_valid_after`` in microseconds, if it was revoked lately."""
        return self._revoked.get(user_id)

    def is_revoked(self, principal: Principal) -> bool:
        """Whether ``principal``'s token was issued before its account's tokens were invalidated."""
        valid_after = self._revoked.get(principal.id)
        return valid_after is not None and principal.issued_at_us < valid_after

    def check(self, principal: Principal) -> None:
        """Refuse a revoked token.

        Raises:
            Unauthorized: The token was issued before its account's ``tokens_valid_after``.
        """
        if self.is_revoked(principal):
            raise Unauthorized(REVOCATION_DETAIL)

    def watch(self, user_id: uuid.UUID, listener: Callable[[int], None]) -> Callable[[], None]:
        """Call ``listener(valid_after_us)`` whenever ``user_id``'s tokens are revoked anew; returns the unwatch."""
        self._listeners.setdefault(user_id, set()).add(listener)

        def unwatch() -> None:
            listeners = self._listeners.get(user_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[user_id]

        return unwatch

    def apply(self, revoked: dict[uuid.UUID, int]) -> None:
        """Replace the known revocations with ``revoked`` and tell the watchers of those that moved on."""
        previous, self._revoked = self._revoked, revoked
        for user_id, valid_after in revoked.items():
            if valid_after > previous.get(user_id, -1):
                for listener in list(self._listeners.get(user_id, ())):
                    listener(valid_after)

    async def reload(self, engine: AsyncEngine) -> None:
        """Read the revocations of the horizon from the table now."""
        since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=self.horizon_seconds)
        statement = self._statement.where(self._valid_after > since)
        async with engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        self.apply({row[0]: microseconds(row[1]) for row in rows if row[1] is not None})
        self.loaded_at = time.monotonic()

    async def start(self, engine: AsyncEngine) -> None:
        """Load the revocations, then keep reloading them in the background until ``stop``.

        A first load that fails (the database not migrated or not reachable yet) does not stop the
        app from starting: readiness reports the database, and the poll keeps trying.
        """
        await self._reload_logged(engine)
        self._task = asyncio.create_task(self._poll(engine), name="token-revocations")

    async def stop(self) -> None:
        """Stop reloading."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self, engine: AsyncEngine) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            await self._reload_logged(engine)

    async def _reload_logged(self, engine: AsyncEngine) -> None:
        try:
            await self.reload(engine)
        except Exception as error:  # noqa: BLE001 - keep the last set and try again; requests fail on their own
            log.warning("token revocations reload failed", error=repr(error))

    def __repr__(self) -> str:
        return f"TokenRevocations({len(self._revoked)} revoked, poll {self.poll_seconds}s)"
