"""``notify`` commands: the shared ``api``, ``worker``, ``migrate``, ``revision`` and ``events``."""

from __future__ import annotations

from notify.app import DATABASE
from notify.settings import load_notify_settings
from notify.worker import worker_plan
from shared.cli import service_cli

__all__ = ("main",)

main = service_cli(
    "notify",
    app_factory="notify.app:create_app",
    database=DATABASE,
    load_settings=load_notify_settings,
    worker_plan=worker_plan,
)
