"""Test support: real Postgres and NATS servers, service databases and in-process app clients.

Enable the fixtures with ``pytest_plugins = ["devtools.testing.plugin"]`` in the root conftest.
"""

from devtools.testing.database import (
    TEST_ROLE_PASSWORD,
    migrate_fresh_database,
    prepare_service_database,
    truncate_schema,
)
from devtools.testing.http import serve_app
from devtools.testing.waiting import eventually

__all__ = (
    "TEST_ROLE_PASSWORD",
    "eventually",
    "migrate_fresh_database",
    "prepare_service_database",
    "serve_app",
    "truncate_schema",
)
