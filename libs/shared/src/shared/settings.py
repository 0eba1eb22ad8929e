"""Typed settings read from environment variables with a per-service prefix.

A field ``database_url`` of the ``users`` service is read from ``USERS_DATABASE_URL``. When that
variable is absent, ``USERS_DATABASE_URL_FILE`` names a file whose content (stripped) is used
instead, so Kubernetes Secrets can be mounted as files. Lists are comma separated.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ("ServiceSettings", "SettingsError", "load_settings", "variable_name")

SettingsT = TypeVar("SettingsT", bound="ServiceSettings")


class SettingsError(Exception):
    """The environment does not describe valid settings."""


class ServiceSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Settings every service has. Services subclass this and add their own fields."""

    database_url: str
    """SQLAlchemy URL of the service's database, connecting as the service's own role."""
    database_pool_size: int = 20
    """Database connections per process, at most; each stays open once made (no overflow connections).

    Overflow connections were closed as soon as they went back and made again at the next burst:
    under steady load beyond the pool's size every few requests paid a new connection (TCP, SCRAM
    authentication, the TLS attempt), the largest item of a read's profile after the framework."""
    database_read_pool_size: Annotated[int, msgspec.Meta(ge=0)] = 4
    """Of ``database_pool_size``, the connections an API whose service reads prebuilt SQL outside a
    transaction (``ServiceApp.prebuilt_reads``: orders, notify) keeps for those reads
    (``shared.db.ReadPool``); the engine gets the rest, so the process still holds at most
    ``database_pool_size``. 0: those reads take the engine's pool. Below ``database_pool_size``."""
    nats_url: str = ""
    """NATS server URL(s), comma separated; empty means the service runs without NATS."""
    nats_user: str = ""
    """NATS user name of this service."""
    nats_password: str = ""
    """NATS password of this service."""
    nats_connect_timeout_seconds: float = 10.0
    """How long a command that needs NATS waits for it at start before it gives up with an error."""
    http_host: str = "127.0.0.1"
    """Address the API listens on."""
    http_port: int = 8000
    """Port the API listens on."""
    http_workers: int = 1
    """granian worker processes for the API."""
    trusted_proxies: tuple[str, ...] = ()
    """CIDRs of the reverse proxies (the ingress) whose forwarding header names the client; empty: none is
    trusted and the TCP peer is the client (``shared.client_address``)."""
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    """The header the trusted proxies append the client's address to (read only from a trusted peer)."""
    cors_allow_origins: tuple[str, ...] = ()
    """Origins (``https://shop.example.com``) whose browser pages may call this API; empty disables CORS."""
    metrics_host: str = "127.0.0.1"
    """Address of the API process's internal ``/metrics`` port."""
    metrics_port: int = 0
    """Internal port of the API process's Prometheus ``/metrics`` (never on the public port); 0 turns it off."""
    root_path: str = ""
    """Path prefix clients reach this API under (``/users``) through a proxy that strips it before
    forwarding (the prod Ingress); the OpenAPI document's ``servers`` and Swagger UI's links carry it.
    Empty: served at the root."""
    docs_enabled: bool = True
    """Serve the OpenAPI document and Swagger UI at ``/docs`` (production turns it off)."""
    token_url: str = ""
    """users' ``POST /auth/token``, where Swagger UI signs in (OAuth2 password flow); users defaults to its own."""
    max_request_body_bytes: int = 1_048_576
    """Largest request body accepted; a larger one is answered with 413."""
    log_level: str = "INFO"
    """Root log level."""
    log_json: bool = True
    """JSON log lines (for machines) or console lines (for people)."""
    access_log: bool = True
    """One log line per request (method, route, status, duration, user, trace id) in the API, and per
    event published or consumed (type, event id, consumer, outcome, trace id) in the worker."""
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
    token_revocation_poll_seconds: float = 1.0
    """How often each API process reloads recent revocations (``tokens_valid_after``) from its table:
    the longest a revoked access token still works once the revocation reached this service."""
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

    Every problem is reported against the variable an operator sets, on one line: a missing
    required value (an empty one counts as missing), a value of the wrong type, an unreadable
    ``*_FILE``, a database or NATS URL that cannot be parsed.

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
    hints = typing.get_type_hints(settings_type, include_extras=True)
    raw: dict[str, Any] = {}
    for field in msgspec.structs.fields(settings_type):
        name = variable_name(prefix, field.name)
        value, source = _read(env, name)
        if field.required and not (value or "").strip():
            raise SettingsError(f"{source} is empty" if value is not None else f"{name} is not set")
        if value is None:
            continue
        annotation = hints[field.name]
        candidate: Any = _split_list(value) if _is_sequence(annotation) else value
        try:
            raw[field.name] = msgspec.convert(candidate, annotation, strict=False)
        except msgspec.ValidationError as error:
            raise SettingsError(f"{source}: {_reason(error, value)}") from error
        if (check := _FIELD_CHECKS.get(field.name)) is not None and (problem := check(raw[field.name])):
            raise SettingsError(f"{source}: {problem}")
    try:
        return msgspec.convert(raw, settings_type, strict=False)
    except msgspec.ValidationError as error:  # a rule across fields (a subclass's __post_init__)
        raise SettingsError(f"{prefix.upper()} settings: {error}") from error


