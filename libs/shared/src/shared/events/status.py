"""What ``<service> events status`` shows beside the outbox: the service's stream and consumers in JetStream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js.errors import NotFoundError

from shared.events.streams import DLQ_STREAM, dead_letter_subject
from shared.events.topology import service

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = ("ConsumerState", "StreamState", "jetstream_status")


@dataclass(frozen=True)
class StreamState:
    """The stream a service publishes to."""

    name: str
    messages: int
    last_sequence: int
    exists: bool = True

    def line(self) -> str:
        """One line for a person."""
        if not self.exists:
            return f"stream {self.name}: not created yet (the worker creates it)"
        return f"stream {self.name}: {self.messages} messages, last sequence {self.last_sequence}"


@dataclass(frozen=True)
class ConsumerState:
    """One durable consumer of the service, as JetStream counts it, and its dead letters."""

    durable: str
    stream: str
    pending: int
    """Messages not delivered to it yet (``num_pending``)."""
    ack_pending: int
    """Delivered and not acknowledged yet: being handled, or waiting for a redelivery (``num_ack_pending``)."""
    redelivered: int
    """Messages delivered more than once and not acknowledged yet (``num_redelivered``)."""
    dead_lettered: int
    """Messages it gave up on, waiting in the dead-letter stream (``dlq.<stream>.<durable>``)."""
    exists: bool = True

    def line(self) -> str:
        """One line for a person."""
        if not self.exists:
            return f"consumer {self.durable} ({self.stream}): not created yet (the worker creates it)"
        return (
            f"consumer {self.durable} ({self.stream}): pending {self.pending}, ack pending {self.ack_pending}, "
            f"redelivered {self.redelivered}, dead-lettered {self.dead_lettered}"
        )


async def jetstream_status(js: JetStreamContext, name: str) -> tuple[StreamState, list[ConsumerState]]:
    """The stream service ``name`` publishes to and each of its declared consumers, read from JetStream.

    Args:
        js: A JetStream context of the service's own NATS user (it may read its stream, its
            consumers and the dead-letter stream).
        name: The service.
    """
    declared = service(name)
    try:
        info = await js.stream_info(declared.stream.name)
        stream = StreamState(declared.stream.name, info.state.messages, info.state.last_seq)
    except NotFoundError:
        stream = StreamState(declared.stream.name, 0, 0, exists=False)
    try:
        subjects = (await js.stream_info(DLQ_STREAM, subjects_filter="dlq.>")).state.subjects or {}
    except NotFoundError:
        subjects = {}
    consumers = []
    for spec in declared.consumers:
        dead = int(subjects.get(dead_letter_subject(spec.stream, spec.durable), 0))
        try:
            consumer = await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            consumers.append(ConsumerState(spec.durable, spec.stream, 0, 0, 0, dead, exists=False))
            continue
        consumers.append(
            ConsumerState(
                spec.durable,
                spec.stream,
                pending=consumer.num_pending or 0,
                ack_pending=consumer.num_ack_pending or 0,
                redelivered=consumer.num_redelivered or 0,
                dead_lettered=dead,
            )
        )
    return stream, consumers
