"""Running the services' real console scripts as child processes, as an operator would."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
import httpx

from devtools.stack.servers import free_port
from devtools.testing import eventually, prepare_service_database, truncate_schema
from shared.events.topology import SERVICE_NAMES

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from devtools.stack.servers import NatsServer, PostgresServer

# Every declared service's command group and database, found by the rooms every service has.
SERVICES: dict[str, click.Group] = {name: importlib.import_module(f"{name}.cli").main for name in SERVICE_NAMES}

WORKER_DATABASES = {name: importlib.import_module(f"{name}.app").DATABASE for name in SERVICE_NAMES}

COMMAND_TIMEOUT = 180.0
"""A generous bound: a command that spins or hangs fails the test instead of blocking the suite."""


@dataclass(frozen=True)
class Finished:
    """What a command left behind."""

    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def console_script(service: str) -> str:
    """The installed ``<service>`` command of this environment."""
    path = Path(sys.executable).with_name(service)
    assert path.exists(), f"{service} console script not installed at {path}"
    return str(path)


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any service's own variables, plus ``extra``."""
    prefixes = tuple(f"{service.upper()}_" for service in SERVICES)
    environment = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    environment.update(extra or {})
    return environment


def run_command(service: str, args: list[str], environment: dict[str, str], cwd: Path) -> Finished:
    """Run ``<service> <args>`` to its end (killed past ``COMMAND_TIMEOUT``)."""
    done = subprocess.run(
        [console_script(service), *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Finished(done.returncode, done.stdout, done.stderr)


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every runnable command of a click group, as the words that invoke it (``events replay``)."""
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


async def scrape_real_workers(
    postgres: PostgresServer, nats: NatsServer, tmp_path: Path, *, empty_outboxes: bool = False
) -> dict[str, str]:
    """Start every service's real ``worker`` command side by side and scrape each one's ``/metrics``.

    Each worker runs against the session's Postgres and NATS with its health port on; the text of
    its first successful scrape is returned. Then SIGTERM: every worker must stop cleanly.

    Args:
        postgres: The session's Postgres (each service's schema is migrated first).
        nats: The session's NATS.
        tmp_path: The workers' working directory (notify's mail goes to ``mail/`` in it).
        empty_outboxes: Truncate each service's schema first, so nothing other tests left behind
            is relayed and every counter stays at its start.
    """
    ports = {service: free_port() for service in WORKER_DATABASES}
    processes: dict[str, asyncio.subprocess.Process] = {}
    scraped: dict[str, str] = {}
    try:
        for service, database in WORKER_DATABASES.items():
            url = await asyncio.to_thread(prepare_service_database, postgres, database)
            if empty_outboxes:
                await truncate_schema(url, service)
            prefix = service.upper()
            environment = clean_environment(
                {
                    f"{prefix}_DATABASE_URL": url,
                    f"{prefix}_NATS_URL": nats.url,
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

                async def metrics(port: int = port, service: str = service) -> str | None:
                    assert processes[service].returncode is None, f"{service} worker exited"
                    try:
                        response = await client.get(f"http://127.0.0.1:{port}/metrics")
                    except httpx.TransportError:
                        return None
                    return response.text if response.status_code == 200 else None

                text = await eventually(metrics, within=180, what=f"{service} worker serving /metrics", interval=0.5)
                assert text is not None
                scraped[service] = text
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
    assert {service: process.returncode for service, process in processes.items()} == dict.fromkeys(
        WORKER_DATABASES, 0
    ), "every worker stops cleanly on SIGTERM"
    return scraped
