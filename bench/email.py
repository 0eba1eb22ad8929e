"""Benchmark: notify's email sweep, against sending the same emails directly with aiosmtplib.

Both lines run in this one process, against the same local SMTP server (aiosmtpd in its own
process, accepting and discarding), with the same messages:

* **sweep**: N deliveries queued in Postgres (as the consumer queues them) are sent by the real
  ``EmailSender``: claim a batch with ``SKIP LOCKED`` and a lease, build and send each email over
  ``--concurrency`` reused SMTP connections, record every outcome, and claim again while batches
  come back full; the worker would run the next pass at once (``Sweep(drain=True)``), as the loop here
  does. ``--senders`` sweeps run side by side, as several workers would.
* **direct** (the baseline): the same N emails, each built by the same ``prepare_email`` and sent
  with aiosmtplib's ``sendmail`` over as many connections, kept open, with no database at all: what
  a sender does without the delivery log. sweep/direct is the price of the log, the claims and the
  retries.
* **bytes** (for reference): the same emails built before the clock starts, then only sent: how
  fast this mail server takes email from this client at all.

Run: ``uv run python -m bench.email [--emails N] [--concurrency C] [--senders K] [--batch B]``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import aiosmtplib
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from uuid_utils.compat import uuid7

from notify.app import DATABASE
from notify.mail import OutgoingEmail, prepare_email, sender_address, transport_from_url
from notify.models import Contact, DeliveryStatus, EmailDelivery
from notify.sending import EmailSender
from notify.settings import NotifySettings
from notify.templates import NotificationTemplates
from notify.tokens import UnsubscribeLinks
from shared.db import provision_service_role

from .harness import bench_servers, free_port, interrupt_guard, run

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .harness import PostgresServer

SERVICE = "notify"
SENDER = "Relay Shop <no-reply@relay-shop.example>"


async def wait_for_smtp(port: int) -> None:
    """Until the SMTP server answers its greeting."""
    deadline = time.monotonic() + 15
    while True:
        try:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=2)
            await client.connect()
            await client.quit()
            return
        except (OSError, aiosmtplib.SMTPException):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def seed(engine: AsyncEngine, *, emails: int, links: UnsubscribeLinks) -> list[OutgoingEmail]:
    """``emails`` users and one queued welcome email each, as the consumer writes them; the same emails."""
    templates = NotificationTemplates()
    contacts: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    outgoing: list[OutgoingEmail] = []
    for index in range(emails):
        user_id, delivery_id = uuid.uuid4(), uuid7()
        name, address = f"Customer {index}", f"customer{index}@example.com"
        rendered = templates.render("welcome", {"name": name})
        url = links.url(user_id, "welcome")
        body = templates.email_text(kind="welcome", name=name, body=rendered.body, unsubscribe_url=url)
        contacts.append({"user_id": user_id, "email": address, "display_name": name, "sequence": 1})
        deliveries.append(
            {
                "id": delivery_id,
                "user_id": user_id,
                "kind": "welcome",
                "source_event_id": uuid7(),
                "subject": rendered.title,
                "body": body,
                "unsubscribe_url": url,
            }
        )
        outgoing.append(OutgoingEmail(delivery_id, address, name, rendered.title, body, url))
    async with engine.begin() as connection:
        await connection.execute(insert(Contact), contacts)
        await connection.execute(insert(EmailDelivery), deliveries)
        await connection.exec_driver_sql(f"ANALYZE {SERVICE}.email_delivery, {SERVICE}.contact")
    return outgoing


async def direct(port: int, emails: list[OutgoingEmail], *, concurrency: int, prebuilt: bool) -> float:
    """The same emails straight to the server over ``concurrency`` kept connections, built on the way or before."""
    sender = sender_address(SENDER)
    ready = [prepare_email(outgoing, sender=sender) for outgoing in emails] if prebuilt else []
    pending = iter(enumerate(emails))  # one shared iterator: each email is sent by exactly one lane

    async def lane() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await client.connect()
        try:
            for index, outgoing in pending:
                prepared = ready[index] if prebuilt else prepare_email(outgoing, sender=sender)
                await client.sendmail(prepared.sender, [prepared.recipient], prepared.data)
        finally:
            await client.quit()

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - began


async def sweep(engine: AsyncEngine, settings: NotifySettings, *, senders: int) -> float:
    """The line under test: ``senders`` sweeps side by side until the queue is empty."""
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def one_sweep() -> None:
        transport = transport_from_url(
            settings.email_url, sender=SENDER, timeout=30, concurrency=settings.email_concurrency
        )
        sender = EmailSender(transport=transport, settings=settings)
        while await sender.run_once(sessions):  # what Sweep(drain=True) does between passes
            pass

    began = time.perf_counter()
    await asyncio.gather(*(one_sweep() for _ in range(senders)))
    return time.perf_counter() - began


async def benchmark(postgres: PostgresServer, smtp_port: int, args: argparse.Namespace) -> None:
    url = await provision_service_role(postgres.url(), service=SERVICE, password=secrets.token_urlsafe(16))
    await asyncio.to_thread(DATABASE.upgrade, url)  # Alembic runs its own event loop
    engine = create_async_engine(url, pool_size=2 * args.senders, max_overflow=0)
    settings = NotifySettings(
        database_url=url,
        email_url=f"smtp://127.0.0.1:{smtp_port}",
        email_from=SENDER,
        email_batch_size=args.batch,
        email_concurrency=args.concurrency,
        unsubscribe_secret=secrets.token_urlsafe(24),
    )
    links = UnsubscribeLinks(settings.unsubscribe_secret, settings.public_base_url)
    try:
        await wait_for_smtp(smtp_port)
        warmup = await seed(engine, emails=100, links=links)
        await direct(smtp_port, warmup, concurrency=args.concurrency, prebuilt=False)
        await sweep(engine, settings, senders=args.senders)
        # Alternating rounds, the median of each line: a shared machine's load shifts during a run.
        rates: dict[str, list[float]] = {"bytes": [], "direct": [], "sweep": []}
        for _ in range(args.rounds):
            emails = await seed(engine, emails=args.emails, links=links)
            rates["bytes"].append(
                args.emails / await direct(smtp_port, emails, concurrency=args.concurrency, prebuilt=True)
            )
            rates["direct"].append(
                args.emails / await direct(smtp_port, emails, concurrency=args.concurrency, prebuilt=False)
            )
            rates["sweep"].append(args.emails / await sweep(engine, settings, senders=args.senders))
        async with engine.connect() as connection:
            sent = await connection.scalar(
                select(func.count()).select_from(EmailDelivery).where(EmailDelivery.status == DeliveryStatus.SENT)
            )
        expected = args.emails * args.rounds + len(warmup)
        assert sent == expected, f"{sent} sent, expected {expected}"
    finally:
        await engine.dispose()
    report(args, {name: statistics.median(values) for name, values in rates.items()}, rates)


def report(args: argparse.Namespace, median: dict[str, float], rounds: dict[str, list[float]]) -> None:
    print(
        f"email benchmark: N={args.emails} emails per line and round, {args.rounds} alternating rounds, median;"
        " a local aiosmtpd (its own process, discards)"
    )
    print(f"  bytes:  the same emails built before the clock, aiosmtplib sendmail, {args.concurrency} kept connections")
    print(f"  direct: prepare_email + aiosmtplib sendmail per email, {args.concurrency} kept connections, no database")
    print(
        f"  sweep:  EmailSender, {args.senders} sweep(s) side by side, batches of {args.batch}, "
        f"{args.concurrency} reused SMTP connections each;"
    )
    print("          claim + lease, build, send, record each row in Postgres")
    print("  one Python process and event loop for every line; every queued row checked 'sent' afterwards")
    print()
    print(f"  {'line':<7} {'emails/s':>9}   rounds")
    for name, rate in median.items():
        print(f"  {name:<7} {rate:>9.0f}   {' '.join(f'{value:.0f}' for value in rounds[name])}")
    print()
    print(
        f"  sweep/direct: x{median['sweep'] / median['direct']:.2f}"
        f"   (sweep/bytes: x{median['sweep'] / median['bytes']:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--emails", type=int, default=1000, help="emails per line and round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="SMTP connections per line (default 8)")
    parser.add_argument("--senders", type=int, default=1, help="sweeps side by side (default 1)")
    parser.add_argument("--batch", type=int, default=50, help="deliveries claimed at a time (default 50)")
    args = parser.parse_args()
    smtp_port = free_port()
    with interrupt_guard(), bench_servers() as servers:
        smtp = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink", "-l", f"127.0.0.1:{smtp_port}"],
            stdout=subprocess.DEVNULL,
        )
        try:
            run(benchmark(servers.postgres, smtp_port, args))
        finally:
            smtp.terminate()
            smtp.wait(10)


if __name__ == "__main__":
    main()
