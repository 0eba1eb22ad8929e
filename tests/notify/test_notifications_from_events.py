"""Events become notifications: once each, never for a deactivated user, pushed live only after the commit."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import msgspec
from nats.js.errors import NotFoundError

from devtools.testing import eventually
from notify.events import order_notification_handlers, order_reference, users_replica_handlers
from notify.models import EVENT_TABLES, OUTBOX, EmailDelivery, Notification
from notify.schemas import NotificationOut
from shared.events.consumer import EventConsumer, EventContext, EventHandlers
from shared.events.contracts import (
    NotificationCreated,
    OrderCancelled,
    OrderDelivered,
    OrderPaid,
    OrderPlaced,
    OrderShipped,
    UserDeactivated,
    UserUpdated,
    decode_event,
    new_envelope,
)
from shared.events.outbox import Outbox
from shared.events.streams import LIVE_NOTIFICATIONS, ConsumerSpec, consumer
from tests.notify.helpers import (
    Publisher,
    RunningWorker,
    apply_directly,
    contact_of,
    count,
    deliveries_of,
    notifications_of,
    outbox_types,
    placed,
    registered,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from notify.events import NotificationPipeline
    from shared.events.contracts import Envelope, EventPayload

USERS_REPLICA = consumer("notify", "users-replica")
ORDER_NOTIFICATIONS = consumer("notify", "order-notifications")


async def drained(js: JetStreamContext, *specs: ConsumerSpec) -> bool:
    for spec in specs:
        try:
            info = await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            return False
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def delivered_once(js: JetStreamContext, spec: ConsumerSpec) -> bool:
    try:
        info = await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        return False
    return bool(info.delivered.stream_seq)


async def count_is(engine: AsyncEngine, model: type[object], expected: int) -> bool:
    return await count(engine, model) == expected


async def test_each_event_kind_makes_exactly_one_notification_even_when_delivered_twice(
    worker: RunningWorker, publisher: Publisher, jetstream: JetStreamContext, engine: AsyncEngine
) -> None:
    user_id = uuid.uuid4()
    welcome = await publisher.publish(registered(user_id))
    await eventually(lambda: count_is(engine, Notification, 1), what="the welcome")
    order = placed(user_id)
    events = [
        welcome,
        await publisher.publish(order),
        await publisher.publish(OrderPaid(order_id=order.order_id, user_id=user_id, total=2500, currency="EUR")),
        await publisher.publish(OrderShipped(order_id=order.order_id, user_id=user_id)),
        await publisher.publish(OrderDelivered(order_id=order.order_id, user_id=user_id)),
        await publisher.publish(OrderCancelled(order_id=order.order_id, user_id=user_id, reason="customer")),
    ]
    for envelope in events:  # every event again, under another message id: JetStream cannot drop it
        await publisher.again(envelope, message_id=f"again-{envelope.id}")

    await eventually(lambda: count_is(engine, Notification, 6), what="six notifications")
    await eventually(lambda: drained(jetstream, USERS_REPLICA, ORDER_NOTIFICATIONS), what="both consumers drained")

    stored = await notifications_of(engine, user_id)
    assert sorted(notification.kind for notification in stored) == sorted(
        ["welcome", "order_placed", "order_paid", "order_shipped", "order_delivered", "order_cancelled"]
    )
    assert {notification.source_event_id for notification in stored} == {uuid.UUID(event.id) for event in events}
    assert len(await deliveries_of(engine, user_id)) == 6
    assert await outbox_types(engine) == ["notify.notification.created"] * 6


async def test_running_a_handler_again_with_the_same_event_stores_nothing_new(
    pipeline: NotificationPipeline, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    # The inbox normally stops a redelivered event; here it is bypassed, so the unique keys must hold.
    user_id = uuid.uuid4()
    await apply_directly(sessions, users_replica_handlers(pipeline), registered(user_id))
    handlers = order_notification_handlers(pipeline)
    payload = placed(user_id)
    envelope = new_envelope(payload, source="orders", sequence=1)

    first = await apply_directly(sessions, handlers, payload, envelope=envelope)
    second = await apply_directly(sessions, handlers, payload, envelope=envelope)

    assert await count(engine, Notification, Notification.kind == "order_placed") == 1
    assert await count(engine, EmailDelivery, EmailDelivery.kind == "order_placed") == 1
    assert await outbox_types(engine) == ["notify.notification.created"] * 2  # the welcome and the order
    assert len(first.after_commit) == 1
    assert second.after_commit == []  # nothing new, so nothing to push


async def test_order_notification_words_name_the_order_and_its_amount(
    pipeline: NotificationPipeline, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    user_id = uuid.uuid4()
    await apply_directly(sessions, users_replica_handlers(pipeline), registered(user_id, name="Grace"))
    order = placed(user_id, total=1250, quantity=3)
    await apply_directly(sessions, order_notification_handlers(pipeline), order)
    cancelled = OrderCancelled(order_id=order.order_id, user_id=user_id, reason="payment_timeout")
    await apply_directly(sessions, order_notification_handlers(pipeline), cancelled)

    welcome, placed_one, cancelled_one = await notifications_of(engine, user_id)
    reference = order_reference(order.order_id)
    assert welcome.title == "Welcome to Relay Shop, Grace"
    assert placed_one.title == f"Order {reference} placed"
    assert "reserved 3 items for you, 12.50 EUR in all" in placed_one.body
    assert cancelled_one.title == f"Order {reference} was cancelled"
    assert "because payment did not arrive in time" in cancelled_one.body
    welcome_email = (await deliveries_of(engine, user_id))[0]
    assert welcome_email.subject == welcome.title
    assert welcome_email.body.startswith("Hello Grace,\n")
    assert welcome_email.unsubscribe_url.startswith("http://notify.test/notifications/unsubscribe?token=")
    assert welcome_email.unsubscribe_url in welcome_email.body


async def test_a_display_name_cannot_add_lines_to_a_title(
    pipeline: NotificationPipeline, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    user_id = uuid.uuid4()
    name = "Mallory\r\nBcc: everyone@example.com"
    await apply_directly(sessions, users_replica_handlers(pipeline), registered(user_id, name=name))
    [welcome] = await notifications_of(engine, user_id)
    assert welcome.title == "Welcome to Relay Shop, Mallory Bcc: everyone@example.com"


class RecordingOutbox(Outbox):
    """notify's outbox tables, remembering what was added through this one object."""

    def __init__(self) -> None:
        super().__init__(EVENT_TABLES, source="notify")
        self.added: list[EventPayload] = []

    async def add(self, session: AsyncSession, payload: EventPayload, *, sequence: int) -> Envelope:
        self.added.append(payload)
        return await super().add(session, payload, sequence=sequence)


