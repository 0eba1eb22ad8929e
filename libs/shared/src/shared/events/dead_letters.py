"""Dead letters: what consumers gave up on, kept in the ``DLQ`` stream until replayed or discarded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js.errors import NotFoundError

from shared.events.contracts import UndecodableEventError, decode_event
from shared.events.streams import DLQ_STREAM

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from shared.events.consumer import EventConsumer

__all__ = ("DeadLetter", "DeadLetters")


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter and why it died."""

    sequence: int
    """Its sequence in the DLQ stream: the handle for replay and discard."""
    consumer: str
    original_stream: str
    original_subject: str
    original_sequence: int
    attempts: int
    error: str
    data: bytes

    @property
    def event_id(self) -> str | None:
        """The event's id, when the message is an event at all."""
        try:
            return decode_event(self.data).envelope.id
        except UndecodableEventError:
            return None


class DeadLetters:
    """List, replay and discard one service's dead letters."""

    def __init__(self, js: JetStreamContext, *, service: str) -> None:
        self.js = js
        self.service = service

    async def list(self) -> list[DeadLetter]:
        """Every dead letter of this service's consumers, oldest first."""
        try:
            state = (await self.js.stream_info(DLQ_STREAM)).state
        except NotFoundError:
            return []
        if not state.messages:
            return []
        letters = []
        for sequence in range(state.first_seq, state.last_seq + 1):
            letter = await self.get(sequence)
            if letter is not None:
                letters.append(letter)
        return letters

    async def get(self, sequence: int) -> DeadLetter | None:
        """One dead letter of this service, or None (deleted, or another service's)."""
        try:
            message = await self.js.get_msg(DLQ_STREAM, seq=sequence)
        except NotFoundError:
            return None
        headers = message.headers or {}
        consumer = headers.get("Relay-Consumer", "")
        if not consumer.startswith(f"{self.service}-"):
            return None
        return DeadLetter(
            sequence=sequence,
            consumer=consumer,
            original_stream=headers.get("Relay-Original-Stream", ""),
            original_subject=headers.get("Relay-Original-Subject", ""),
            original_sequence=int(headers.get("Relay-Original-Sequence", "0")),
            attempts=int(headers.get("Relay-Attempts", "0")),
            error=headers.get("Relay-Error", ""),
            data=message.data or b"",
        )

    async def replay(self, sequence: int, consumer: EventConsumer) -> str:
        """Run a dead letter through its consumer's handler again, here and now.

        The inbox still guards it: an event that was applied after all is skipped. On success the
        dead letter is deleted; on failure it stays and the error propagates.

        Raises:
            ValueError: No such dead letter for this consumer, or it cannot be decoded.
        """
        letter = await self.get(sequence)
        if letter is None or letter.consumer != consumer.spec.durable:
            raise ValueError(f"no dead letter {sequence} for {consumer.spec.durable}")
        try:
            decoded = decode_event(letter.data)
        except UndecodableEventError as error:
            raise ValueError(f"dead letter {sequence} cannot be decoded: {error}") from error
        handler = consumer.handlers.get(type(decoded.payload))
        if handler is None:
            raise ValueError(f"{consumer.spec.durable} has no handler for {decoded.envelope.type}")
        outcome = await consumer.apply(decoded, handler)
        await self.js.delete_msg(DLQ_STREAM, sequence)
        return outcome

    async def discard(self, sequence: int) -> bool:
        """Delete one of this service's dead letters; False if there was none."""
        if await self.get(sequence) is None:
            return False
        return bool(await self.js.delete_msg(DLQ_STREAM, sequence))
