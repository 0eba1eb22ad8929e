"""The commands every service has: ``api``, ``worker``, ``migrate``, ``revision`` and ``events``.

An operator reads a failure on one line and gets a non-zero exit status: 2 when the settings are
wrong (a variable missing, of the wrong type, a secret file unreadable), 1 when something the
command needs is unreachable (the database, NATS) or refused the work. ``--traceback`` shows the
whole story when a developer needs it.

Every command reads and checks its settings first, before it imports the web framework, the ORM
or the service's domain: a wrong setting is reported in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from shared.settings import SettingsError, variable_name

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from shared.db import ServiceDatabase
    from shared.events.dead_letters import DeadLetters
    from shared.settings import ServiceSettings
    from shared.worker import Worker, WorkerPlan

__all__ = (
    "CommandFailedError",
    "ServiceGroup",
    "events_commands",
    "explain_failure",
    "require_nats",
    "service_cli",
)

T = TypeVar("T")

CONFIGURATION_EXIT_CODE = 2
"""The settings are wrong: the same status click gives a usage error."""


class CommandFailedError(click.ClickException):
    """A failure an operator can act on, shown as one line: ``<service>: <what went wrong>``."""

    def __init__(self, service: str, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.service = service
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it a ClassVar, yet reads it per instance

    def show(self, file: Any = None) -> None:
        """Write the one line to stderr."""
        click.echo(f"{self.service}: {self.format_message()}", err=True, file=file)


class ServiceGroup(click.Group):
    """A service's command group that turns every failure of its commands into one line.

    Commands added later (``users create-admin``) get the same treatment, since they run inside
    the group's ``invoke``.
    """

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; translate what escapes it into a :class:`CommandFailedError`."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:
            if ctx.params.get("traceback"):
                raise
            raise CommandFailedError(str(self.name), *explain_failure(error, str(self.name))) from error


def explain_failure(error: BaseException, service: str) -> tuple[str, int]:
    """What to tell the operator about ``error`` on one line, and the exit status.

    Args:
        error: What escaped the command.
        service: The service's name: an error whose message starts with one of its variables
            (``NOTIFY_UNSUBSCRIBE_SECRET needs ...``) is a settings error too.
    """
    if isinstance(error, SettingsError) or _first_line(error).startswith(f"{service.upper()}_"):
        return _first_line(error), CONFIGURATION_EXIT_CODE
    from shared.db import database_failure_reason, is_database_unavailable
    from shared.events.connection import NatsConfigurationError, NatsUnavailableError

    if isinstance(error, NatsConfigurationError):
        return f"{variable_name(service, 'nats_url')}: {error}", CONFIGURATION_EXIT_CODE
    if isinstance(error, NatsUnavailableError):
        message = str(error)
    elif is_database_unavailable(error):
        message = f"cannot reach the database: {database_failure_reason(error)}"
    elif _is_database_error(error):
        message = f"database error: {database_failure_reason(error)}"
    else:
        message = f"{type(error).__name__}: {_first_line(error)}".rstrip(": ")
    return message, 1


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _is_database_error(error: BaseException) -> bool:
    import asyncpg.exceptions
    import sqlalchemy.exc

    return isinstance(error, sqlalchemy.exc.SQLAlchemyError | asyncpg.exceptions.PostgresError)


def require_nats(settings: ServiceSettings, service: str) -> None:
    """Refuse at once, naming the variable, when a command that needs NATS has no NATS URL.

    Raises:
        SettingsError: ``<SERVICE>_NATS_URL`` is empty.
    """
    if not settings.nats_url.strip():
        raise SettingsError(f"{variable_name(service, 'nats_url')} is not set: this command needs NATS")


def _resolve(target: str | T) -> T:
    """An object, or the object an import path like ``orders.app:DATABASE`` names (imported now)."""
    if not isinstance(target, str):
        return target
    from importlib import import_module

    module, _, attribute = target.partition(":")
    resolved: T = getattr(import_module(module), attribute)
    return resolved


def service_cli(
    name: str,
    *,
    app_factory: str,
    database: ServiceDatabase | str,
    load_settings: Callable[[], ServiceSettings],
    worker_plan: Callable[[], WorkerPlan] | str,
) -> click.Group:
    """A click group named after the service with the shared commands already on it.

    Args:
        name: The service's name (the command's name).
        app_factory: The import path of the app factory, like ``users.app:create_app``.
        database: The service's schema and migrations, or its import path (``users.app:DATABASE``):
            a path is imported only by the commands that need it, after the settings were checked.
        load_settings: Reads the service's settings from the environment.
        worker_plan: What the service's worker runs (relay, consumers, sweeps), or its import path.
    """

    @click.group(name=name, cls=ServiceGroup, help=f"The {name} service.")
    @click.option("--traceback", is_flag=True, help="Show the whole traceback of a failure, not one line.")
    def group(traceback: bool) -> None:  # read by ServiceGroup.invoke from the context
        pass

    @group.command()
    @click.option("--workers", type=int, default=None, help="granian worker processes (default: settings).")
    @click.option("--kill-timeout", type=int, default=20, show_default=True, help="Seconds a worker may take to stop.")
    def api(workers: int | None, kill_timeout: int) -> None:
        """Serve the HTTP API with granian."""
        # The settings are read and the app built once, so a setting only the app reads (a key, a
        # URL) fails now, on one line, instead of in every granian worker with a traceback; the
        # same for NATS. Both happen in a short-lived child: this process stays granian's small
        # main process, without the framework, the ORM, cryptography or the domain in its memory.
        listen = _check_in_child(name, app_factory, load_settings, show_traceback=_wants_traceback())
        from granian import Granian
        from granian.constants import Interfaces

        Granian(
            target=app_factory,
            factory=True,
            interface=Interfaces.ASGI,
            address=listen.host,
            port=listen.port,
            workers=workers or listen.workers,
            workers_kill_timeout=kill_timeout,
            log_access=False,
        ).serve()

    @group.command()
    def worker() -> None:
        """Run the outbox relay, the event consumers and the sweeps until SIGTERM."""
        require_nats(load_settings(), name)
        from shared.worker import run_worker_until_signalled

        run_worker_until_signalled(_resolve(worker_plan)())

    @group.command()
    @click.option("--revision", default="head", show_default=True)
    def migrate(revision: str) -> None:
        """Bring the service's schema up to ``revision``."""
        url = load_settings().database_url
        schema = _resolve(database)
        schema.upgrade(url, revision)
        click.echo(f"{name}: schema {schema.schema} at {revision}")

    @group.command()
    @click.option("-m", "--message", required=True)
    def revision(message: str) -> None:
        """Write a new migration from the difference between models and the database."""
        url = load_settings().database_url
        _resolve(database).revision(url, message)

    group.add_command(events_commands(name, worker_plan, load_settings))
    return group


