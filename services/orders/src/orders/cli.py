"""``orders`` commands: the shared ``api``, ``worker``, ``migrate``, ``revision`` and ``events``."""

from __future__ import annotations

from orders.settings import load_orders_settings
from shared.cli import service_cli

__all__ = ("main",)

# Import paths, not objects: a command checks its settings before the app and domain are imported.
main = service_cli(
    "orders",
    app_factory="orders.app:create_app",
    database="orders.app:DATABASE",
    load_settings=load_orders_settings,
    worker_plan="orders.worker:worker_plan",
)
