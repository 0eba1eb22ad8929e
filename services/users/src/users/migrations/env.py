"""Alembic environment of the users schema."""

from shared.db import run_migrations_env
from users.app import DATABASE

run_migrations_env(DATABASE)
