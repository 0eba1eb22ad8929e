"""The orders service's settings: ``ORDERS_*`` environment variables."""

from __future__ import annotations

from shared.settings import ServiceSettings, load_settings

__all__ = ("OrdersSettings", "load_orders_settings")


class OrdersSettings(ServiceSettings, kw_only=True, frozen=True):
    """What orders needs beyond the settings every service has."""

    unpaid_order_timeout_seconds: int = 1800
    """A pending order older than this is cancelled by the worker (reason ``payment_timeout``)."""
    unpaid_sweep_interval_seconds: float = 30.0
    """How often the worker looks for unpaid orders."""
    idempotency_ttl_seconds: int = 86_400
    """How long an ``Idempotency-Key`` replays its first answer."""


def load_orders_settings() -> OrdersSettings:
    """Read the settings from ``ORDERS_*`` variables."""
    return load_settings(OrdersSettings, "ORDERS")
