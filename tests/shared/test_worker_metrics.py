"""A freshly started worker already exports every counter of every consumer it runs, at 0.

Alerts such as ``increase(relay_consumer_dead_lettered_total[5m]) > 0`` need a series to exist
before the first failure. Each service's real ``worker`` command is started against the session's
Postgres and NATS, and its ``/metrics`` is scraped over HTTP.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import TYPE_CHECKING

import httpx
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from devtools.stack.servers import free_port
from devtools.testing import eventually, prepare_service_database, truncate_schema
from notify.app import DATABASE as NOTIFY_DATABASE
from orders.app import DATABASE as ORDERS_DATABASE
from shared.events import metrics
from shared.events.streams import CONSUMERS
from tests.shared.commands import clean_environment, console_script
from users.app import DATABASE as USERS_DATABASE

if TYPE_CHECKING:
    from pathlib import Path

    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer, PostgresServer

DATABASES = {"users": USERS_DATABASE, "orders": ORDERS_DATABASE, "notify": NOTIFY_DATABASE}


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

    ports = {service: free_port() for service in DATABASES}
    processes: dict[str, asyncio.subprocess.Process] = {}
    try:
        for service, database in DATABASES.items():
            url = await asyncio.to_thread(prepare_service_database, postgres_server, database)
            await truncate_schema(url, service)  # nothing left to relay from other tests: every count stays 0
            prefix = service.upper()
            environment = clean_environment(
                {
                    f"{prefix}_DATABASE_URL": url,
                    f"{prefix}_NATS_URL": nats_server.url,
                    f"{prefix}_WORKER_HEALTH_PORT": str(ports[service]),
                    "NOTIFY_UNSUBSCRIBE_SECRET": "unsubscribe-secret-for-the-tests",
                    "NOTIFY_EMAIL_URL": f"file:{tmp_path / 'mail'}",
                }
            )
            processes[service] = await asyncio.create_subprocess_exec(
                console_script(service),
                "worker",
                env=environment,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        async with httpx.AsyncClient(timeout=5) as client:
            for service, port in ports.items():

                async def scrape(port: int = port, service: str = service) -> str | None:
                    assert processes[service].returncode is None, f"{service} worker exited"
                    try:
                        response = await client.get(f"http://127.0.0.1:{port}/metrics")
                    except httpx.TransportError:
                        return None
                    return response.text if response.status_code == 200 else None

                text = await eventually(scrape, within=180, what=f"{service} worker serving /metrics", interval=0.5)
                assert text is not None
                samples = _samples(text)
                durables = [spec.durable for spec in CONSUMERS if spec.service == service]
                expected = [(name, (("consumer", durable),)) for durable in durables for name in consumer_counters]
                expected += [(name, (("service", service),)) for name in outbox_counters]
                missing = [key for key in expected if samples.get(key) != 0.0]
                assert not missing, f"{service}: no 0 sample for {missing}"
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.terminate()
        for process in processes.values():
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()
    assert {service: process.returncode for service, process in processes.items()} == dict.fromkeys(DATABASES, 0), (
        "every worker stops cleanly on SIGTERM"
    )
