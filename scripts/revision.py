"""Autogenerate a migration for a service against a throwaway Postgres at the service's head.

Usage: ``uv run python scripts/revision.py <service> "<message>"``. It starts a temporary server,
provisions the service's role and schema as production does, migrates to head, and lets Alembic
write the difference between the models and that schema into the service's ``migrations/versions``.
"""

from __future__ import annotations

import asyncio
import importlib
import shutil
import sys
import tempfile
from pathlib import Path

from devtools.stack.servers import PostgresServer
from shared.db import ServiceDatabase, provision_service_role


def main() -> None:
    """Generate the revision."""
    service, message = sys.argv[1], sys.argv[2]
    database: ServiceDatabase = importlib.import_module(f"{service}.app").DATABASE
    root = Path(tempfile.mkdtemp(prefix="relay-revision-"))
    root.chmod(0o755)
    server = PostgresServer(root / "postgres")
    try:
        server.start()
        url = asyncio.run(provision_service_role(server.url(), service=service, password="revision"))  # noqa: S106 - a throwaway server
        database.upgrade(url)
        database.revision(url, message)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
