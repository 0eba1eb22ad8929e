"""How an email leaves: over SMTP (aiosmtplib), or as an ``.eml`` file in a directory (local default).

``NOTIFY_EMAIL_URL`` picks the transport: ``smtp://[user:password@]host:port[?starttls=true]``,
``smtps://...`` for TLS from the first byte, or ``file:///directory``. A transport only sends; the
delivery log, retries and backoff are the sweep's (``notify.sending.EmailSender``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import email.utils
import functools
import io
import os
import tempfile
import uuid
from email.generator import BytesGenerator
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import msgspec

from shared.addresses import InvalidEmail, canonical_email, printable_name

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = (
    "EmailTransport",
    "FileTransport",
    "OutgoingEmail",
    "PreparedEmail",
    "SendFailure",
    "SmtpTransport",
    "build_message",
    "prepare_email",
    "transport_from_url",
)

_PERMANENT = 500
"""SMTP replies 5yz are permanent (RFC 5321 §4.2.1): the same message will be refused again."""
_MAX_HEADER_LINE = 998
"""RFC 5322's hard line limit. Our headers fit on one line, so none is folded: the policy's default
(78) folds a long ``List-Unsubscribe`` URL into an encoded word no mail client can follow."""


class _HeaderClasses(HeaderRegistry):
    """The standard header registry, remembering the header class it makes for each name.

    ``HeaderRegistry`` builds a new class with ``type()`` on every header set: about a third of the
    time it takes to build an email. The classes, and every check the policy runs, are the same.
    """

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


_POLICY = email.policy.SMTP.clone(max_line_length=_MAX_HEADER_LINE, header_factory=_HeaderClasses())
_UTF8_POLICY = _POLICY.clone(utf8=True)


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


class PreparedEmail(msgspec.Struct, frozen=True):
    """An email as bytes on the wire, with its envelope."""

    sender: str
    recipient: str
    data: bytes
    utf8: bool
    """The recipient's address is not ASCII: it can only travel with ``SMTPUTF8`` (RFC 6531)."""


class EmailTransport(Protocol):
    """Sends emails; one answer per email, in order: None when it left, else why not.

    ``send`` never raises for one email: whatever goes wrong with one (building it included) is
    that email's answer, and the others still go.
    """

    async def send(self, emails: Sequence[OutgoingEmail]) -> list[SendFailure | None]:
        """Send each email."""
        ...

    async def close(self) -> None:
        """Let go of any connection kept for the next ``send``."""
        ...


def sender_address(sender: str) -> Address:
    """``NOTIFY_EMAIL_FROM`` (``Name <addr@domain>``) as a header address.

    Raises:
        ValueError: It names no address.
    """
    name, address = email.utils.parseaddr(sender)
    if "@" not in address:
        raise ValueError(f"NOTIFY_EMAIL_FROM names no address: {sender!r}")
    return Address(display_name=printable_name(name), addr_spec=address)


def build_message(outgoing: OutgoingEmail, *, sender: str | Address) -> EmailMessage:
    """The MIME message of an email: stable ``Message-ID``, one-click ``List-Unsubscribe`` (RFC 8058).

    Every header is set through the ``email`` package's policy, which refuses CR and LF in any
    header value, and addresses are ``Address`` objects, never strings pasted together: no stored
    value can add a header. Names are made printable first (rows from before names were checked).

    Raises:
        InvalidEmail: The recipient's address cannot be sent to.
        ValueError: A value the email package refuses in a header.
    """
    sender = sender if isinstance(sender, Address) else sender_address(sender)
    local, _, domain = canonical_email(outgoing.recipient).rpartition("@")
    message = EmailMessage(policy=_POLICY)
    constant = _constant_headers(str(sender))
    message["From"] = constant["From"]
    message["To"] = Address(display_name=printable_name(outgoing.recipient_name), username=local, domain=domain)
    message["Subject"] = printable_name(outgoing.subject)
    message["Date"] = email.utils.formatdate(usegmt=True)
    # The same id on every attempt: a resend after an unknown outcome is recognisably the same email.
    message["Message-ID"] = f"<{outgoing.delivery_id}@{sender.domain or 'notify.invalid'}>"
    message["List-Unsubscribe"] = f"<{outgoing.unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = constant["List-Unsubscribe-Post"]
    message["Auto-Submitted"] = constant["Auto-Submitted"]
    message.set_content(outgoing.body)
    return message


