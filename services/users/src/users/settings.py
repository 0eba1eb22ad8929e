"""The users service's settings: ``USERS_*`` environment variables."""

from __future__ import annotations

from shared.settings import ServiceSettings, load_settings

__all__ = ("UsersSettings", "load_users_settings")


class UsersSettings(ServiceSettings, kw_only=True, frozen=True):
    """What users needs beyond the settings every service has."""

    jwt_private_key: str = ""
    """The Ed25519 private key (PKCS#8 PEM) that signs access tokens; read it from a file in production."""
    jwt_audiences: tuple[str, ...] = ("users", "orders", "notify")
    """Every service an access token is meant for."""
    access_token_ttl_seconds: int = 900
    """How long an access token is valid."""
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    """How long a refresh token is valid if it is never used."""
    login_window_seconds: int = 900
    """The window in which failed logins are counted."""
    login_max_failures_per_account: int = 5
    """Failed logins for one email in one window before that account is refused for the rest of it."""
    login_max_failures_per_address: int = 30
    """Failed logins from one client address in one window before it is refused for the rest of it."""
    password_hash_time_cost: int = 3
    """argon2 time cost (iterations)."""
    password_hash_memory_kib: int = 65536
    """argon2 memory cost in KiB."""


def load_users_settings() -> UsersSettings:
    """Read the settings from ``USERS_*`` variables."""
    return load_settings(UsersSettings, "USERS")
