"""``just mail``: the emails the local stack's notify sent (or is still trying to send).

Two sources, merged by delivery id: notify's delivery log (``notify.email_delivery``: recipient,
subject, status, attempts, last error), read as notify's own role with the URL the running stack
gave it (``<data>/run/env/notify.json``), and the ``.eml`` files the stack's file transport wrote
(``NOTIFY_EMAIL_URL=file://<data>/mail``, named ``<delivery id>.eml``). With the stack stopped,
the files alone are listed (status ``written``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import email
import email.policy
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from email.message import EmailMessage

__all__ = ("Mail", "collect_mail", "main")

_LOG_QUERY = """
SELECT id::text, recipient, subject, status, attempts, last_error, created_at, sent_at, body
FROM notify.email_delivery ORDER BY created_at DESC LIMIT $1
"""


@dataclass(frozen=True)
class Mail:
    """One email of the local stack, from the delivery log and/or its ``.eml`` file."""

    delivery_id: str
    to: str
    subject: str
    time: datetime.datetime
    status: str
    """``queued``, ``sent``, ``failed`` (the delivery log), or ``written`` (a file, log unreachable)."""
    attempts: int = 0
    last_error: str = ""
    body: str = ""
    file: Path | None = None


def _read_file(path: Path) -> EmailMessage:
    message: EmailMessage = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    return message


def _from_file(path: Path) -> Mail:
    message = _read_file(path)
    sent = message["Date"].datetime if message["Date"] is not None else None
    when = sent or datetime.datetime.fromtimestamp(path.stat().st_mtime, tz=datetime.UTC)
    return Mail(path.stem, str(message["To"] or ""), str(message["Subject"] or ""), when, "written", file=path)


async def _delivery_log(url: str, limit: int) -> list[Mail]:
    import asyncpg

    connection = await asyncio.wait_for(asyncpg.connect(url), timeout=5)
    try:
        rows = await connection.fetch(_LOG_QUERY, limit)
    finally:
        await connection.close()
    return [
        Mail(
            delivery_id=row["id"],
            to=row["recipient"] or "",
            subject=row["subject"],
            time=row["sent_at"] or row["created_at"],
            status=row["status"],
            attempts=row["attempts"],
            last_error=row["last_error"] or "",
            body=row["body"],
        )
        for row in rows
    ]


def collect_mail(data: Path, limit: int = 200) -> tuple[list[Mail], str]:
    """The stack's emails, newest first, and a note when the delivery log could not be read."""
    directory = data / "mail"
    files = {path.stem: path for path in directory.glob("*.eml")} if directory.exists() else {}
    env_file = data / "run" / "env" / "notify.json"
    logged: list[Mail] = []
    note = ""
    if env_file.exists():
        try:
            url = json.loads(env_file.read_text())["NOTIFY_DATABASE_URL"].replace("+asyncpg", "")
            logged = asyncio.run(_delivery_log(url, limit))
        except Exception as error:  # noqa: BLE001 - any failure leaves the files to list
            note = f"notify's delivery log is out of reach ({type(error).__name__}: {error}); showing the .eml files"
    else:
        note = "the stack is not running: showing the .eml files only"
    mails = {mail.delivery_id: mail for mail in (_from_file(path) for path in files.values())}
    for entry in logged:
        file = files.get(entry.delivery_id)
        to = entry.to or (mails[entry.delivery_id].to if entry.delivery_id in mails else "")
        mails[entry.delivery_id] = Mail(
            entry.delivery_id,
            to,
            entry.subject,
            entry.time,
            entry.status,
            entry.attempts,
            entry.last_error,
            entry.body,
            file,
        )
    ordered = sorted(mails.values(), key=lambda mail: mail.time, reverse=True)[:limit]
    return ordered, note


def _list(mails: Sequence[Mail], out: IO[str]) -> None:
    if not mails:
        out.write("no emails yet: sign up or order something (uv run just demo) while `just up` runs\n")
        return
    out.write(f"{'n':>3}  {'time (UTC)':<19}  {'status':<9} {'to':<36} subject\n")
    for number, mail in enumerate(mails, start=1):
        when = mail.time.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        status = mail.status if mail.status != "queued" or not mail.attempts else f"retry{mail.attempts}"
        out.write(f"{number:>3}  {when:<19}  {status:<9} {mail.to[:36]:<36} {mail.subject}\n")


def _show(mail: Mail, out: IO[str], *, raw: bool) -> None:
    if mail.file is not None and raw:
        out.write(mail.file.read_text(errors="replace"))
        return
    out.write(f"{'Status:':<9} {mail.status}" + (f" after {mail.attempts} attempt(s)" if mail.attempts else "") + "\n")
    if mail.last_error:
        out.write(f"{'Error:':<9} {mail.last_error}\n")
    if mail.file is None:
        out.write(f"{'To:':<9} {mail.to}\n{'Subject:':<9} {mail.subject}\n\n{mail.body}\n")
        return
    message = _read_file(mail.file)
    for header in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe"):
        if message[header] is not None:
            out.write(f"{header + ':':<9} {message[header]}\n")
    out.write(f"{'File:':<9} {mail.file}\n\n")
    part = message.get_body(preferencelist=("plain", "html"))
    out.write(part.get_content() if part is not None else "")


def main(argv: Sequence[str] | None = None, out: IO[str] = sys.stdout) -> int:
    """``python -m devtools.stack.mail [N] [--raw] [--data DIR]``: list the emails, or print number N."""
    parser = argparse.ArgumentParser(prog="just mail", description="The local stack's emails.")
    parser.add_argument("number", nargs="?", type=int, help="print this email of the list (1 = newest)")
    parser.add_argument("--raw", action="store_true", help="print the whole .eml file")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("RELAY_DATA", ".data")))
    args = parser.parse_args(argv)
    mails, note = collect_mail(args.data.resolve())
    if note:
        sys.stderr.write(f"just mail: {note}\n")
    if args.number is None:
        _list(mails, out)
        return 0
    if not 1 <= args.number <= len(mails):
        sys.stderr.write(f"just mail: no email {args.number} (there are {len(mails)})\n")
        return 1
    with contextlib.suppress(BrokenPipeError):
        _show(mails[args.number - 1], out, raw=args.raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
