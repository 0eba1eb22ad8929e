"""What the orders worker runs: the outbox relay, the users replica consumer, the unpaid-order sweep."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from orders.events import users_replica_handlers
from orders.models import EVENT_TABLES
from orders.service import OrderService
from orders.settings import OrdersSettings, load_orders_settings
from shared.events.outbox import Outbox
from shared.events.streams import CONSUMERS
from shared.worker import Sweep, WorkerPlan

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

__all__ = ("worker_plan",)


def worker_plan(settings: OrdersSettings | None = None) -> WorkerPlan:
    """Relay ``ORDERS``, keep the users replica, and cancel orders left unpaid."""
    settings = settings or load_orders_settings()
    outbox = Outbox(EVENT_TABLES, source="orders")
    timeout = datetime.timedelta(seconds=settings.unpaid_order_timeout_seconds)

    async def cancel_unpaid(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions() as session:
            return await OrderService(session=session, outbox=outbox, settings=settings).cancel_unpaid(
                older_than=timeout
            )

    replica = next(spec for spec in CONSUMERS if spec.durable == "orders-users-replica")
    return WorkerPlan(
        service="orders",
        settings=settings,
        tables=EVENT_TABLES,
        consumers=[(replica, users_replica_handlers(settings))],
        sweeps=[Sweep("cancel-unpaid-orders", settings.unpaid_sweep_interval_seconds, cancel_unpaid)],
    )
