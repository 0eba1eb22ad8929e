"""Prometheus metrics of the event pipeline (served on the worker's ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = (
    "CONSUMER_DEAD_LETTERED",
    "CONSUMER_DUPLICATES",
    "CONSUMER_PROCESSED",
    "CONSUMER_RETRIED",
    "OUTBOX_BACKLOG",
    "OUTBOX_OLDEST_AGE",
    "OUTBOX_PUBLISHED",
    "OUTBOX_PUBLISH_FAILURES",
    "start_consumer_series",
    "start_outbox_series",
)

OUTBOX_BACKLOG = Gauge("relay_outbox_backlog", "Events committed but not yet published.", ["service"])
OUTBOX_OLDEST_AGE = Gauge(
    "relay_outbox_oldest_age_seconds", "Age of the oldest unpublished event (0 when none).", ["service"]
)
OUTBOX_PUBLISHED = Counter("relay_outbox_published", "Events published to NATS and acknowledged.", ["service"])
OUTBOX_PUBLISH_FAILURES = Counter(
    "relay_outbox_publish_failures", "Publish attempts that failed or timed out (retried).", ["service"]
)
CONSUMER_PROCESSED = Counter("relay_consumer_processed", "Events applied by a consumer.", ["consumer"])
CONSUMER_DUPLICATES = Counter(
    "relay_consumer_duplicates", "Redelivered events skipped because the inbox had them.", ["consumer"]
)
CONSUMER_RETRIED = Counter("relay_consumer_retried", "Failed attempts handed back for a later retry.", ["consumer"])
CONSUMER_DEAD_LETTERED = Counter(
    "relay_consumer_dead_lettered", "Events given up on and published to the DLQ stream.", ["consumer"]
)


def start_consumer_series(durable: str) -> None:
    """Give every counter of one consumer a sample of 0 now, not at its first increment.

    A labelled counter has no series until its labels are first used, so an alert such as
    ``increase(relay_consumer_dead_lettered_total[5m]) > 0`` would see nothing to evaluate.
    """
    for counter in (CONSUMER_PROCESSED, CONSUMER_DUPLICATES, CONSUMER_RETRIED, CONSUMER_DEAD_LETTERED):
        counter.labels(durable)


def start_outbox_series(service: str) -> None:
    """Give the relay's counters and gauges of ``service`` a sample of 0 now (see above)."""
    for metric in (OUTBOX_PUBLISHED, OUTBOX_PUBLISH_FAILURES, OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE):
        metric.labels(service)
