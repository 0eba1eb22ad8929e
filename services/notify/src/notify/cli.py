"""``notify`` commands: the shared ``api``, ``worker``, ``migrate``, ``revision`` and ``events``."""

from __future__ import annotations

from notify.settings import load_notify_settings
from shared.cli import service_cli

__all__ = ("main",)

# Import paths, not objects: a command checks its settings before the app and domain are imported.
main = service_cli(
    "notify",
    app_factory="notify.app:create_app",
    database="notify.app:DATABASE",
    load_settings=load_notify_settings,
    worker_plan="notify.worker:worker_plan",
)
