"""Alembic environment of the orders schema."""

from shared.db import run_migrations_env
from orders.app import DATABASE

run_migrations_env(DATABASE)
