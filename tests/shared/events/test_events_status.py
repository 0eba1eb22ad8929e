"""``events status``'s JetStream part: each consumer's pending, ack-pending, redelivered and dead-lettered counts."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from nats.js.errors import NotFoundError

from shared.events.status import ConsumerState, StreamState, jetstream_status
from shared.events.streams import consumer, dead_letter_subject, ensure_consumer
from shared.events.topology import SERVICE_NAMES, service

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext


async def test_every_count_of_a_consumer_is_its_own(jetstream: JetStreamContext) -> None:
    spec = consumer("notify", "order-notifications")
    await ensure_consumer(jetstream, spec)
    for number in range(5):
        await jetstream.publish(f"orders.order.placed.{number}", b"{}")
    for number in range(2):  # two dead letters of this consumer, one of another
        await jetstream.publish(dead_letter_subject(spec.stream, spec.durable), f"{number}".encode())
    await jetstream.publish(dead_letter_subject("USERS", "notify-users-replica"), b"x")
    subscription = await jetstream.pull_subscribe_bind(spec.durable, stream=spec.stream)
    first = await subscription.fetch(5, timeout=5)  # all 5 delivered
    assert len(first) == 5
    await first[0].ack()
    await first[1].nak()  # handed back at once: delivered again below
    # The only message left to hand out is the one handed back: a fetch sent before the server has
    # handled the nak (a plain publish) waits for it instead of taking a new message in its place.
    again = await subscription.fetch(1, timeout=5)
    assert again[0].metadata.sequence.stream == first[1].metadata.sequence.stream
    assert again[0].metadata.num_delivered == 2
    for number in range(5, 7):  # 2 not delivered yet
        await jetstream.publish(f"orders.order.placed.{number}", b"{}")

    stream, consumers = await jetstream_status(jetstream, "notify")
    assert stream == StreamState("NOTIFY", 0, 0)
    states = {state.durable: state for state in consumers}
    assert list(states) == [spec.durable for spec in service("notify").consumers]
    assert states[spec.durable] == ConsumerState(
        spec.durable, "ORDERS", pending=2, ack_pending=4, redelivered=1, dead_lettered=2
    )
    assert states["notify-users-replica"] == ConsumerState(
        "notify-users-replica", "USERS", 0, 0, 0, dead_lettered=1, exists=False
    )
    assert states[spec.durable].line() == (
        "consumer notify-order-notifications (ORDERS): pending 2, ack pending 4, redelivered 1, dead-lettered 2"
    )
    assert states["notify-users-replica"].line().endswith("not created yet (the worker creates it)")
    await subscription.unsubscribe()


async def test_each_service_shows_its_own_stream_and_consumers(jetstream: JetStreamContext) -> None:
    await jetstream.publish("orders.order.paid.1", b"{}")
    for name in SERVICE_NAMES:
        stream, consumers = await jetstream_status(jetstream, name)
        assert stream.name == service(name).stream.name
        assert stream.messages == (1 if name == "orders" else 0)
        assert [state.durable for state in consumers] == [spec.durable for spec in service(name).consumers]


async def test_a_stream_not_created_yet_is_said_so(jetstream: JetStreamContext) -> None:
    with contextlib.suppress(NotFoundError):
        await jetstream.delete_stream("USERS")
    with contextlib.suppress(NotFoundError):
        await jetstream.delete_stream("DLQ")
    stream, consumers = await jetstream_status(jetstream, "users")
    assert stream == StreamState("USERS", 0, 0, exists=False)
    assert stream.line() == "stream USERS: not created yet (the worker creates it)"
    assert consumers == []
