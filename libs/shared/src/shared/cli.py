"""The commands every service has: ``api``, ``migrate`` and ``revision``; services add their own."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.db import ServiceDatabase
    from shared.settings import ServiceSettings

__all__ = ("service_cli",)


def service_cli(
    name: str,
    *,
    app_factory: str,
    database: ServiceDatabase,
    load_settings: Callable[[], ServiceSettings],
) -> click.Group:
    """A click group named after the service with the shared commands already on it.

    Args:
        name: The service's name (the command's name).
        app_factory: The import path of the app factory, like ``users.app:create_app``.
        database: The service's schema and migrations.
        load_settings: Reads the service's settings from the environment.
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

    return group
