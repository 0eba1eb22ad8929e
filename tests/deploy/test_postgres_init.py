"""The SQL that provisions Postgres in Kubernetes grants what `just up` and the tests grant."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.testing import TEST_ROLE_PASSWORD
from notify.app import DATABASE as NOTIFY_DATABASE
from orders.app import DATABASE as ORDERS_DATABASE
from shared.db import provision_service_role
from tests.deploy.manifests import K8S, SERVICES
from users.app import DATABASE as USERS_DATABASE

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devtools.stack.servers import PostgresServer
    from shared.db import ServiceDatabase

SCHEMAS_SQL = K8S / "base" / "postgres" / "schemas.sql"
ROLE_PASSWORDS_SH = K8S / "components" / "postgres-statefulset" / "20-role-passwords.sh"
DATABASES: dict[str, ServiceDatabase] = {"users": USERS_DATABASE, "orders": ORDERS_DATABASE, "notify": NOTIFY_DATABASE}


async def _recreate(server: PostgresServer, name: str, *, drop_only: bool = False) -> None:
    engine = create_async_engine(server.url(), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            if not drop_only:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()


async def _grants(url: str) -> dict[str, Any]:
    """What each service role owns and may do in this database, and what PUBLIC may."""
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            found: dict[str, Any] = {
                "database_acl": await connection.scalar(
                    text("SELECT datacl::text FROM pg_database WHERE datname = current_database()")
                ),
                "public_acl": await connection.scalar(
                    text("SELECT nspacl::text FROM pg_namespace WHERE nspname = 'public'")
                ),
            }
            for service in SERVICES:
                row = (
                    await connection.execute(
                        text(
                            "SELECT n.nspowner::regrole::text, n.nspacl::text, r.rolcanlogin, r.rolsuper, "
                            "r.rolcreatedb, r.rolcreaterole, r.rolconfig::text, "
                            "has_database_privilege(:role, current_database(), 'CREATE'), "
                            "has_schema_privilege(:role, 'public', 'CREATE') "
                            "FROM pg_namespace n, pg_roles r WHERE n.nspname = :role AND r.rolname = :role"
                        ),
                        {"role": service},
                    )
                ).one()
                others = [other for other in SERVICES if other != service]
                foreign = [
                    await connection.scalar(
                        text("SELECT has_schema_privilege(:role, :schema, 'USAGE')"), {"role": service, "schema": other}
                    )
                    for other in others
                ]
                found[service] = (*row, foreign)
            return found
    finally:
        await engine.dispose()


@pytest.fixture
def sql_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database provisioned by schemas.sql and 20-role-passwords.sh, as in the dev pod."""
    name = "deploy_schemas_sql"
    asyncio.run(_recreate(postgres_server, name))
    env = os.environ | {
        "PATH": f"{postgres_server.bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PGHOST": "127.0.0.1",
        "PGPORT": str(postgres_server.port),
        "PGPASSWORD": postgres_server.superuser_password,
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": name,
    }
    # As the postgres image's entrypoint does: .sql files through psql, .sh files executed.
    psql = [str(postgres_server.bin_dir / "psql"), "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-U", "postgres", "-d", name]
    subprocess.run([*psql, "-f", str(SCHEMAS_SQL)], env=env, check=True, capture_output=True)
    # Roles are cluster-wide: the other tests' roles keep the password they know.
    passwords = {f"{service.upper()}_DB_PASSWORD": TEST_ROLE_PASSWORD for service in SERVICES}
    subprocess.run(["/bin/sh", str(ROLE_PASSWORDS_SH)], env=env | passwords, check=True, capture_output=True)
    yield name
    asyncio.run(_recreate(postgres_server, name, drop_only=True))


@pytest.fixture
def provisioned_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database provisioned by shared.db.provision_service_role, as `just up` does."""
    name = "deploy_provisioned"
    asyncio.run(_recreate(postgres_server, name))
    for service in SERVICES:
        asyncio.run(provision_service_role(postgres_server.url(name), service=service, password=TEST_ROLE_PASSWORD))
    yield name
    asyncio.run(_recreate(postgres_server, name, drop_only=True))


def test_kubernetes_sql_grants_exactly_what_provision_service_role_grants(
    postgres_server: PostgresServer, sql_database: str, provisioned_database: str
) -> None:
    from_sql = asyncio.run(_grants(postgres_server.url(sql_database)))
    from_python = asyncio.run(_grants(postgres_server.url(provisioned_database)))
    assert from_sql == from_python
    for service in SERVICES:
        owner, _acl, login, superuser, createdb, createrole, config, create_db, create_public, foreign = from_sql[
            service
        ]
        assert (owner, login, superuser, createdb, createrole) == (service, True, False, False, False)
        assert config == f"{{search_path={service}}}"
        assert (create_db, create_public, foreign) == (False, False, [False, False])


def test_every_service_migrates_as_its_own_role_in_the_kubernetes_provisioned_database(
    postgres_server: PostgresServer, sql_database: str
) -> None:
    for service, database in DATABASES.items():
        url = make_url(postgres_server.url(sql_database)).set(username=service, password=TEST_ROLE_PASSWORD)
        database.upgrade(url.render_as_string(hide_password=False))
