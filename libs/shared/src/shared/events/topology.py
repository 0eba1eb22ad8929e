"""The services, declared once: who they are and what each one may use on NATS.

Everything that lists the services derives from ``SERVICES``: the NATS users and their permissions
(``shared.events.permissions``), the audiences of users' access tokens, the local stack and the
test fixtures (``devtools``), the Kubernetes checks and the image builds. A service's stream and
consumers are declared in ``shared.events.streams`` under its name; the only other thing that
differs between services here is the core NATS subjects a service talks on beside JetStream.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.events.streams import CONSUMERS, LIVE_NOTIFICATIONS, STREAMS, ConsumerSpec, StreamSpec

__all__ = ("SERVICES", "SERVICE_NAMES", "ServiceSpec", "service")


@dataclass(frozen=True)
class ServiceSpec:
    """One service's place in the event topology."""

    name: str
    """The service's name: its package, its command, its schema, its NATS user, its stream's subjects."""
    core_subjects: tuple[str, ...] = ()
    """Core NATS subjects (no stream) it both publishes and subscribes to, e.g. notify's live push."""

    @property
    def stream(self) -> StreamSpec:
        """The one stream this service publishes to."""
        (owned,) = (spec for spec in STREAMS if spec.owner == self.name)
        return owned

    @property
    def consumers(self) -> tuple[ConsumerSpec, ...]:
        """The durable consumers this service runs."""
        return tuple(spec for spec in CONSUMERS if spec.service == self.name)


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("users"),
    ServiceSpec("orders"),
    # Live push fans notifications out between notify processes over core NATS.
    ServiceSpec("notify", core_subjects=(f"{LIVE_NOTIFICATIONS}.>",)),
)

SERVICE_NAMES: tuple[str, ...] = tuple(spec.name for spec in SERVICES)
"""Every service's name, in the order of ``SERVICES``."""


def service(name: str) -> ServiceSpec:
    """The declaration of service ``name``.

    Raises:
        LookupError: No such service is declared.
    """
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise LookupError(f"no service {name!r} is declared (known: {', '.join(SERVICE_NAMES)})")


def _check_topology() -> None:
    """Every stream but the dead letters' and every consumer belongs to a declared service."""
    owners = [spec.owner for spec in STREAMS if spec.owner != "*"]
    if sorted(owners) != sorted(SERVICE_NAMES):
        raise RuntimeError(f"each service owns exactly one stream: streams are owned by {owners}")
    if strays := {spec.durable for spec in CONSUMERS if spec.service not in SERVICE_NAMES}:
        raise RuntimeError(f"consumers of undeclared services: {sorted(strays)}")


_check_topology()
