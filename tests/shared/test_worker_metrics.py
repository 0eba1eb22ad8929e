"""A freshly started worker already exports every counter of every consumer it runs, at 0.

Alerts such as ``increase(relay_consumer_dead_lettered_total[5m]) > 0`` need a series to exist
before the first failure. Each service's real ``worker`` command is started against the session's
Postgres and NATS, and its ``/metrics`` is scraped over HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from shared.events import metrics
from shared.events.streams import CONSUMERS
from tests.shared.commands import scrape_real_workers

if TYPE_CHECKING:
    from pathlib import Path

    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer, PostgresServer


def _counters_labelled_by(label: str) -> list[str]:
    """The exported names (``..._total``) of the pipeline's counters that carry ``label``."""
    found = [
        value
        for value in vars(metrics).values()
        if isinstance(value, Counter) and value._labelnames == (label,)  # the declared label names
    ]
    return [f"{counter._name}_total" for counter in found]  # the exported family name


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_a_fresh_worker_exports_zero_for_every_counter_of_every_consumer(
    postgres_server: PostgresServer, nats_server: NatsServer, jetstream: JetStreamContext, tmp_path: Path
) -> None:
    consumer_counters = _counters_labelled_by("consumer")
    outbox_counters = _counters_labelled_by("service")
    assert len(consumer_counters) >= 4, "processed, duplicates, retried, dead-lettered"
    assert len(outbox_counters) >= 2, "published, publish failures"

    scraped = await scrape_real_workers(postgres_server, nats_server, tmp_path, empty_outboxes=True)
    for service, text in scraped.items():
        samples = _samples(text)
        durables = [spec.durable for spec in CONSUMERS if spec.service == service]
        expected = [(name, (("consumer", durable),)) for durable in durables for name in consumer_counters]
        expected += [(name, (("service", service),)) for name in outbox_counters]
        missing = [key for key in expected if samples.get(key) != 0.0]
        assert not missing, f"{service}: no 0 sample for {missing}"
