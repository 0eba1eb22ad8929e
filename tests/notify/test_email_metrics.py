"""The email sweep counts every outcome it records, so an on-call person can be alerted when email
stops going out (``notify_email_deliveries_total``, on the worker's ``/metrics``; the prod
``PrometheusRule`` alerts on ``failed`` and on ``retried`` rising without ``sent``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from prometheus_client import REGISTRY

from notify.sending import EMAIL_OUTCOMES
from tests.notify.helpers import corrupt_unsubscribe_url, queue_welcome, sender_for

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from notify.events import NotificationPipeline
    from notify.settings import NotifySettings
    from tests.notify.helpers import MailServer


def counts() -> dict[str, float]:
    """The counter's value per outcome, as Prometheus would scrape it (a missing series is a failure)."""
    found = {
        outcome: REGISTRY.get_sample_value("notify_email_deliveries_total", {"outcome": outcome})
        for outcome in EMAIL_OUTCOMES
    }
    missing = [outcome for outcome, value in found.items() if value is None]
    assert not missing, f"no series for {missing}"
    return {outcome: value or 0.0 for outcome, value in found.items()}


async def test_each_recorded_outcome_is_counted_once(
    notify_settings: NotifySettings,
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    mail_server: MailServer,
) -> None:
    settings = msgspec.structs.replace(notify_settings, email_batch_size=20, email_max_attempts=3)
    sender = sender_for(settings)
    before = counts()  # every outcome has a series as soon as a sweep exists, before any email

    for index in range(2):
        await queue_welcome(pipeline, sessions, address=f"good{index}@example.com")
    await queue_welcome(pipeline, sessions, address="not an address")  # refused by the server: failed for good
    broken = await queue_welcome(pipeline, sessions, address="good9@example.com")
    await corrupt_unsubscribe_url(sessions, broken)  # cannot be built this time: retried later
    assert await sender.run_once(sessions) == 4

    after = counts()
    delta = {outcome: after[outcome] - before[outcome] for outcome in EMAIL_OUTCOMES}
    assert delta == {"sent": 2, "failed": 1, "retried": 1, "cancelled": 0}
    assert len(mail_server.envelopes) == 2
