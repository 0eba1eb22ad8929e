"""What orders does with users' events: keep its replica, and cancel a deactivated user's open orders."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orders.service import OrderService
from shared.events.consumer import EventContext, EventHandlers
from shared.events.contracts import UserDeactivated, UserRegistered, UserUpdated

if TYPE_CHECKING:
    from orders.settings import OrdersSettings

__all__ = ("users_replica_handlers",)


def users_replica_handlers(settings: OrdersSettings) -> EventHandlers:
    """Handlers of the ``orders-users-replica`` consumer."""
    # A deactivation locks the user's row, then their orders, then products (the lock order in
    # orders.stock): sharing a transaction with the batch's other events would take those while
    # holding the previous event's product locks, so each event gets a transaction of its own.
    handlers = EventHandlers(own_transactions=True)

    def orders(context: EventContext) -> OrderService:
        return OrderService(session=context.session, outbox=context.outbox, settings=settings)

    @handlers.on(UserRegistered)
    async def remember_registration(event: UserRegistered, context: EventContext) -> None:
        """A new user can order."""
        await orders(context).remember_user(
            event.user_id,
            email=event.email,
            is_active=True,
            sequence=context.envelope.sequence,
            tokens_valid_after=event.tokens_valid_after,
        )

    @handlers.on(UserUpdated)
    async def remember_update(event: UserUpdated, context: EventContext) -> None:
        """A changed email, a reactivation, or revoked access tokens reach the replica."""
        await orders(context).remember_user(
            event.user_id,
            email=event.email,
            is_active=event.is_active,
            sequence=context.envelope.sequence,
            tokens_valid_after=event.tokens_valid_after,
        )

    @handlers.on(UserDeactivated)
    async def cancel_open_orders(event: UserDeactivated, context: EventContext) -> None:
        """A deactivated user's open orders are cancelled and their stock returned."""
        service = orders(context)
        if await service.remember_user(
            event.user_id,
            email=None,
            is_active=False,
            sequence=context.envelope.sequence,
            tokens_valid_after=event.tokens_valid_after,
        ):
            await service.cancel_open_orders(event.user_id, reason="user_deactivated")

    return handlers
