"""The commands every service has: ``api``, ``worker``, ``migrate``, ``revision`` and ``events``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from shared.db import ServiceDatabase
    from shared.events.dead_letters import DeadLetters
    from shared.settings import ServiceSettings
    from shared.worker import Worker, WorkerPlan

__all__ = ("events_commands", "service_cli")


def service_cli(
    name: str,
    *,
    app_factory: str,
    database: ServiceDatabase,
    load_settings: Callable[[], ServiceSettings],
    worker_plan: Callable[[], WorkerPlan],
) -> click.Group:
    """A click group named after the service with the shared commands already on it.

    Args:
        name: The service's name (the command's name).
        app_factory: The import path of the app factory, like ``users.app:create_app``.
        database: The service's schema and migrations.
        load_settings: Reads the service's settings from the environment.
        worker_plan: What the service's worker runs (relay, consumers, sweeps).
    """

    @click.group(name=name, help=f"The {name} service.")
    def group() -> None:
        pass

    @group.command()
    @click.option("--workers", type=int, default=None, help="granian worker processes (default: settings).")
    @click.option("--kill-timeout", type=int, default=20, show_default=True, help="Seconds a worker may take to stop.")
    def api(workers: int | None, kill_timeout: int) -> None:
        """Serve the HTTP API with granian."""
        from granian import Granian
        from granian.constants import Interfaces

        settings = load_settings()
        Granian(
            target=app_factory,
            factory=True,
            interface=Interfaces.ASGI,
            address=settings.http_host,
            port=settings.http_port,
            workers=workers or settings.http_workers,
            workers_kill_timeout=kill_timeout,
            log_access=False,
        ).serve()

    @group.command()
    def worker() -> None:
        """Run the outbox relay, the event consumers and the sweeps until SIGTERM."""
        from shared.worker import run_worker_until_signalled

        run_worker_until_signalled(worker_plan())

    @group.command()
    @click.option("--revision", default="head", show_default=True)
    def migrate(revision: str) -> None:
        """Bring the service's schema up to ``revision``."""
        database.upgrade(load_settings().database_url, revision)
        click.echo(f"{name}: schema {database.schema} at {revision}")

    @group.command()
    @click.option("-m", "--message", required=True)
    def revision(message: str) -> None:
        """Write a new migration from the difference between models and the database."""
        database.revision(load_settings().database_url, message)

    group.add_command(events_commands(name, worker_plan))
    return group


def events_commands(name: str, worker_plan: Callable[[], WorkerPlan]) -> click.Group:
    """``<service> events status|dead-letters|replay|discard``."""

    @click.group()
    def events() -> None:
        """Inspect the outbox and the dead letters of this service."""

    @events.command()
    def status() -> None:
        """Outbox backlog and the age of its oldest event."""

        async def show() -> None:
            from shared.events.outbox import outbox_status
            from shared.worker import Worker

            worker = Worker(worker_plan())
            try:
                current = await outbox_status(worker.engine, worker.plan.tables)
            finally:
                await worker.engine.dispose()
            click.echo(f"outbox backlog: {current.backlog}, oldest: {current.oldest_age_seconds:.1f}s")

        asyncio.run(show())

    @events.command("dead-letters")
    def dead_letters() -> None:
        """List this service's dead letters."""

        async def show(worker: Worker) -> None:
            letters = await _dead_letters(worker).list()
            for letter in letters:
                click.echo(
                    f"{letter.sequence:>6}  {letter.consumer:<28} {letter.original_subject:<28} "
                    f"attempts={letter.attempts}  {letter.error}"
                )
            click.echo(f"{len(letters)} dead letter(s)")

        _with_worker(worker_plan, show)

    @events.command()
    @click.argument("sequence", type=int, required=False)
    @click.option("--all", "every", is_flag=True, help="Replay every dead letter of this service.")
    def replay(sequence: int | None, every: bool) -> None:
        """Run dead letters through their consumer again (the inbox still prevents double effects)."""

        async def run(worker: Worker) -> None:
            letters = _dead_letters(worker)
            chosen = [letter.sequence for letter in await letters.list()] if every else [_required(sequence)]
            consumers = {consumer.spec.durable: consumer for consumer in worker.consumers}
            for number in chosen:
                letter = await letters.get(number)
                if letter is None or letter.consumer not in consumers:
                    raise click.ClickException(f"no dead letter {number} for {name}")
                outcome = await letters.replay(number, consumers[letter.consumer])
                click.echo(f"{number}: {outcome}")

        _with_worker(worker_plan, run)

    @events.command()
    @click.argument("sequence", type=int, required=False)
    @click.option("--all", "every", is_flag=True, help="Discard every dead letter of this service.")
    def discard(sequence: int | None, every: bool) -> None:
        """Delete dead letters for good."""

        async def run(worker: Worker) -> None:
            letters = _dead_letters(worker)
            chosen = [letter.sequence for letter in await letters.list()] if every else [_required(sequence)]
            for number in chosen:
                if not await letters.discard(number):
                    raise click.ClickException(f"no dead letter {number} for {name}")
                click.echo(f"{number}: discarded")

        _with_worker(worker_plan, run)

    return events


def _required(sequence: int | None) -> int:
    if sequence is None:
        raise click.UsageError("give a dead letter's sequence, or --all")
    return sequence


def _dead_letters(worker: Worker) -> DeadLetters:
    from shared.events.dead_letters import DeadLetters

    assert worker.nats is not None  # noqa: S101 - connected by _with_worker
    return DeadLetters(worker.nats.jetstream(), service=worker.plan.service)


def _with_worker(plan: Callable[[], WorkerPlan], action: Callable[[Worker], Awaitable[None]]) -> None:
    from shared.worker import Worker

    async def run() -> None:
        worker = Worker(plan())
        try:
            await worker.connect()
            await action(worker)
        finally:
            if worker.nats is not None:
                await worker.nats.close()
            await worker.engine.dispose()

    asyncio.run(run())
