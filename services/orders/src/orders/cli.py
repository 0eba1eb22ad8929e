"""``orders`` commands: the shared ``api``, ``worker``, ``migrate``, ``revision`` and ``events``."""

from __future__ import annotations

from orders.app import DATABASE
from orders.settings import load_orders_settings
from orders.worker import worker_plan
from shared.cli import service_cli

__all__ = ("main",)

main = service_cli(
    "orders",
    app_factory="orders.app:create_app",
    database=DATABASE,
    load_settings=load_orders_settings,
    worker_plan=worker_plan,
)
