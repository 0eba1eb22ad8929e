"""What notify does with the events it consumes: keep the users replica, and notify.

Two consumers, as declared in ``shared.events.streams``: ``notify-users-replica`` (every
``users.user.*``: the contact replica, and the welcome on registration) and
``notify-order-notifications`` (every ``orders.order.*``). Handlers never commit; what must wait
for the commit (the live push) is left in ``context.after_commit``; ``notify.notification.created``
goes into ``context.outbox``, in the event's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from notify.service import ContactReplica, Notifier
from notify.templates import money
from shared.events.consumer import EventContext, EventHandlers
from shared.events.contracts import (
    OrderCancelled,
    OrderDelivered,
    OrderPaid,
    OrderPlaced,
    OrderShipped,
    UserDeactivated,
    UserRegistered,
    UserUpdated,
)

if TYPE_CHECKING:
    import uuid
    from collections.abc import Mapping

    from notify.live import LivePublisher
    from notify.schemas import NotificationKind
    from notify.templates import NotificationTemplates
    from notify.tokens import UnsubscribeLinks

__all__ = ("NotificationPipeline", "order_notification_handlers", "order_reference", "users_replica_handlers")


@dataclass(frozen=True)
class NotificationPipeline:
    """What the handlers need beyond the event, its transaction and the outbox (all three in the context)."""

    templates: NotificationTemplates
    """The words of each kind."""
    links: UnsubscribeLinks
    """Makes each email's unsubscribe link."""
    live: LivePublisher
    """Pushes a stored notification to the API processes once it is committed."""

    async def notify(
        self, context: EventContext, user_id: uuid.UUID, kind: NotificationKind, values: Mapping[str, Any]
    ) -> None:
        """Notify ``user_id`` of the event in ``context``, and push it live after the commit."""
        notifier = Notifier(session=context.session, templates=self.templates, outbox=context.outbox, links=self.links)
        stored = await notifier.notify(user_id, kind, values, source=context.envelope)
        if stored is not None:
            context.after_commit.append(partial(self.live.publish, user_id, stored))


def order_reference(order_id: uuid.UUID) -> str:
    """How a notification names an order: the random end of its UUIDv7 (the start is a timestamp)."""
    return order_id.hex[-8:].upper()


async def _keep_contact(context: EventContext, event: UserRegistered | UserUpdated, *, active: bool) -> None:
    """The replica takes the address, name and active flag ``event`` carries, unless it holds a newer state."""
    await ContactReplica(context.session).apply(
        event.user_id,
        sequence=context.envelope.sequence,
        email=event.email,
        name=event.display_name,
        active=active,
        tokens_valid_after=event.tokens_valid_after,
    )


def users_replica_handlers(pipeline: NotificationPipeline) -> EventHandlers:
    """The ``notify-users-replica`` consumer: contacts from users' events, and the welcome."""
    handlers = EventHandlers()

    @handlers.on(UserRegistered)
    async def keep_registered_contact_and_welcome(event: UserRegistered, context: EventContext) -> None:
        """A new account: keep its address, and welcome it (unless a newer event deactivated it)."""
        await _keep_contact(context, event, active=True)
        await pipeline.notify(context, event.user_id, "welcome", {})

    @handlers.on(UserUpdated)
    async def keep_updated_contact(event: UserUpdated, context: EventContext) -> None:
        """A changed account: its new address, name and active flag."""
        await _keep_contact(context, event, active=event.is_active)

    @handlers.on(UserDeactivated)
    async def keep_deactivation(event: UserDeactivated, context: EventContext) -> None:
        """A deactivated account gets nothing more, in the app or by email."""
        await ContactReplica(context.session).apply(
            event.user_id,
            sequence=context.envelope.sequence,
            active=False,
            tokens_valid_after=event.tokens_valid_after,
        )

    return handlers


def order_notification_handlers(pipeline: NotificationPipeline) -> EventHandlers:
    """The ``notify-order-notifications`` consumer: one notification per order event."""
    handlers = EventHandlers()

    @handlers.on(OrderPlaced)
    async def order_placed(event: OrderPlaced, context: EventContext) -> None:
        """The order and its reserved items."""
        values = {
            "order": order_reference(event.order_id),
            "items": sum(line.quantity for line in event.lines),
            "total": money(event.total, event.currency),
        }
        await pipeline.notify(context, event.user_id, "order_placed", values)

    @handlers.on(OrderPaid)
    async def order_paid(event: OrderPaid, context: EventContext) -> None:
        """The payment, with its amount."""
        values = {"order": order_reference(event.order_id), "total": money(event.total, event.currency)}
        await pipeline.notify(context, event.user_id, "order_paid", values)

    @handlers.on(OrderShipped)
    async def order_shipped(event: OrderShipped, context: EventContext) -> None:
        """The order left the warehouse."""
        await pipeline.notify(context, event.user_id, "order_shipped", {"order": order_reference(event.order_id)})

    @handlers.on(OrderDelivered)
    async def order_delivered(event: OrderDelivered, context: EventContext) -> None:
        """The order arrived."""
        await pipeline.notify(context, event.user_id, "order_delivered", {"order": order_reference(event.order_id)})

    @handlers.on(OrderCancelled)
    async def order_cancelled(event: OrderCancelled, context: EventContext) -> None:
        """The order was cancelled, and why."""
        values = {"order": order_reference(event.order_id), "reason": event.reason}
        await pipeline.notify(context, event.user_id, "order_cancelled", values)

    return handlers
