"""``users`` commands: the shared ``api``, ``migrate`` and ``revision``, plus ``create-admin``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import click

from shared.cli import service_cli
from users.settings import load_users_settings

if TYPE_CHECKING:
    from users.settings import UsersSettings

__all__ = ("main",)

# Import paths, not objects: a command checks its settings before the app and domain are imported.
main = service_cli(
    "users",
    app_factory="users.app:create_app",
    database="users.app:DATABASE",
    load_settings=load_users_settings,
    worker_plan="users.worker:worker_plan",
)


async def create_admin_account(
    settings: UsersSettings, *, email: str, password: str, display_name: str
) -> tuple[str, bool]:
    """Create an administrator or promote an existing account; returns its id and whether it is new."""
    from sqlalchemy import pool
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from users.models import OUTBOX
    from users.passwords import PasswordHasher
    from users.service import UserService

    engine = create_async_engine(settings.database_url, poolclass=pool.NullPool)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            users = UserService(
                session=session, settings=settings, hasher=PasswordHasher.from_settings(settings), outbox=OUTBOX
            )
            account, created = await users.create_admin(email=email, password=password, display_name=display_name)
            return str(account.id), created
    finally:
        await engine.dispose()


@main.command("create-admin")
@click.option("--email", required=True)
@click.option("--display-name", default="Administrator", show_default=True)
@click.password_option(help="At least 10 characters; prompted for when not given.")
def create_admin(email: str, display_name: str, password: str) -> None:
    """Create the first administrator (or promote an existing account). There is no default admin."""
    settings = load_users_settings()
    from shared.errors import DomainError

    try:
        account_id, created = asyncio.run(
            create_admin_account(settings, email=email, password=password, display_name=display_name)
        )
    except DomainError as error:
        raise click.ClickException(error.detail) from error
    click.echo(f"{'created' if created else 'promoted'} admin {email} ({account_id})")
