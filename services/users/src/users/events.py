"""Events users publishes about accounts. users consumes none (it is the source of identities)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from shared.events.contracts import EventPayload, UserDeactivated, UserRegistered, UserUpdated

if TYPE_CHECKING:
    from users.models import User

__all__ = ("UserEventKind", "user_event")

UserEventKind = Literal["registered", "updated", "deactivated"]


def user_event(kind: UserEventKind, user: User) -> EventPayload:
    """The payload of ``users.user.<kind>`` for the account as it is now."""
    if kind == "deactivated":
        return UserDeactivated(user_id=user.id, tokens_valid_after=user.tokens_valid_after)
    state = UserUpdated(
        user_id=user.id,
        email=user.email,
        display_name=user.display_name,
        role="admin" if user.role == "admin" else "user",
        is_active=user.is_active,
        tokens_valid_after=user.tokens_valid_after,
    )
    if kind == "updated":
        return state
    # A registration carries the same state but the active flag (a new account is active).
    fields: dict[str, Any] = {name: getattr(state, name) for name in UserRegistered.__struct_fields__}
    return UserRegistered(**fields)
