"""Per-service NATS users, each allowed exactly what its role in the topology needs.

Generated from ``STREAMS`` and ``CONSUMERS``, so the local stack, the tests and Kubernetes all run
with the same rules: a service publishes only to its own stream and to its consumers' dead-letter
subjects, manages only its own stream and consumers, and receives replies only on its own inbox.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from shared.events.streams import CONSUMERS, DLQ_STREAM, LIVE_NOTIFICATIONS, STREAMS, dead_letter_subject

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ("SERVICES", "inbox_prefix", "nats_authorization", "service_permissions")

SERVICES = ("users", "orders", "notify")


def inbox_prefix(service: str) -> str:
    """The reply-subject prefix a service's client uses, so it can be allowed only its own replies."""
    return f"_INBOX_{service}"


def service_permissions(service: str) -> dict[str, dict[str, list[str]]]:
    """The publish and subscribe allow-lists of one service."""
    api = "$JS.API"
    owned = [spec for spec in STREAMS if spec.owner == service]
    consumers = [spec for spec in CONSUMERS if spec.service == service]
    publish = [subject for spec in owned for subject in spec.subjects]
    publish.append(f"{api}.INFO")
    for stream in [*(spec.name for spec in owned), DLQ_STREAM]:
        publish += [f"{api}.STREAM.CREATE.{stream}", f"{api}.STREAM.UPDATE.{stream}", f"{api}.STREAM.INFO.{stream}"]
    publish += [f"{api}.STREAM.MSG.GET.{DLQ_STREAM}", f"{api}.STREAM.MSG.DELETE.{DLQ_STREAM}"]
    for consumer in consumers:
        stream, durable = consumer.stream, consumer.durable
        publish += [
            f"{api}.STREAM.INFO.{stream}",
            f"{api}.CONSUMER.CREATE.{stream}.{durable}",
            f"{api}.CONSUMER.CREATE.{stream}.{durable}.>",
            f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"{api}.CONSUMER.INFO.{stream}.{durable}",
            f"{api}.CONSUMER.MSG.NEXT.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>",
            dead_letter_subject(stream, durable),
        ]
    subscribe = [f"{inbox_prefix(service)}.>"]
    if service == "notify":  # live push fans out over core NATS between notify processes
        publish.append(f"{LIVE_NOTIFICATIONS}.>")
        subscribe.append(f"{LIVE_NOTIFICATIONS}.>")
    return {"publish": {"allow": sorted(set(publish))}, "subscribe": {"allow": subscribe}}


def nats_authorization(passwords: Mapping[str, str]) -> str:
    """The ``authorization`` block of a nats-server config with one user per service.

    Args:
        passwords: Each service's password (plain, or a bcrypt hash as ``nats-server`` accepts).
    """
    users = [
        {"user": service, "password": passwords[service], "permissions": service_permissions(service)}
        for service in SERVICES
        if service in passwords
    ]
    return "authorization {\n  users: " + json.dumps(users, indent=2).replace("\n", "\n  ") + "\n}\n"
