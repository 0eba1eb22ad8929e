"""Typed settings read from environment variables with a per-service prefix.

A field ``database_url`` of the ``users`` service is read from ``USERS_DATABASE_URL``. When that
variable is absent, ``USERS_DATABASE_URL_FILE`` names a file whose content (stripped) is used
instead, so Kubernetes Secrets can be mounted as files. Lists are comma separated.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ("ServiceSettings", "SettingsError", "load_settings")

SettingsT = TypeVar("SettingsT", bound="ServiceSettings")


class SettingsError(Exception):
    """The environment does not describe valid settings."""


class ServiceSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Settings every service has. Services subclass this and add their own fields."""

    database_url: str
    """SQLAlchemy URL of the service's database, connecting as the service's own role."""
    database_pool_size: int = 10
    """Connections kept open per process."""
    nats_url: str = ""
    """NATS server URL(s), comma separated; empty means the service runs without NATS."""
    nats_user: str = ""
    """NATS user name of this service."""
    nats_password: str = ""
    """NATS password of this service."""
    http_host: str = "127.0.0.1"
    """Address the API listens on."""
    http_port: int = 8000
    """Port the API listens on."""
    http_workers: int = 1
    """granian worker processes for the API."""
    cors_allow_origins: tuple[str, ...] = ()
    """Origins allowed by CORS; empty disables CORS."""
    max_request_body_bytes: int = 1_048_576
    """Largest request body accepted; a larger one is answered with 413."""
    log_level: str = "INFO"
    """Root log level."""
    log_json: bool = True
    """JSON log lines (for machines) or console lines (for people)."""
    debug: bool = False
    """Litestar debug mode; never in production, it shows tracebacks."""
    jwt_issuer: str = "users"
    """``iss`` every access token must carry."""
    jwt_audience: str = ""
    """``aud`` this service accepts; defaults to the service's own name."""
    jwt_public_keys: str = ""
    """PEM public key(s) that verify access tokens (several may be concatenated for rotation)."""
    jwks_url: str = ""
    """Where to fetch the issuer's JWKS when no public key is configured."""
    worker_health_host: str = "127.0.0.1"
    """Address of the worker's health and metrics endpoint."""
    worker_health_port: int = 9000
    """Port of the worker's ``/health/live``, ``/health/ready`` and ``/metrics``; 0 turns it off."""
    events_duplicate_window_seconds: float = 120.0
    """How long JetStream remembers message ids to drop duplicates (covers relay retries)."""
    events_max_age_seconds: float = 7 * 86_400.0
    """How long streams keep events."""
    events_stream_replicas: int = 1
    """Replicas of each stream (3 on a 3-node JetStream cluster)."""
    outbox_poll_seconds: float = 2.0
    """How often the relay looks at the outbox when no NOTIFY woke it."""
    outbox_retention_seconds: float = 86_400.0
    """How long published outbox rows are kept (for inspection) before they are pruned."""


def load_settings(
    settings_type: type[SettingsT],
    prefix: str,
    environ: Mapping[str, str] | None = None,
) -> SettingsT:
    """Read ``settings_type`` from environment variables named ``{PREFIX}_{FIELD}``.

    Args:
        settings_type: The settings struct to fill.
        prefix: The service's prefix, such as ``USERS``.
        environ: Variables to read instead of ``os.environ`` (for tests).

    Returns:
        The validated settings.

    Raises:
        SettingsError: A required variable is missing or a value has the wrong type.
    """
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(settings_type)
    raw: dict[str, Any] = {}
    for field in msgspec.structs.fields(settings_type):
        name = f"{prefix.upper()}_{field.name.upper()}"
        value = env.get(name)
        if value is None and (secret_file := env.get(f"{name}_FILE")):
            try:
                value = Path(secret_file).read_text(encoding="utf-8").strip()
            except OSError as error:
                raise SettingsError(f"{name}_FILE: cannot read {secret_file}: {error}") from error
        if value is None:
            continue
        raw[field.name] = _split_list(value) if _is_sequence(hints[field.name]) else value
    try:
        return msgspec.convert(raw, settings_type, strict=False)
    except msgspec.ValidationError as error:
        raise SettingsError(f"{prefix.upper()} settings: {error}") from error


def _is_sequence(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (tuple, list)


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]