def events_commands(
    name: str,
    worker_plan: Callable[[], WorkerPlan] | str,
    load_settings: Callable[[], ServiceSettings] | None = None,
) -> click.Group:
    """``<service> events status|dead-letters|replay|discard``.

    Args:
        name: The service's name.
        worker_plan: What the service's worker runs, or its import path.
        load_settings: Reads the settings, so they are checked before anything heavy is imported.
    """

    def plan(*, needs_nats: bool) -> WorkerPlan:
        if load_settings is not None:
            settings = load_settings()
            if needs_nats:
                require_nats(settings, name)
        return _resolve(worker_plan)()

    @click.group()
    def events() -> None:
        """Inspect the outbox and the dead letters of this service."""

    @events.command()
    def status() -> None:
        """Outbox backlog, and (with NATS) the stream's and each consumer's pending and dead letters."""
        chosen = plan(needs_nats=False)

        async def show() -> None:
            from shared.events.outbox import outbox_status
            from shared.worker import Worker

            worker = Worker(chosen)
            try:
                current = await outbox_status(worker.engine, worker.plan.tables)
            finally:
                await worker.engine.dispose()
            click.echo(f"outbox backlog: {current.backlog}, oldest: {current.oldest_age_seconds:.1f}s")
            if not chosen.settings.nats_url.strip():
                click.echo(f"stream and consumers: not shown, {variable_name(name, 'nats_url')} is not set")
                return
            for line in await _jetstream_lines(worker):
                click.echo(line)

        _quiet_logging()
        asyncio.run(show())

    @events.command("dead-letters")
    def dead_letters() -> None:
        """List this service's dead letters."""
        chosen = plan(needs_nats=True)

        async def show(worker: Worker) -> None:
            letters = await _dead_letters(worker).list()
            for letter in letters:
                click.echo(
                    f"{letter.sequence:>6}  {letter.consumer:<28} {letter.original_subject:<28} "
                    f"attempts={letter.attempts}  {letter.error}"
                )
            click.echo(f"{len(letters)} dead letter(s)")

        _with_worker(chosen, show)

    @events.command()
    @click.argument("sequence", type=click.IntRange(min=1), required=False)
    @click.option("--all", "every", is_flag=True, help="Replay every dead letter of this service.")
    def replay(sequence: int | None, every: bool) -> None:
        """Run dead letters through their consumer again (the inbox still prevents double effects)."""
        if not every:
            _required(sequence)
        chosen = plan(needs_nats=True)

        async def run(worker: Worker) -> None:
            await _replay(name, worker, sequence, every=every)

        _with_worker(chosen, run)

    @events.command()
    @click.argument("sequence", type=click.IntRange(min=1), required=False)
    @click.option("--all", "every", is_flag=True, help="Discard every dead letter of this service.")
    def discard(sequence: int | None, every: bool) -> None:
        """Delete dead letters for good."""
        if not every:
            _required(sequence)
        chosen = plan(needs_nats=True)

        async def run(worker: Worker) -> None:
            await _discard(name, worker, sequence, every=every)

        _with_worker(chosen, run)

    return events


