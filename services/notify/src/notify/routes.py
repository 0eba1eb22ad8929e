"""The notify HTTP API: parse, authorize, call the service, shape the answer."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, MediaType, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEvent
from litestar.status_codes import HTTP_200_OK

from notify.live import NotificationFeed
from notify.schemas import NotificationOut, NotificationPage, Preferences, ReadAllOut, UnsubscribeOut
from notify.service import NotificationService
from notify.tokens import TOKEN_PATTERN
from shared.auth import CurrentUser, signed_in
from shared.errors import Forbidden, TooManyRequests
from shared.pagination import PageRequest

__all__ = ("NotificationController", "UnsubscribeController")

Notifications = NamedDependency[NotificationService]
UnsubscribeToken = Annotated[
    str, QueryParameter(min_length=1, max_length=200, pattern=TOKEN_PATTERN, description="From the email's link.")
]


class NotificationController(Controller):
    """The signed-in user's own notifications: the in-app list, the live stream, the preferences."""

    path = "/notifications"
    tags = ["notifications"]
    guards = [signed_in]

    @get("/", operation_id="listNotifications")
    async def list_notifications(
        self,
        user: CurrentUser,
        notifications: Notifications,
        page: NamedDependency[PageRequest],
        unread: Annotated[bool, QueryParameter(description="Only the unread ones.")] = False,
    ) -> NotificationPage:
        """Your notifications, newest first, with how many are unread."""
        return await notifications.page(user.id, unread_only=unread, request=page)

    @post("/{notification_id:uuid}/read", status_code=HTTP_200_OK, operation_id="markNotificationRead")
    async def mark_read(
        self, notification_id: FromPath[uuid.UUID], user: CurrentUser, notifications: Notifications
    ) -> NotificationOut:
        """Mark one of your notifications read."""
        return await notifications.mark_read(user.id, notification_id)

    @post("/read-all", status_code=HTTP_200_OK, operation_id="markAllNotificationsRead")
    async def mark_all_read(self, user: CurrentUser, notifications: Notifications) -> ReadAllOut:
        """Mark all your notifications read."""
        return await notifications.mark_all_read(user.id)

    @get("/stream", operation_id="streamNotifications", domain_errors=(TooManyRequests,))
    async def stream(
        self,
        user: CurrentUser,
        feed: NamedDependency[NotificationFeed],
        last_event_id: Annotated[
            uuid.UUID | None,
            HeaderParameter(name="Last-Event-ID", description="The id of the last event received, to resume."),
        ] = None,
    ) -> ServerSentEvent:
        """Your new notifications as Server-Sent Events (``event: notification``, ``id:`` = notification id).

        Reconnecting with ``Last-Event-ID`` first sends what was missed. A comment line comes at least
        every heartbeat interval. The token goes in the ``Authorization`` header (use a fetch-based
        EventSource in browsers): a token in the URL would end up in logs. The stream ends when the token
        expires or is revoked: reconnect with a fresh token and ``Last-Event-ID``. Each user may hold a
        few streams per server process (``NOTIFY_STREAM_MAX_PER_USER``); beyond that the answer is 429.
        """
        return ServerSentEvent(feed.open(user, after=last_event_id))

    @get("/preferences", operation_id="getPreferences")
    async def show_preferences(self, user: CurrentUser, notifications: Notifications) -> Preferences:
        """For every kind of notification: in the app, by email, or both (all on unless turned off)."""
        return await notifications.preferences(user.id)

    @put("/preferences", operation_id="replacePreferences")
    async def replace_preferences(
        self, data: JSONBody[Preferences], user: CurrentUser, notifications: Notifications
    ) -> Preferences:
        """Replace your preferences; any kind or channel left out is on."""
        return await notifications.replace_preferences(user.id, data)


class UnsubscribeController(Controller):
    """The link at the bottom of every email: works without signing in."""

    path = "/notifications/unsubscribe"
    tags = ["notifications"]

    @get("/", operation_id="unsubscribe", domain_errors=(Forbidden,), media_type=MediaType.HTML)
    async def unsubscribe(
        self,
        notifications: Notifications,
        token: UnsubscribeToken,
    ) -> str:
        """A page asking to confirm; its button posts. Opening the link changes nothing (scanners open links)."""
        return notifications.unsubscribe_page(token)

    @post("/", operation_id="unsubscribeOneClick", domain_errors=(Forbidden,), status_code=HTTP_200_OK)
    async def unsubscribe_one_click(
        self,
        notifications: Notifications,
        token: UnsubscribeToken,
    ) -> UnsubscribeOut:
        """Turn off the emails of the kind the link came with (RFC 8058 one-click, and the page's button).

        The body (``List-Unsubscribe=One-Click``, as a form) is not read: the signed token in the URL
        is the whole request.
        """
        return await notifications.unsubscribe(token)
