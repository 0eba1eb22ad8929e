"""Re-running a transaction that Postgres aborted as a deadlock victim or a serialization failure.

The lock order in :mod:`orders.stock` rules out deadlocks between this service's own transactions,
so this should never fire. It is the net for what that rule cannot see (a lock taken by hand in
psql, a future path that breaks the rule): such an abort changed nothing and is meant to be
retried, so answering it with a 500 would be wrong, and a client could not tell that retrying a
cancel or a payment is safe. Each retry is logged and counted
(``orders_transaction_retries_total``), so a broken lock order still shows, and the race tests
require that counter to stay at zero.

Only a transaction the method owns is re-run. Inside a caller's transaction (an event handler, whose
transaction also holds the inbox row) the method runs once and the caller retries the whole
transaction: the consumer hands the message back with a delay.
"""

from __future__ import annotations

import asyncio
import functools
import random
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar

import asyncpg
import structlog
from prometheus_client import Counter
from sqlalchemy.exc import DBAPIError

from shared.db import transient_sqlstate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ("TRANSACTION_RETRIES", "retry_transient")

log = structlog.get_logger("orders.transactions")

ATTEMPTS = 3
TRANSACTION_RETRIES = Counter(
    "orders_transaction_retries",
    "Transactions re-run after Postgres aborted them as a deadlock victim or serialization failure.",
    ["sqlstate"],
)

P = ParamSpec("P")
T = TypeVar("T")


class HasSession(Protocol):
    """A service object working on one session."""

    session: AsyncSession


S = TypeVar("S", bound=HasSession)


def retry_transient(
    method: Callable[Concatenate[S, P], Awaitable[T]],
) -> Callable[Concatenate[S, P], Awaitable[T]]:
    """Re-run a service method whose own transaction was aborted as a deadlock victim (at most 3 runs).

    The method must own its transaction (``unit_of_work`` on a session with none open) and have no
    effect outside the database before it commits, so that a re-run starts from scratch.
    """

    @functools.wraps(method)
    async def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self.session.in_transaction():
            return await method(self, *args, **kwargs)  # the transaction's owner retries it whole
        attempt = 1
        while True:
            try:
                return await method(self, *args, **kwargs)
            except (DBAPIError, asyncpg.PostgresError) as error:  # through the session, or sent raw
                state = transient_sqlstate(error)
                if state is None or attempt >= ATTEMPTS:
                    raise
                TRANSACTION_RETRIES.labels(state).inc()
                log.warning("transaction aborted; running it again", method=method.__qualname__, sqlstate=state)
                if self.session.in_transaction():  # unit_of_work rolled back already; make sure
                    await self.session.rollback()
                # a little jitter, so two victims of one another do not meet again at once
                await asyncio.sleep(random.uniform(0.0, 0.02 * attempt))  # noqa: S311 - not for secrets
                attempt += 1

    return run
