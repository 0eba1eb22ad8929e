"""Each service's facts for the local stack only, declared once and keyed by the service's name.

Which services exist, and their streams, consumers and NATS subjects, is ``shared.events.topology``'s
to say. Here is only what ``just up`` needs to run a service on this machine: its loopback ports,
whether it signs the access tokens, the secrets made for it, the settings picked for it and what the
stack prints about it. The supervisor derives everything per service from these declarations.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from shared.events.topology import SERVICE_NAMES

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

__all__ = ("DEV_SERVICES", "DevService", "LocalStack", "dev_service")


class LocalStack(Protocol):
    """What a service's local settings may draw on (the running ``DevStack``)."""

    @property
    def mail_dir(self) -> Path:
        """Where a service that sends email writes it, one ``.eml`` file per message."""
        ...

    stored: dict[str, str]
    """The secrets kept in ``<data>/secrets.json``, by name."""

    def api_url(self, service: str) -> str:
        """The loopback URL of a service's API."""
        ...


def _nothing(_stack: LocalStack) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class DevService:
    """One service as the local stack runs it."""

    name: str
    """The service, as ``shared.events.topology`` declares it."""
    api_port: int
    """Its API's default port (``RELAY_<NAME>_PORT`` moves it)."""
    worker_port: int
    """Its worker's health and metrics port (``RELAY_<NAME>_WORKER_PORT``)."""
    metrics_port: int
    """Its API's internal ``/metrics`` port (``RELAY_<NAME>_METRICS_PORT``)."""
    issues_tokens: bool = False
    """It signs the access tokens: it gets the signing key and lets the other APIs' pages call it
    (Swagger UI signs in cross-origin); the others get its public key and its token URL."""
    secrets: Mapping[str, Callable[[], str]] = field(default_factory=dict)
    """Secrets made once for it and kept in ``<data>/secrets.json``, by name."""
    local_settings: Callable[[LocalStack], dict[str, str]] = _nothing
    """Settings picked for local use (the person's own ``<SERVICE>_*`` variables win)."""
    shown: Callable[[LocalStack], dict[str, str]] = _nothing
    """What ``just up`` prints about it when ready, beside its URLs: name → where."""


def _notify_settings(stack: LocalStack) -> dict[str, str]:
    # Email goes to files locally; the unsubscribe links point at the local API.
    return {
        "NOTIFY_EMAIL_URL": stack.mail_dir.as_uri(),
        "NOTIFY_UNSUBSCRIBE_SECRET": stack.stored["notify_unsubscribe_secret"],
        "NOTIFY_PUBLIC_BASE_URL": stack.api_url("notify"),
    }


def _notify_shown(stack: LocalStack) -> dict[str, str]:
    return {"mail": str(stack.mail_dir)}


DEV_SERVICES: tuple[DevService, ...] = (
    DevService("users", api_port=8001, worker_port=9001, metrics_port=9101, issues_tokens=True),
    DevService("orders", api_port=8002, worker_port=9002, metrics_port=9102),
    DevService(
        "notify",
        api_port=8003,
        worker_port=9003,
        metrics_port=9103,
        secrets={"notify_unsubscribe_secret": lambda: secrets.token_urlsafe(32)},
        local_settings=_notify_settings,
        shown=_notify_shown,
    ),
)


def dev_service(name: str) -> DevService:
    """The local-stack declaration of service ``name``.

    Raises:
        LookupError: The service has none.
    """
    for spec in DEV_SERVICES:
        if spec.name == name:
            return spec
    raise LookupError(f"the local stack declares no service {name!r}")


if tuple(spec.name for spec in DEV_SERVICES) != SERVICE_NAMES:  # pragma: no cover - a declaration mistake
    raise RuntimeError(
        f"the local stack declares {[spec.name for spec in DEV_SERVICES]}, shared.events.topology {list(SERVICE_NAMES)}"
    )