async def _replay(name: str, worker: Worker, sequence: int | None, *, every: bool) -> None:
    """Replay one dead letter (its failure is the command's) or all of them (each says how it went)."""
    letters = _dead_letters(worker)
    chosen = [letter.sequence for letter in await letters.list()] if every else [_required(sequence)]
    consumers = {consumer.spec.durable: consumer for consumer in worker.consumers}
    failed = 0
    for number in chosen:
        letter = await letters.get(number)
        if letter is None or letter.consumer not in consumers:
            raise CommandFailedError(name, f"no dead letter {number}")
        try:
            outcome = await letters.replay(number, consumers[letter.consumer])
        except Exception as error:
            from shared.db import is_database_unavailable
            from shared.events.connection import NatsUnavailableError

            if is_database_unavailable(error) or isinstance(error, NatsUnavailableError):
                raise
            # Undecodable, no handler, or the handler failed again: it stays a dead letter.
            reason = _first_line(error) if isinstance(error, ValueError) else explain_failure(error, name)[0]
            if not every:
                raise CommandFailedError(name, f"dead letter {number} not replayed: {reason}") from error
            click.echo(f"{number}: not replayed: {reason}")
            failed += 1
        else:
            click.echo(f"{number}: {outcome}")
    if failed:
        raise CommandFailedError(name, f"{failed} of {len(chosen)} dead letter(s) not replayed")


async def _discard(name: str, worker: Worker, sequence: int | None, *, every: bool) -> None:
    letters = _dead_letters(worker)
    numbers = [letter.sequence for letter in await letters.list()] if every else [_required(sequence)]
    for number in numbers:
        if not await letters.discard(number):
            raise CommandFailedError(name, f"no dead letter {number}")
        click.echo(f"{number}: discarded")


