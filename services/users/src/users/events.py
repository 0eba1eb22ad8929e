"""Events users publishes about accounts. users consumes none (it is the source of identities)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from shared.events.consumer import EventHandlers
from shared.events.contracts import EventPayload, UserDeactivated, UserRegistered, UserUpdated

if TYPE_CHECKING:
    from users.models import User

__all__ = ("HANDLERS", "UserEventKind", "user_event")

UserEventKind = Literal["registered", "updated", "deactivated"]

HANDLERS = EventHandlers()
"""Empty: nothing users keeps depends on another service."""


def user_event(kind: UserEventKind, user: User) -> EventPayload:
    """The payload of ``users.user.<kind>`` for the account as it is now."""
    role: Literal["user", "admin"] = "admin" if user.role == "admin" else "user"
    valid_after = user.tokens_valid_after
    if kind == "registered":
        return UserRegistered(
            user_id=user.id,
            email=user.email,
            display_name=user.display_name,
            role=role,
            tokens_valid_after=valid_after,
        )
    if kind == "updated":
        return UserUpdated(
            user_id=user.id,
            email=user.email,
            display_name=user.display_name,
            role=role,
            is_active=user.is_active,
            tokens_valid_after=valid_after,
        )
    return UserDeactivated(user_id=user.id, tokens_valid_after=valid_after)