async def test_handlers_add_their_events_through_the_outbox_in_their_context(
    pipeline: NotificationPipeline, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    # The consumer hands every handler the service's one outbox; nothing else may reach one.
    outbox = RecordingOutbox()
    user_id = uuid.uuid4()
    await apply_directly(sessions, users_replica_handlers(pipeline), registered(user_id), outbox=outbox)
    await apply_directly(sessions, order_notification_handlers(pipeline), placed(user_id), outbox=outbox)

    stored = await notifications_of(engine, user_id)
    assert outbox.added == [
        NotificationCreated(notification_id=row.id, user_id=user_id, kind=row.kind, title=row.title) for row in stored
    ]
    assert await outbox_types(engine) == ["notify.notification.created"] * 2


async def test_notification_created_events_leave_through_the_outbox(
    worker: RunningWorker, publisher: Publisher, jetstream: JetStreamContext, engine: AsyncEngine
) -> None:
    user_id = uuid.uuid4()
    subscription = await jetstream.subscribe("notify.notification.created", ordered_consumer=True)
    await publisher.publish(registered(user_id))
    message = await subscription.next_msg(timeout=20)
    await subscription.unsubscribe()
    event = decode_event(message.data)
    [stored] = await notifications_of(engine, user_id)
    assert event.envelope.source == "notify"
    assert event.payload == NotificationCreated(
        notification_id=stored.id, user_id=user_id, kind="welcome", title=stored.title
    )


async def test_replica_keeps_the_newest_state_when_events_arrive_out_of_order(
    pipeline: NotificationPipeline, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    handlers = users_replica_handlers(pipeline)
    user_id = uuid.uuid4()
    newer = UserUpdated(user_id=user_id, email="new@example.com", display_name="New", role="user", is_active=True)
    await apply_directly(sessions, handlers, newer, sequence=2)
    await apply_directly(sessions, handlers, registered(user_id, email="old@example.com", name="Old"), sequence=1)

    contact = await contact_of(engine, user_id)
    assert contact is not None
    assert (contact.email, contact.display_name, contact.is_active, contact.sequence) == (
        "new@example.com",
        "New",
        True,
        2,
    )


async def test_deactivated_user_gets_no_notification_and_no_email(
    pipeline: NotificationPipeline, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    users, orders = users_replica_handlers(pipeline), order_notification_handlers(pipeline)
    user_id = uuid.uuid4()
    await apply_directly(sessions, users, registered(user_id), sequence=1)
    await apply_directly(sessions, users, UserDeactivated(user_id=user_id), sequence=2)
    order = placed(user_id)
    for payload in (order, OrderCancelled(order_id=order.order_id, user_id=user_id, reason="user_deactivated")):
        context = await apply_directly(sessions, orders, payload)
        assert context.after_commit == []

    assert [notification.kind for notification in await notifications_of(engine, user_id)] == ["welcome"]
    assert [delivery.kind for delivery in await deliveries_of(engine, user_id)] == ["welcome"]


async def test_deactivation_arriving_before_the_registration_means_no_welcome(
    pipeline: NotificationPipeline, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    handlers = users_replica_handlers(pipeline)
    user_id = uuid.uuid4()
    await apply_directly(sessions, handlers, UserDeactivated(user_id=user_id), sequence=2)
    await apply_directly(sessions, handlers, registered(user_id), sequence=1)

    contact = await contact_of(engine, user_id)
    assert contact is not None
    assert contact.is_active is False
    assert await notifications_of(engine, user_id) == []
    assert await deliveries_of(engine, user_id) == []


async def test_order_event_arriving_before_the_user_is_retried_until_the_user_is_known(
    worker: RunningWorker, publisher: Publisher, jetstream: JetStreamContext, engine: AsyncEngine
) -> None:
    user_id = uuid.uuid4()
    await publisher.publish(placed(user_id))
    await eventually(lambda: delivered_once(jetstream, ORDER_NOTIFICATIONS), what="the order event tried")
    await publisher.publish(registered(user_id))
    await eventually(lambda: count_is(engine, Notification, 2), what="welcome and order notifications")
    kinds = sorted(notification.kind for notification in await notifications_of(engine, user_id))
    assert kinds == ["order_placed", "welcome"]


async def test_live_push_happens_only_after_the_commit(
    pipeline: NotificationPipeline,
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    jetstream: JetStreamContext,
    nats_client: NatsClient,
    publisher: Publisher,
) -> None:
    pushed: list[NotificationOut] = []

    async def remember(message: Msg) -> None:
        pushed.append(msgspec.json.decode(message.data, type=NotificationOut))

    live = await nats_client.subscribe(f"{LIVE_NOTIFICATIONS}.>", cb=remember)
    await nats_client.flush()
    user_id = uuid.uuid4()
    await apply_directly(sessions, users_replica_handlers(pipeline), registered(user_id))
    await eventually(lambda: _at_least(pushed, 1), what="the welcome pushed")

    # The first attempt stores the notification, then fails before the commit: nothing may be pushed.
    order_handlers = order_notification_handlers(pipeline)
    failing = EventHandlers()
    attempts: list[int] = []

    @failing.on(OrderPlaced)
    async def store_then_fail_once(event: OrderPlaced, context: EventContext) -> None:
        handler = order_handlers.get(OrderPlaced)
        assert handler is not None
        await handler(event, context)
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("the database went away before the commit")

    spec = ConsumerSpec("notify", "order-notifications", "ORDERS", ("orders.order.>",), backoff_seconds=(0.1,))
    runner = EventConsumer(
        spec=spec,
        handlers=failing,
        session_maker=sessions,
        js=jetstream,
        outbox=OUTBOX,
        fetch_timeout=0.3,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await publisher.publish(placed(user_id))
        await eventually(lambda: _at_least(pushed, 2), what="the order notification pushed")
    finally:
        stop.set()
        await task
        await live.unsubscribe()
    assert len(attempts) == 2
    assert [notification.kind for notification in pushed] == ["welcome", "order_placed"]
    assert await count(engine, Notification, Notification.kind == "order_placed") == 1


async def _at_least(items: list[NotificationOut], expected: int) -> bool:
    return len(items) >= expected
