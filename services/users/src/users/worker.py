"""What the users worker runs: the outbox relay that publishes account events."""

from __future__ import annotations

from shared.worker import WorkerPlan
from users.models import OUTBOX
from users.settings import UsersSettings, load_users_settings

__all__ = ("worker_plan",)


def worker_plan(settings: UsersSettings | None = None) -> WorkerPlan:
    """The relay for the ``USERS`` stream; users has no consumers and no sweeps."""
    return WorkerPlan(settings=settings or load_users_settings(), outbox=OUTBOX)
