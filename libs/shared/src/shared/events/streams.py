"""The event topology, declared once: streams, who publishes where, and every durable consumer.

Workers create or update these idempotently at start, and the NATS permissions of each service
(local stack and Kubernetes alike) are generated from the same declarations.

The declarations are read by settings (users' default token audiences are every service's name),
so granian's main process imports this module: the NATS client and the logger are imported by the
two functions that talk to NATS, not here (15 MiB of that process otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = (
    "CONSUMERS",
    "LIVE_NOTIFICATIONS",
    "DLQ_STREAM",
    "STREAMS",
    "ConsumerSpec",
    "StreamSpec",
    "dead_letter_subject",
    "ensure_consumer",
    "consumer",
    "ensure_streams",
)

_STREAM_CONFIG_CHANGED = 10058


@dataclass(frozen=True)
class StreamSpec:
    """One JetStream stream, owned (published to) by one service."""

    name: str
    subjects: tuple[str, ...]
    owner: str
    """The service that publishes to it; ``*`` for the dead-letter stream every service writes."""


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer: one per (consuming service, purpose)."""

    service: str
    purpose: str
    stream: str
    filter_subjects: tuple[str, ...]
    max_deliver: int = 5
    ack_wait_seconds: float = 30.0
    backoff_seconds: tuple[float, ...] = field(default=(1.0, 5.0, 15.0, 30.0))
    """Delays before redelivery after a failed attempt (used with ``nak(delay=...)``)."""

    @property
    def durable(self) -> str:
        """The durable name, ``<service>-<purpose>``."""
        return f"{self.service}-{self.purpose}"

    def delay_after(self, attempt: int) -> float:
        """The delay before the next attempt, after ``attempt`` failed ones (1-based)."""
        return self.backoff_seconds[min(attempt, len(self.backoff_seconds)) - 1]


DLQ_STREAM = "DLQ"

LIVE_NOTIFICATIONS = "live.notify"
"""Core NATS subjects (no stream) ``live.notify.<user_id>`` that fan notifications out to every
notify process holding a Server-Sent Events connection of that user."""

STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("USERS", ("users.>",), owner="users"),
    StreamSpec("ORDERS", ("orders.>",), owner="orders"),
    StreamSpec("NOTIFY", ("notify.>",), owner="notify"),
    StreamSpec(DLQ_STREAM, ("dlq.>",), owner="*"),
)

CONSUMERS: tuple[ConsumerSpec, ...] = (
    ConsumerSpec("orders", "users-replica", "USERS", ("users.user.>",)),
    ConsumerSpec("notify", "users-replica", "USERS", ("users.user.>",)),
    ConsumerSpec("notify", "order-notifications", "ORDERS", ("orders.order.>",)),
)


def consumer(service: str, purpose: str) -> ConsumerSpec:
    """The declared consumer of ``service`` for ``purpose``.

    Raises:
        LookupError: No such consumer is declared: a typo, caught when the worker is built.
    """
    for spec in CONSUMERS:
        if spec.service == service and spec.purpose == purpose:
            return spec
    raise LookupError(f"{service} declares no consumer for {purpose!r}")


def dead_letter_subject(stream: str, durable: str) -> str:
    """Where a consumer's dead letters go: ``dlq.<stream>.<durable>``."""
    return f"dlq.{stream}.{durable}"


async def ensure_streams(
    js: JetStreamContext,
    *,
    duplicate_window_seconds: float,
    max_age_seconds: float,
    replicas: int = 1,
    names: tuple[str, ...] | None = None,
) -> None:
    """Create every stream, or update it when its configuration changed (idempotent)."""
    import structlog
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import BadRequestError

    for spec in STREAMS:
        if names is not None and spec.name not in names:
            continue
        config = StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            duplicate_window=duplicate_window_seconds,
            max_age=max_age_seconds,
            num_replicas=replicas,
        )
        try:
            await js.add_stream(config)
        except BadRequestError as error:
            if error.err_code != _STREAM_CONFIG_CHANGED:
                raise
            await js.update_stream(config)
            structlog.get_logger("shared.events").info("stream updated", stream=spec.name)


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create or update the durable consumer (``pull_subscribe`` alone would ignore a new config)."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    config = ConsumerConfig(
        durable_name=spec.durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait_seconds,
        max_deliver=spec.max_deliver + 1,  # the runner dead-letters itself on the last attempt
        filter_subjects=list(spec.filter_subjects),
        max_ack_pending=1000,
    )
    await js.add_consumer(spec.stream, config)
