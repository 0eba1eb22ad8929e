"""What the notify API accepts and answers: msgspec Structs, never models."""

from __future__ import annotations

import datetime
import typing
import uuid
from typing import Literal

import msgspec

from shared.pagination import Page

__all__ = (
    "KINDS",
    "ChannelChoice",
    "NotificationKind",
    "NotificationOut",
    "NotificationPage",
    "Preferences",
    "ReadAllOut",
    "UnsubscribeOut",
)

NotificationKind = Literal[
    "welcome", "order_placed", "order_paid", "order_shipped", "order_delivered", "order_cancelled"
]
KINDS: tuple[NotificationKind, ...] = typing.get_args(NotificationKind)


class NotificationOut(msgspec.Struct, frozen=True):
    """A notification as its owner sees it, in a page and on the live stream alike."""

    id: uuid.UUID
    kind: NotificationKind
    title: str
    body: str
    created_at: datetime.datetime
    read_at: datetime.datetime | None = None


class NotificationPage(Page[NotificationOut], frozen=True):
    """One page of the caller's notifications, newest first.

    ``total`` counts those the filter matches (all, or only the unread ones).
    """

    items: list[NotificationOut]
    unread: int
    """How many of the caller's notifications are unread, whatever the filter."""


class ReadAllOut(msgspec.Struct, frozen=True):
    """What marking everything read changed."""

    marked: int
    """How many notifications were unread until now."""


class ChannelChoice(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Whether one kind of notification is shown in the app and sent by email."""

    in_app: bool = True
    email: bool = True


class Preferences(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Every kind's channels. A kind or channel left out of a ``PUT`` takes its default: on."""

    welcome: ChannelChoice = ChannelChoice()
    order_placed: ChannelChoice = ChannelChoice()
    order_paid: ChannelChoice = ChannelChoice()
    order_shipped: ChannelChoice = ChannelChoice()
    order_delivered: ChannelChoice = ChannelChoice()
    order_cancelled: ChannelChoice = ChannelChoice()

    def of(self, kind: NotificationKind) -> ChannelChoice:
        """The channels of ``kind``."""
        choice: ChannelChoice = getattr(self, kind)
        return choice


class UnsubscribeOut(msgspec.Struct, frozen=True):
    """The result of following an unsubscribe link."""

    kind: NotificationKind
    email: bool
    """Always false: this kind's emails are off from now on."""
    message: str
