"""What the notify worker runs: the relay, the users replica and order consumers, and the email sweep."""

from __future__ import annotations

from notify.events import NotificationPipeline, order_notification_handlers, users_replica_handlers
from notify.live import LivePublisher
from notify.mail import transport_from_url
from notify.models import OUTBOX
from notify.sending import EmailSender
from notify.settings import NotifySettings, load_notify_settings
from notify.templates import NotificationTemplates
from notify.tokens import UnsubscribeLinks
from shared.events.streams import consumer
from shared.worker import Sweep, WorkerPlan

__all__ = ("worker_plan",)


def worker_plan(settings: NotifySettings | None = None, *, live: LivePublisher | None = None) -> WorkerPlan:
    """The ``NOTIFY`` relay, both consumers, and the sweep that sends and retries email.

    Args:
        settings: By default, from ``NOTIFY_*`` variables.
        live: The live-push publisher; by default one of the worker's own (tests pass theirs to close it).
    """
    settings = settings or load_notify_settings()
    pipeline = NotificationPipeline(
        templates=NotificationTemplates(),
        links=UnsubscribeLinks(settings.unsubscribe_secret, settings.public_base_url),
        live=live or LivePublisher(settings),
    )
    senders = [
        EmailSender(
            transport=transport_from_url(
                settings.email_url,
                sender=settings.email_from,
                timeout=settings.email_timeout_seconds,
                concurrency=settings.email_concurrency,
            ),
            settings=settings,
        )
        for _ in range(max(1, settings.email_senders))
    ]
    return WorkerPlan(
        settings=settings,
        outbox=OUTBOX,
        consumers=[
            (consumer("notify", "users-replica"), users_replica_handlers(pipeline)),
            (consumer("notify", "order-notifications"), order_notification_handlers(pipeline)),
        ],
        sweeps=[
            Sweep(name=f"email-{index}", interval_seconds=settings.email_sweep_seconds, run=sender.run_once, drain=True)
            for index, sender in enumerate(senders)
        ],
    )
