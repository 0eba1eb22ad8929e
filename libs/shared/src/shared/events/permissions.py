"""Per-service NATS users, each allowed exactly what its role in the topology needs.

Generated from the declared services (``shared.events.topology``), their streams and consumers, so
the local stack, the tests and Kubernetes all run with the same rules: a service publishes only to
its own stream and to its consumers' dead-letter subjects, manages only its own stream and
consumers, receives replies only on its own inbox, and uses only the core subjects it declares.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from shared.events.streams import DLQ_STREAM, dead_letter_subject
from shared.events.topology import SERVICES, service

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ("inbox_prefix", "nats_authorization", "service_permissions")


def inbox_prefix(service: str) -> str:
    """The reply-subject prefix a service's client uses, so it can be allowed only its own replies."""
    return f"_INBOX_{service}"


def service_permissions(name: str) -> dict[str, dict[str, list[str]]]:
    """The publish and subscribe allow-lists of one service.

    Raises:
        LookupError: No such service is declared.
    """
    api = "$JS.API"
    spec = service(name)
    publish = [*spec.stream.subjects, f"{api}.INFO"]
    for stream in (spec.stream.name, DLQ_STREAM):
        publish += [f"{api}.STREAM.CREATE.{stream}", f"{api}.STREAM.UPDATE.{stream}", f"{api}.STREAM.INFO.{stream}"]
    publish += [f"{api}.STREAM.MSG.GET.{DLQ_STREAM}", f"{api}.STREAM.MSG.DELETE.{DLQ_STREAM}"]
    for consumer in spec.consumers:
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
    publish += spec.core_subjects
    subscribe = [f"{inbox_prefix(name)}.>", *spec.core_subjects]
    return {"publish": {"allow": sorted(set(publish))}, "subscribe": {"allow": subscribe}}


def nats_authorization(passwords: Mapping[str, str]) -> str:
    """The ``authorization`` block of a nats-server config with one user per service.

    Args:
        passwords: Each service's password (plain, or a bcrypt hash as ``nats-server`` accepts).
    """
    users = [
        {"user": spec.name, "password": passwords[spec.name], "permissions": service_permissions(spec.name)}
        for spec in SERVICES
        if spec.name in passwords
    ]
    return "authorization {\n  users: " + json.dumps(users, indent=2).replace("\n", "\n  ") + "\n}\n"