async def _jetstream_lines(worker: Worker) -> list[str]:
    """The service's stream and consumers, one line each, read with its own NATS user (nothing is created)."""
    from shared.events.connection import connect_nats
    from shared.events.permissions import inbox_prefix
    from shared.events.status import jetstream_status

    settings, service = worker.plan.settings, worker.plan.service
    connection = await connect_nats(
        worker.nats_servers(),
        name=f"{service}-events-status",
        user=settings.nats_user,
        password=settings.nats_password,
        inbox_prefix=inbox_prefix(service),
        connect_timeout=settings.nats_connect_timeout_seconds,
    )
    try:
        stream, consumers = await jetstream_status(connection.jetstream(), service)
    finally:
        await connection.close()
    return [stream.line(), *(consumer.line() for consumer in consumers)]


def _wants_traceback() -> bool:
    context = click.get_current_context(silent=True)
    root = context.find_root() if context is not None else None
    return bool(root is not None and root.params.get("traceback"))


class _Listen(msgspec.Struct, frozen=True):
    """What granian's main process needs from the settings the child checked."""

    host: str
    port: int
    workers: int


def _check_in_child(
    name: str, app_factory: str, load_settings: Callable[[], ServiceSettings], *, show_traceback: bool
) -> _Listen:
    """Read the settings, build the app and probe NATS in a forked child, which then exits.

    The child reports a failure as the command itself would (one line, or the traceback) and exits
    with its status; on success it hands back where to listen through a pipe.

    Raises:
        click.exceptions.Exit: The child found a problem and has already reported it on stderr.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: leaves with os._exit, never returns into click
        os.close(read_end)
        code = 0
        try:
            settings = load_settings()
            _resolve(app_factory)()
            if settings.nats_url.strip():
                asyncio.run(_probe_nats(settings, name))
            listen = _Listen(settings.http_host, settings.http_port, settings.http_workers)
            os.write(write_end, msgspec.json.encode(listen))
        except BaseException as error:  # noqa: BLE001 - every failure becomes the exit status
            if show_traceback:
                traceback.print_exc()
                code = 1
            else:
                message, code = explain_failure(error, name)
                CommandFailedError(name, message, code).show()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not answer:
        raise click.exceptions.Exit(code if code > 0 else 1)
    return msgspec.json.decode(answer, type=_Listen)


async def _probe_nats(settings: ServiceSettings, name: str) -> None:
    """Connect once, as the API's lifespan will, so a NATS that is down is one line, not a crash."""
    from shared.events.connection import connect_nats

    _quiet_logging()
    connection = await connect_nats(
        settings.nats_url,
        name=f"{name}-api-probe",
        user=settings.nats_user,
        password=settings.nats_password,
        connect_timeout=settings.nats_connect_timeout_seconds,
    )
    await connection.close()


def _required(sequence: int | None) -> int:
    if sequence is None:
        raise click.UsageError("give a dead letter's sequence, or --all")
    return sequence


def _dead_letters(worker: Worker) -> DeadLetters:
    from shared.events.dead_letters import DeadLetters

    assert worker.nats is not None  # noqa: S101 - connected by _with_worker
    return DeadLetters(worker.nats.jetstream(), service=worker.plan.service)


def _quiet_logging() -> None:
    # The events commands talk to a person: NATS' reconnect warnings would bury the one line
    # that says what went wrong. Errors still go to stderr.
    from shared.telemetry import configure_logging

    configure_logging(level="ERROR", json=False)


def _with_worker(plan: WorkerPlan, action: Callable[[Worker], Awaitable[None]]) -> None:
    from shared.worker import Worker

    _quiet_logging()

    async def run() -> None:
        worker = Worker(plan)
        try:
            await worker.connect()
            await action(worker)
        finally:
            if worker.nats is not None:
                await worker.nats.close()
            await worker.engine.dispose()

    asyncio.run(run())
