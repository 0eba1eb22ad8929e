"""Wait until a service's schema has reached the migrations this image carries.

The initContainer of every api and worker pod runs it with the pod's own image::

    python /opt/relay/wait_for_migrations.py users --timeout 900

so no process starts against a schema older than its code: the ``<service>-migrate`` Job
migrates, the pods wait here until it has. It reads ``<SERVICE>_DATABASE_URL`` (or ``_FILE``) like
the service does. A revision this image does not know was written by a newer release, whose
schema an older release must already tolerate (expand, then contract): that counts as ready too,
so a rollback or a restarted old pod is never held back.

Exit status: 0 ready, 1 still not ready when the timeout ran out (the kubelet then restarts the
initContainer with back-off, and the pod shows why).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from typing import TYPE_CHECKING

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine

from shared.settings import ServiceSettings, load_settings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from shared.db import ServiceDatabase

__all__ = ("main", "schema_state")


async def _current_revision(database: ServiceDatabase, url: str) -> str | None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        return await database.current_revision(engine)
    finally:
        await engine.dispose()


def schema_state(database: ServiceDatabase, current: str | None) -> str | None:
    """None when the schema is ready for this image's code, else why not."""
    head = database.head()
    if current == head:
        return None
    if current is None:
        return f"not migrated yet (head is {head})"
    try:
        ScriptDirectory.from_config(database.alembic_config("postgresql://")).get_revision(current)
    except CommandError:
        return None  # written by a newer release: this image's code runs on it
    return f"at {current}, waiting for {head}"


def main(argv: Sequence[str] | None = None) -> int:
    """``wait_for_migrations.py SERVICE [--timeout SECONDS] [--interval SECONDS]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", help="users, orders or notify")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between two looks")
    args = parser.parse_args(argv)
    service: str = args.service
    database: ServiceDatabase = importlib.import_module(f"{service}.app").DATABASE
    url = load_settings(ServiceSettings, service.upper()).database_url
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            problem = schema_state(database, asyncio.run(_current_revision(database, url)))
        except Exception as error:  # noqa: BLE001 - Postgres not reachable yet is a reason to wait
            problem = f"database not reachable: {type(error).__name__}: {error}"
        if problem is None:
            print(f"{service}: schema ready for this release", flush=True)
            return 0
        print(f"{service}: schema {problem}", flush=True)
        if time.monotonic() >= deadline:
            return 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