def variable_name(prefix: str, field: str) -> str:
    """The environment variable of a settings field: ``variable_name("users", "nats_url")`` is ``USERS_NATS_URL``."""
    return f"{prefix.upper()}_{field.upper()}"


def _read(env: Mapping[str, str], name: str) -> tuple[str | None, str]:
    """The raw value of a variable, or of the file its ``_FILE`` twin names; and where it came from."""
    value = env.get(name)
    if value is not None:
        return value, name
    secret_file = env.get(f"{name}_FILE")
    if not secret_file:
        return None, name
    try:
        return Path(secret_file).read_text(encoding="utf-8").strip(), f"{name}_FILE"
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise SettingsError(f"{name}_FILE: cannot read {secret_file}: {reason}") from error


def _reason(error: msgspec.ValidationError, value: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.http_port`"; the value came from an
    # environment variable, so it always was a string: say what was expected and show the value.
    message = str(error).split(" - at ", 1)[0].replace("`", "")
    if message.startswith("Expected "):
        return f"expected {message.removeprefix('Expected ').split(', got ', 1)[0]}, got {_shown(value)}"
    return f"{message[:1].lower()}{message[1:]} (got {_shown(value)})"


_SHOWN_CHARACTERS = 40


def _shown(value: str) -> str:
    # Enough of the value to recognise a typo; not a whole secret read from the wrong file.
    if len(value) > _SHOWN_CHARACTERS:
        value = f"{value[: _SHOWN_CHARACTERS - 3]}..."
    return repr(value)


def _check_database_url(value: Any) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(str(value))
    except ArgumentError:
        return "not a database URL (like postgresql+asyncpg://user:password@host:5432/database)"
    return None


def _check_nats_url(value: Any) -> str | None:
    from shared.events.connection import NatsConfigurationError, parse_servers

    if not str(value).strip():
        return None  # empty: the service runs without NATS; commands that need it refuse themselves
    try:
        parse_servers(str(value))
    except NatsConfigurationError as error:
        return str(error)
    return None


def _check_private_key(value: Any) -> str | None:
    if not str(value).strip():
        return None  # the service says whether it needs one
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(str(value).encode(), password=None)
    except (ValueError, TypeError):
        key = None
    return None if isinstance(key, Ed25519PrivateKey) else "not an unencrypted Ed25519 private key in PEM (PKCS#8)"


def _check_public_keys(value: Any) -> str | None:
    if not str(value).strip():
        return None
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    marker = "-----END PUBLIC KEY-----"
    blocks = [block for block in str(value).split(marker) if "-----BEGIN PUBLIC KEY-----" in block]
    if not blocks:
        return "holds no PEM public key (-----BEGIN PUBLIC KEY-----)"
    for block in blocks:
        try:
            key = serialization.load_pem_public_key(f"{block.strip()}\n{marker}\n".encode())
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, Ed25519PublicKey):
            return "holds a PEM block that is not an Ed25519 public key"
    return None


def _check_root_path(value: Any) -> str | None:
    path = str(value)
    if path and not _ROOT_PATH.fullmatch(path):
        return "a path prefix starts with / and does not end with one, like /users (empty: the root)"
    return None


# Unreserved URL characters only: the prefix is written into the OpenAPI document and into links.
_ROOT_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")

_FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "database_url": _check_database_url,
    "nats_url": _check_nats_url,
    "root_path": _check_root_path,
    "jwt_private_key": _check_private_key,
    "jwt_public_keys": _check_public_keys,
}
"""Checks beyond the type, by field name, for the fields every service has."""


def _is_sequence(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_origin(annotation) in (tuple, list)


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]
