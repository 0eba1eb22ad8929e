"""``users`` commands: the shared ``api``, ``migrate`` and ``revision``, plus ``create-admin``."""

from __future__ import annotations

import asyncio

import click
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from shared.cli import service_cli
from shared.errors import DomainError
from shared.events.outbox import Outbox
from users.app import DATABASE, create_signer
from users.models import EVENT_TABLES
from users.service import PasswordHasher, UserService
from users.settings import UsersSettings, load_users_settings
from users.worker import worker_plan

__all__ = ("main",)

main = service_cli(
    "users",
    app_factory="users.app:create_app",
    database=DATABASE,
    load_settings=load_users_settings,
    worker_plan=worker_plan,
)


async def create_admin_account(
    settings: UsersSettings, *, email: str, password: str, display_name: str
) -> tuple[str, bool]:
    """Create an administrator or promote an existing account; returns its id and whether it is new."""
    engine = create_async_engine(settings.database_url, poolclass=pool.NullPool)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            users = UserService(
                session=session,
                settings=settings,
                signer=create_signer(settings),
                hasher=PasswordHasher.from_settings(settings),
                outbox=Outbox(EVENT_TABLES, source="users"),
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
    try:
        account_id, created = asyncio.run(
            create_admin_account(load_users_settings(), email=email, password=password, display_name=display_name)
        )
    except DomainError as error:
        raise click.ClickException(error.detail) from error
    click.echo(f"{'created' if created else 'promoted'} admin {email} ({account_id})")
