"""Alembic environment of the notify schema."""

from shared.db import run_migrations_env
from notify.app import DATABASE

run_migrations_env(DATABASE)
