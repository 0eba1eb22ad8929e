"""The notify service's settings: ``NOTIFY_*`` environment variables."""

from __future__ import annotations

from shared.settings import ServiceSettings, load_settings

__all__ = ("NotifySettings", "load_notify_settings")


class NotifySettings(ServiceSettings, kw_only=True, frozen=True):
    """What notify needs beyond the settings every service has."""

    public_base_url: str = "http://127.0.0.1:8003"
    """The notify API's address as an email reader's browser reaches it: unsubscribe links start with it."""
    unsubscribe_secret: str = ""
    """The HMAC-SHA256 key of unsubscribe links (at least 16 characters); read it from a file in production."""
    email_url: str = "file:.data/mail"
    """Where email goes: ``smtp://[user:password@]host:port[?starttls=true]``, ``smtps://...`` (TLS from the
    first byte), or ``file:///directory`` to write each message as an ``.eml`` file (the local default)."""
    email_from: str = "Relay Shop <no-reply@relay-shop.example>"
    """The ``From`` of every email."""
    email_timeout_seconds: float = 30.0
    """How long one SMTP connection or command may take before the attempt counts as failed."""
    email_sweep_seconds: float = 5.0
    """How often an idle worker looks for emails that are due (a busy one goes on at once)."""
    email_batch_size: int = 50
    """Emails claimed at a time; a pass claims the next batch at once while batches come back full."""
    email_pass_seconds: float = 2.0
    """How long one sweep pass may go on claiming full batches before it returns (a stop is seen between passes)."""
    email_concurrency: int = 8
    """SMTP connections a sweep sends over at once, each reused from email to email."""
    email_senders: int = 1
    """Email sweeps side by side in one worker process (each with its own connections); more worker
    replicas add more the same way, as claims skip rows another sweep holds."""
    email_max_attempts: int = 8
    """Attempts before a delivery is given up as failed."""
    email_retry_base_seconds: float = 30.0
    """The delay after the first failed attempt; it doubles after each further failure."""
    email_retry_max_seconds: float = 3600.0
    """The longest delay between two attempts."""
    email_lease_seconds: float = 600.0
    """A claimed email is tried again after this long if its worker died while sending it."""
    stream_heartbeat_seconds: float = 15.0
    """How often an idle Server-Sent Events stream gets a comment line, so proxies keep it open."""
    stream_max_per_user: int = 5
    """Live streams one user may hold open in one API process at once; one more is answered 429."""
    stream_queue_size: int = 100
    """Notifications buffered per stream; a client that falls further behind is disconnected and resumes."""
    stream_replay_page: int = 100
    """Rows per query when a reconnecting client is sent what it missed since ``Last-Event-ID``."""


def load_notify_settings() -> NotifySettings:
    """Read the settings from ``NOTIFY_*`` variables."""
    return load_settings(NotifySettings, "NOTIFY")
