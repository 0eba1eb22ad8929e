"""How an email leaves: over SMTP (aiosmtplib), or as an ``.eml`` file in a directory (local default).

``NOTIFY_EMAIL_URL`` picks the transport: ``smtp://[user:password@]host:port[?starttls=true]``,
``smtps://...`` for TLS from the first byte, or ``file:///directory``. A transport only sends; the
delivery log, retries and backoff are the service's (``EmailSender``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import tempfile
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = (
    "EmailTransport",
    "FileTransport",
    "OutgoingEmail",
    "SendFailure",
    "SmtpTransport",
    "build_message",
    "transport_from_url",
)

_PERMANENT = 500
"""SMTP replies 5yz are permanent (RFC 5321 §4.2.1): the same message will be refused again."""


class OutgoingEmail(msgspec.Struct, frozen=True):
    """One email ready to leave."""

    delivery_id: uuid.UUID
    recipient: str
    recipient_name: str
    subject: str
    body: str
    unsubscribe_url: str
    attempt: int = 1
    """Which attempt this is, the first being 1."""


class SendFailure(msgspec.Struct, frozen=True):
    """Why one email did not leave."""

    error: str
    permanent: bool
    """True when retrying cannot help (the server refused this message for good)."""


class EmailTransport(Protocol):
    """Sends emails; one answer per email, in order: None when it left, else why not."""

    async def send(self, emails: Sequence[OutgoingEmail]) -> list[SendFailure | None]:
        """Send each email."""
        ...


def build_message(outgoing: OutgoingEmail, *, sender: str) -> EmailMessage:
    """The MIME message of an email, with a stable ``Message-ID`` and a ``List-Unsubscribe`` header."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = email.utils.formataddr((outgoing.recipient_name, outgoing.recipient))
    message["Subject"] = outgoing.subject
    message["Date"] = email.utils.formatdate(usegmt=True)
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "notify.invalid"
    # The same id on every attempt: a resend after an unknown outcome is recognisably the same email.
    message["Message-ID"] = f"<{outgoing.delivery_id}@{domain}>"
    message["List-Unsubscribe"] = f"<{outgoing.unsubscribe_url}>"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(outgoing.body)
    return message


class SmtpTransport:
    """Sends over one SMTP connection per batch, reconnecting after a connection-level failure.

    Args:
        hostname: The SMTP server.
        port: Its port.
        sender: The ``From`` of every email.
        username: Sign in with this user (with ``password``) when given.
        password: The user's password.
        start_tls: Upgrade the connection with STARTTLS before anything else.
        use_tls: TLS from the first byte (``smtps://``).
        timeout: Seconds any one connect or command may take.
    """

    def __init__(
        self,
        *,
        hostname: str,
        port: int,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        start_tls: bool = False,
        use_tls: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.start_tls = start_tls
        self.use_tls = use_tls
        self.timeout = timeout

    def _client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self.hostname,
            port=self.port,
            username=self.username,
            password=self.password,
            start_tls=self.start_tls,
            use_tls=self.use_tls,
            timeout=self.timeout,
        )

    async def send(self, emails: Sequence[OutgoingEmail]) -> list[SendFailure | None]:
        """Send each email; a failure of one never stops the others."""
        results: list[SendFailure | None] = []
        client: aiosmtplib.SMTP | None = None
        try:
            for outgoing in emails:
                try:
                    if client is None or not client.is_connected:
                        client = self._client()
                        await client.connect()
                    await client.send_message(build_message(outgoing, sender=self.sender))
                    results.append(None)
                except (aiosmtplib.SMTPException, OSError) as error:
                    results.append(_failure(error))
                    if not isinstance(error, aiosmtplib.SMTPResponseException):
                        await _close(client)  # the connection is in an unknown state: start afresh
                        client = None
        finally:
            await _close(client)
        return results


def _failure(error: BaseException) -> SendFailure:
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        codes = [refusal.code for refusal in error.recipients]
        detail = "; ".join(f"{refusal.code} {refusal.message}" for refusal in error.recipients)
        return SendFailure(error=f"recipient refused: {detail}", permanent=all(code >= _PERMANENT for code in codes))
    if isinstance(error, aiosmtplib.SMTPResponseException):
        # A 5yz to our sign-in or greeting is the server's or our configuration's problem, not the
        # message's: it stays retryable. A 5yz to this message's MAIL, RCPT or DATA is final.
        connection_level = isinstance(
            error, aiosmtplib.SMTPAuthenticationError | aiosmtplib.SMTPHeloError | aiosmtplib.SMTPConnectResponseError
        )
        permanent = error.code >= _PERMANENT and not connection_level
        return SendFailure(error=f"{type(error).__name__}: {error.code} {error.message}", permanent=permanent)
    return SendFailure(error=f"{type(error).__name__}: {error}", permanent=False)


async def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is None or not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()


class FileTransport:
    """Writes each email to ``<directory>/<delivery id>.eml``, for development: open it in any mail reader.

    A retry rewrites the same file, so a message is never there twice.
    """

    def __init__(self, directory: Path, *, sender: str) -> None:
        self.directory = directory
        self.sender = sender

    async def send(self, emails: Sequence[OutgoingEmail]) -> list[SendFailure | None]:
        """Write each email's file."""
        results: list[SendFailure | None] = []
        for outgoing in emails:
            try:
                await asyncio.to_thread(self._write, outgoing)
                results.append(None)
            except OSError as error:
                results.append(SendFailure(error=f"{type(error).__name__}: {error}", permanent=False))
        return results

    def _write(self, outgoing: OutgoingEmail) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = bytes(build_message(outgoing, sender=self.sender))
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            os.replace(temporary, self.directory / f"{outgoing.delivery_id}.eml")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def transport_from_url(url: str, *, sender: str, timeout: float = 30.0) -> EmailTransport:
    """The transport ``NOTIFY_EMAIL_URL`` names.

    Raises:
        ValueError: Neither an ``smtp``, ``smtps`` nor a ``file`` URL.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileTransport(Path(unquote(parts.path)), sender=sender)  # file:///absolute or file:relative
    if parts.scheme in ("smtp", "smtps"):
        if not parts.hostname:
            raise ValueError(f"the email URL names no host: {parts.scheme}://...")
        options = parse_qs(parts.query)
        start_tls = options.get("starttls", ["false"])[-1].lower() in ("1", "true", "yes")
        use_tls = parts.scheme == "smtps"
        return SmtpTransport(
            hostname=parts.hostname,
            port=parts.port or (465 if use_tls else 25),
            sender=sender,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            start_tls=start_tls,
            use_tls=use_tls,
            timeout=timeout,
        )
    raise ValueError(f"NOTIFY_EMAIL_URL must be smtp://, smtps:// or file://, not {parts.scheme or url!r}")
