"""What the orders worker runs: the outbox relay, the users replica consumer, the unpaid-order sweep."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from orders.events import users_replica_handlers
from orders.models import OUTBOX
from orders.service import OrderService
from orders.settings import OrdersSettings, load_orders_settings
from shared.events.streams import consumer
from shared.worker import Sweep, WorkerPlan

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ("worker_plan",)


def worker_plan(settings: OrdersSettings | None = None) -> WorkerPlan:
    """Relay ``ORDERS``, keep the users replica, and cancel orders left unpaid."""
    settings = settings or load_orders_settings()
    timeout = datetime.timedelta(seconds=settings.unpaid_order_timeout_seconds)

    async def cancel_unpaid(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions() as session:
            return await OrderService(session=session, outbox=OUTBOX, settings=settings).cancel_unpaid(
                older_than=timeout
            )

    return WorkerPlan(
        settings=settings,
        outbox=OUTBOX,
        consumers=[(consumer("orders", "users-replica"), users_replica_handlers(settings))],
        sweeps=[Sweep("cancel-unpaid-orders", settings.unpaid_sweep_interval_seconds, cancel_unpaid)],
    )
