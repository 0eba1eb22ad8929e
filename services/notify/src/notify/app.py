"""The notify app: in-app notifications, their live stream, preferences and unsubscribe links."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.di import NamedDependency, Provide
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from notify.live import LiveHub, NotificationFeed
from notify.models import Base, Contact
from notify.routes import NotificationController, UnsubscribeController
from notify.service import NotificationService
from notify.settings import NotifySettings, load_notify_settings
from notify.tokens import UnsubscribeLinks
from shared.app import ServiceApp, create_service_app
from shared.db import ServiceDatabase
from shared.revocations import TokenRevocations

if TYPE_CHECKING:
    from litestar import Litestar

__all__ = ("DATABASE", "create_app")

DATABASE = ServiceDatabase(Base.metadata, migrations="notify:migrations")


def create_app(settings: NotifySettings | None = None, *, null_pool: bool = False) -> Litestar:
    """Build the notify app (granian calls this with no arguments: settings come from ``NOTIFY_*``)."""
    settings = settings or load_notify_settings()
    links = UnsubscribeLinks(settings.unsubscribe_secret, settings.public_base_url)
    hub = LiveHub(queue_size=settings.stream_queue_size, max_per_user=settings.stream_max_per_user)
    # Tokens issued before the replica's tokens_valid_after are refused, and their streams ended.
    revocations = TokenRevocations(
        Contact.user_id, Contact.tokens_valid_after, poll_seconds=settings.token_revocation_poll_seconds
    )

    def provide_notifications(db_session: NamedDependency[AsyncSession]) -> NotificationService:
        return NotificationService(session=db_session, links=links)

    def provide_feed(db_engine: NamedDependency[AsyncEngine]) -> NotificationFeed:
        return NotificationFeed(
            hub=hub,
            engine=db_engine,
            heartbeat_seconds=settings.stream_heartbeat_seconds,
            replay_page=settings.stream_replay_page,
            revocations=revocations,
        )

    async def start_live_push(app: Litestar) -> None:
        await hub.start(app.state.get("nats"))

    return create_service_app(
        ServiceApp(
            name="notify",
            version="1.0.0",
            description="Notifications from users' and orders' events: in the app, live (Server-Sent Events), email.",
            settings=settings,
            database=DATABASE,
            route_handlers=[NotificationController, UnsubscribeController],
            dependencies={
                "notifications": Provide(provide_notifications, sync_to_thread=False),
                "feed": Provide(provide_feed, sync_to_thread=False),
            },
            on_startup=[start_live_push],
            on_shutdown=[hub.close],
            null_pool=null_pool,
            prebuilt_reads=True,  # GET /notifications (shared.db.driver_connection)
            token_revocations=revocations,
        )
    )
