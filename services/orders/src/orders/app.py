"""The orders app: catalog, stock and orders."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.di import NamedDependency, Provide
from sqlalchemy.ext.asyncio import AsyncSession

from orders.models import OUTBOX, Base, KnownUser
from orders.routes import OrderController, ProductController
from orders.service import CatalogService, OrderService
from orders.settings import OrdersSettings, load_orders_settings
from shared.app import ServiceApp, create_service_app
from shared.db import ServiceDatabase
from shared.revocations import TokenRevocations

if TYPE_CHECKING:
    from litestar import Litestar

__all__ = ("DATABASE", "create_app")

DATABASE = ServiceDatabase(Base.metadata, migrations="orders:migrations")


def create_app(settings: OrdersSettings | None = None) -> Litestar:
    """Build the orders app (granian calls this with no arguments: settings come from ``ORDERS_*``)."""
    settings = settings or load_orders_settings()

    def provide_catalog(db_session: NamedDependency[AsyncSession]) -> CatalogService:
        return CatalogService(session=db_session)

    def provide_orders(db_session: NamedDependency[AsyncSession]) -> OrderService:
        return OrderService(session=db_session, outbox=OUTBOX, settings=settings)

    return create_service_app(
        ServiceApp(
            name="orders",
            version="1.0.0",
            description="Catalog, stock and orders: idempotent placement, a guarded lifecycle, events out.",
            settings=settings,
            database=DATABASE,
            route_handlers=[ProductController, OrderController],
            # Access tokens issued before the replica's tokens_valid_after are refused (401).
            token_revocations=TokenRevocations(
                KnownUser.user_id, KnownUser.tokens_valid_after, poll_seconds=settings.token_revocation_poll_seconds
            ),
            dependencies={
                "catalog": Provide(provide_catalog, sync_to_thread=False),
                "orders": Provide(provide_orders, sync_to_thread=False),
            },
            prebuilt_reads=True,  # a product, an order (shared.db.driver_connection)
        )
    )