@functools.lru_cache(maxsize=8)
def _constant_headers(sender: str) -> dict[str, BaseHeader]:
    """The headers every email of one sender shares, parsed by the policy once.

    The policy stores a parsed header object as it is, so setting these skips parsing the sender's
    address again for every email; what is stored is exactly what the policy made.
    """
    template = EmailMessage(policy=_POLICY)
    template["From"] = sender_address(sender)
    template["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    template["Auto-Submitted"] = "auto-generated"
    return {name: template[name] for name in ("From", "List-Unsubscribe-Post", "Auto-Submitted")}


def prepare_email(outgoing: OutgoingEmail, *, sender: Address) -> PreparedEmail:
    """The email's bytes and envelope; ``SMTPUTF8`` form only when the recipient's address needs it.

    Raises:
        InvalidEmail: The recipient's address cannot be sent to.
        ValueError: A value the email package refuses in a header.
    """
    message = build_message(outgoing, sender=sender)
    recipient = message["To"].addresses[0].addr_spec
    utf8 = not recipient.isascii()
    buffer = io.BytesIO()
    BytesGenerator(buffer, policy=_UTF8_POLICY if utf8 else _POLICY).flatten(message)
    return PreparedEmail(sender=sender.addr_spec, recipient=recipient, data=buffer.getvalue(), utf8=utf8)


def _preparation_failure(error: Exception) -> SendFailure:
    if isinstance(error, InvalidEmail):
        # The address itself is unusable: no later attempt can make it valid (RFC 5321's 553).
        return SendFailure(error=f"recipient address refused before sending: {error}", permanent=True)
    return SendFailure(error=f"could not build the email: {type(error).__name__}: {error}", permanent=False)


class SmtpTransport:
    """Sends over up to ``concurrency`` SMTP connections at once, each reused from email to email.

    Connections stay open between ``send`` calls until ``close``: a sweep draining a queue pays the
    connect and greeting once, not once per batch. A connection-level failure closes that
    connection; the next email on it connects afresh.

    Args:
        hostname: The SMTP server.
        port: Its port.
        sender: The ``From`` of every email.
        username: Sign in with this user (with ``password``) when given.
        password: The user's password.
        start_tls: Upgrade the connection with STARTTLS before anything else.
        use_tls: TLS from the first byte (``smtps://``).
        timeout: Seconds any one connect or command may take.
        concurrency: Emails in flight at once, each on its own connection.
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
        concurrency: int = 4,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.start_tls = start_tls
        self.use_tls = use_tls
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        self._sender = sender_address(sender)
        self._idle: list[aiosmtplib.SMTP] = []

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
        results: list[SendFailure | None] = [None] * len(emails)
        pending = iter(enumerate(emails))  # one shared iterator: each email is taken by exactly one lane

        async def lane() -> None:
            client = self._idle.pop() if self._idle else None
            try:
                for index, outgoing in pending:
                    results[index], client = await self._send_one(client, outgoing)
            finally:
                if client is not None and client.is_connected:
                    self._idle.append(client)

        await asyncio.gather(*(lane() for _ in range(min(self.concurrency, len(emails)))))
        return results

    async def _send_one(
        self, client: aiosmtplib.SMTP | None, outgoing: OutgoingEmail
    ) -> tuple[SendFailure | None, aiosmtplib.SMTP | None]:
        try:
            prepared = prepare_email(outgoing, sender=self._sender)
        except Exception as error:  # noqa: BLE001 - whatever one email's data does, it fails alone
            return _preparation_failure(error), client
        try:
            if client is None or not client.is_connected:
                client = self._client()
                await client.connect()
            options: list[str] = []
            if prepared.utf8:
                await _greet(client)  # the server's extensions are known only after EHLO
                if not client.supports_extension("smtputf8"):
                    refusal = "the mail server does not offer SMTPUTF8, which this non-ASCII address needs"
                    return SendFailure(error=refusal, permanent=True), client
                options.append("SMTPUTF8")
            await client.sendmail(prepared.sender, [prepared.recipient], prepared.data, mail_options=options)
        except aiosmtplib.SMTPResponseException as error:
            return _failure(error), client  # the server answered: the connection is still good
        except Exception as error:  # noqa: BLE001 - the connection is in an unknown state: start afresh
            await _close(client)
            return _failure(error), None
        return None, client

    async def close(self) -> None:
        """Say goodbye on every kept connection."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_close(client) for client in idle))


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


async def _greet(client: aiosmtplib.SMTP) -> None:
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()


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
        self._sender = sender_address(sender)

    async def send(self, emails: Sequence[OutgoingEmail]) -> list[SendFailure | None]:
        """Write each email's file (one thread hop for the whole batch)."""
        return await asyncio.to_thread(self._write_all, emails)

    async def close(self) -> None:
        """Nothing is kept open."""

    def _write_all(self, emails: Sequence[OutgoingEmail]) -> list[SendFailure | None]:
        results: list[SendFailure | None] = []
        for outgoing in emails:
            try:
                prepared = prepare_email(outgoing, sender=self._sender)
            except Exception as error:  # noqa: BLE001 - whatever one email's data does, it fails alone
                results.append(_preparation_failure(error))
                continue
            try:
                self._write(outgoing.delivery_id, prepared.data)
                results.append(None)
            except OSError as error:
                results.append(SendFailure(error=f"{type(error).__name__}: {error}", permanent=False))
        return results

    def _write(self, delivery_id: uuid.UUID, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            os.replace(temporary, self.directory / f"{delivery_id}.eml")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def transport_from_url(url: str, *, sender: str, timeout: float = 30.0, concurrency: int = 4) -> EmailTransport:
    """The transport ``NOTIFY_EMAIL_URL`` names (``concurrency``: SMTP connections in use at once).

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
            concurrency=concurrency,
        )
    raise ValueError(f"NOTIFY_EMAIL_URL must be smtp://, smtps:// or file://, not {parts.scheme or url!r}")
