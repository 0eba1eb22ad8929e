"""The users service's settings: ``USERS_*`` environment variables."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from shared.events.topology import SERVICE_NAMES
from shared.settings import ServiceSettings, load_settings

__all__ = ("UsersSettings", "load_users_settings")


class UsersSettings(ServiceSettings, kw_only=True, frozen=True):
    """What users needs beyond the settings every service has."""

    jwt_private_key: str = ""
    """The Ed25519 private key (PKCS#8 PEM) that signs access tokens; read it from a file in production."""
    jwt_audiences: tuple[str, ...] = SERVICE_NAMES
    """Every service an access token is meant for (default: every declared service)."""
    access_token_ttl_seconds: int = 900
    """How long an access token is valid."""
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    """How long a refresh token is valid if it is never used."""
    login_window_seconds: int = 900
    """The window in which failed logins are counted."""
    login_max_failures_per_account: int = 5
    """Password checks for one email in one window (sign-ins and ``current_password``); a successful
    sign-in gives its attempt back, so in effect failures. Beyond it: 429 for the rest of the window."""
    login_max_failures_per_address: int = 30
    """The same, from one client address (see ``trusted_proxies`` behind an ingress)."""
    registration_window_seconds: int = 3600
    """The window in which registrations per client address are counted."""
    registration_max_per_address: int = 10
    """Registration attempts (successful or not) from one client address in one window; beyond it: 429."""
    password_hash_time_cost: int = 3
    """argon2 time cost (iterations)."""
    password_hash_memory_kib: int = 65536
    """argon2 memory cost in KiB."""
    password_hash_concurrency: Annotated[int, Meta(ge=0, le=256)] = 0
    """How many hashes run at once; each holds ``password_hash_memory_kib`` while it runs, the rest
    wait their turn. 0: one per CPU the process can keep busy (its affinity, its cgroup's CPU limit)."""


def load_users_settings() -> UsersSettings:
    """Read the settings from ``USERS_*`` variables."""
    return load_settings(UsersSettings, "USERS")
