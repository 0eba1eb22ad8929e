"""Benchmark: outbox → relay → JetStream → inbox consumer, against publishing and consuming directly.

Both lines run in this one process, on the same freshly started Postgres and NATS, with the same
payloads, producers and effect:

* **pipeline**: each event is committed by ``Outbox.add`` in its own transaction (as a request
  would); one ``OutboxRelay`` publishes it; one ``EventConsumer`` applies it (inbox row + effect row
  committed together, then ack).
* **baseline**: each event is sent with ``js.publish`` (``Nats-Msg-Id`` set, no outbox); a plain
  pull-consumer loop inserts the same effect row (one transaction per message, then ack; no inbox).

A third load, **drain**, puts every event in the stream first and then runs the consumer alone (the
pipeline's ``EventConsumer`` against the plain loop): the capacity of one consumer. Each line also
reports this process's CPU time per event, which other work on the machine hardly moves.

Latency runs from the moment the event is safe on the producer's side (outbox commit returned, or
publish acknowledged) to the moment the consumer's transaction holding the effect row has committed.
Both instants are ``time.perf_counter()`` readings in this process, so no clocks are compared.

Run: ``uv run python -m bench.events_pipeline [--events N] [--producers K] [--rate R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import secrets
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError
from sqlalchemy import Column, MetaData, String, Table, bindparam, event, pool, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from shared.db import provision_service_role
from shared.events.consumer import EventConsumer, EventContext, EventHandlers
from shared.events.contracts import UserRegistered, decode_event, encode_event, new_envelope
from shared.events.outbox import Outbox, OutboxRelay
from shared.events.streams import ConsumerSpec, ensure_consumer, ensure_streams
from shared.events.tables import define_event_tables

from .harness import bench_servers, interrupt_guard, run

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterator

    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .harness import NatsServer, PostgresServer

SERVICE = "bench"
STREAM = "USERS"
RELAY_BATCH = 100
RELAY_POLL_SECONDS = 2.0
CONSUMER_BATCH = 50
FETCH_TIMEOUT_SECONDS = 1.0
RUN_TIMEOUT_SECONDS = 120.0
WARMUP_EVENTS = 200

metadata = MetaData(schema=SERVICE)
TABLES = define_event_tables(metadata)
effect = Table(
    "effect",
    metadata,
    Column("event_id", UUID(as_uuid=False), primary_key=True),
    Column("note", String(254), nullable=False),
)
# Built once, so every execution hits SQLAlchemy's compiled cache and asyncpg's prepared statement,
# as the library's own statements do: the effect must cost the same in both lines.
insert_effect = effect.insert().values(event_id=bindparam("event_id"), note=bindparam("note"))

PIPELINE_SPEC = ConsumerSpec(SERVICE, "pipeline", STREAM, ("users.user.registered",))
BASELINE_SPEC = ConsumerSpec(SERVICE, "baseline", STREAM, ("users.user.registered",))


@dataclass
class Timeline:
    """When each event became safe at its producer, and when its effect was committed."""

    expected: int
    started: dict[str, float] = field(default_factory=dict)
    applied: dict[str, float] = field(default_factory=dict)
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    cpu_seconds: float = 0.0
    """CPU time of this process (producers, relay, consumer) while the line ran: unlike events/s,
    it hardly moves when other work shares the machine's cores."""

    def effects_committed(self, event_ids: list[str]) -> None:
        now = time.perf_counter()
        for event_id in event_ids:
            self.applied[event_id] = now
        if len(self.applied) >= self.expected:
            self.complete.set()


class EffectSession(Session):
    """A session that stamps its effect rows when their transaction has committed.

    Stamping in the handler would stop the clock before the commit round trip; the commit is when
    the effect exists for anyone else.
    """


@event.listens_for(EffectSession, "after_commit")
def _stamp_effects(session: Session) -> None:
    event_ids: list[str] = session.info.pop("effects", [])
    if event_ids:
        timeline: Timeline = session.info["timeline"]
        timeline.effects_committed(event_ids)


async def record_effect(session: AsyncSession, event_id: str, payload: UserRegistered) -> None:
    """The effect of one event, identical in both lines."""
    await session.execute(insert_effect, {"event_id": event_id, "note": payload.email})
    session.info.setdefault("effects", []).append(event_id)


@dataclass(frozen=True)
class LineResult:
    """The measurements of one line."""

    load: str
    name: str
    events: int
    produced_per_second: float
    throughput: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_us: float
    """CPU of this process per event, in µs."""


def summarise(load: str, name: str, timeline: Timeline) -> LineResult:
    """Throughput from the first start to the last effect, and latency percentiles."""
    latencies = sorted((timeline.applied[key] - started) * 1000 for key, started in timeline.started.items())
    first, last_start = min(timeline.started.values()), max(timeline.started.values())
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return LineResult(
        load=load,
        name=name,
        events=len(latencies),
        produced_per_second=len(latencies) / (last_start - first) if last_start > first else math.inf,
        throughput=len(latencies) / (max(timeline.applied.values()) - first),
        p50_ms=cuts[49],
        p99_ms=cuts[98],
        max_ms=latencies[-1],
        cpu_us=timeline.cpu_seconds * 1e6 / len(latencies),
    )


@dataclass
class Bench:
    """The servers' clients and what both lines share."""

    js: JetStreamContext
    producer_engine: AsyncEngine
    worker_engine: AsyncEngine
    producers: int

    def consumer_sessions(self, timeline: Timeline) -> async_sessionmaker[AsyncSession]:
        return async_sessionmaker(
            self.worker_engine, sync_session_class=EffectSession, expire_on_commit=False, info={"timeline": timeline}
        )

    async def reset(self) -> None:
        """Empty tables and a fresh stream, so neither line sees the other's events or dedup window."""
        async with self.worker_engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {SERVICE}.outbox, {SERVICE}.inbox, {SERVICE}.effect"))
        with contextlib.suppress(NotFoundError):
            await self.js.delete_stream(STREAM)
        await ensure_streams(self.js, duplicate_window_seconds=120, max_age_seconds=3600, names=(STREAM,))

    async def produce(
        self, payloads: list[UserRegistered], send: Callable[[UserRegistered], Awaitable[None]], rate: float | None
    ) -> None:
        """Send every payload from ``self.producers`` concurrent producers, like that many requests.

        With a ``rate``, event ``i`` is not sent before ``i / rate`` seconds: an open-loop load that
        measures the mechanism's own latency instead of the queue that a burst builds up.
        """
        schedule: Iterator[tuple[int, UserRegistered]] = iter(enumerate(payloads))
        begin = time.perf_counter()

        async def producer() -> None:
            for index, payload in schedule:  # one shared iterator: each payload is taken by exactly one producer
                if rate is not None:
                    await asyncio.sleep(max(0.0, begin + index / rate - time.perf_counter()))
                await send(payload)

        await asyncio.gather(*(producer() for _ in range(self.producers)))

    def publish_directly(self, timeline: Timeline) -> Callable[[UserRegistered], Awaitable[None]]:
        """Send an event as the relay would (same subject, body and Nats-Msg-Id), without the outbox."""

        async def publish(payload: UserRegistered) -> None:
            envelope = new_envelope(payload, source=SERVICE, sequence=1)
            await self.js.publish(envelope.type, encode_event(envelope), headers={"Nats-Msg-Id": envelope.id})
            timeline.started[envelope.id] = time.perf_counter()

        return publish

    async def run_pipeline(
        self, payloads: list[UserRegistered], rate: float | None = None, *, drain: bool = False
    ) -> Timeline:
        """Outbox commit → relay → JetStream → EventConsumer (inbox + effect).

        With ``drain``, the consumer alone: the stream holds every event before it starts.
        """
        await self.reset()
        timeline = Timeline(expected=len(payloads))
        outbox = Outbox(TABLES, source=SERVICE)
        request_sessions = async_sessionmaker(self.producer_engine, expire_on_commit=False)
        handlers = EventHandlers()

        @handlers.on(UserRegistered)
        async def apply(payload: UserRegistered, context: EventContext) -> None:
            await record_effect(context.session, context.envelope.id, payload)

        relay = OutboxRelay(
            engine=self.worker_engine,
            tables=TABLES,
            js=self.js,
            service=SERVICE,
            batch_size=RELAY_BATCH,
            poll_interval=RELAY_POLL_SECONDS,
        )
        consumer = EventConsumer(
            spec=PIPELINE_SPEC,
            handlers=handlers,
            session_maker=self.consumer_sessions(timeline),
            js=self.js,
            outbox=outbox,
            batch_size=CONSUMER_BATCH,
            fetch_timeout=FETCH_TIMEOUT_SECONDS,
        )

        async def commit(payload: UserRegistered) -> None:
            async with request_sessions() as session, session.begin():
                envelope = await outbox.add(session, payload, sequence=1)
            timeline.started[envelope.id] = time.perf_counter()

        await ensure_consumer(self.js, PIPELINE_SPEC)
        if drain:
            await self._run_line(timeline, payloads, self.publish_directly(timeline), None, consumer.run, preload=True)
        else:
            await self._run_line(timeline, payloads, commit, rate, relay.run, consumer.run)
        return timeline

    async def run_baseline(
        self, payloads: list[UserRegistered], rate: float | None = None, *, drain: bool = False
    ) -> Timeline:
        """js.publish → JetStream → plain pull consumer (effect only); with ``drain``, that consumer alone."""
        await self.reset()
        timeline = Timeline(expected=len(payloads))
        sessions = self.consumer_sessions(timeline)
        publish = self.publish_directly(timeline)

        async def consume(stop: asyncio.Event) -> None:
            subscription = await self.js.pull_subscribe_bind(durable=BASELINE_SPEC.durable, stream=STREAM)
            try:
                while not stop.is_set():
                    try:
                        messages = await subscription.fetch(CONSUMER_BATCH, timeout=FETCH_TIMEOUT_SECONDS)
                    except (NatsTimeoutError, TimeoutError):
                        continue
                    for message in messages:
                        decoded = decode_event(message.data)  # the pipeline decodes too: same work
                        assert isinstance(decoded.payload, UserRegistered)
                        async with sessions() as session, session.begin():
                            await record_effect(session, decoded.envelope.id, decoded.payload)
                        await message.ack()
            finally:
                await subscription.unsubscribe()

        await ensure_consumer(self.js, BASELINE_SPEC)
        await self._run_line(timeline, payloads, publish, rate, consume, preload=drain)
        return timeline

    async def _run_line(
        self,
        timeline: Timeline,
        payloads: list[UserRegistered],
        send: Callable[[UserRegistered], Awaitable[None]],
        rate: float | None,
        *workers: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
        preload: bool = False,
    ) -> None:
        if preload:
            # Every event is in the stream before the workers start; the clock starts with them.
            await self.produce(payloads, send, None)
            begin = time.perf_counter()
            timeline.started = dict.fromkeys(timeline.started, begin)
        stop = asyncio.Event()
        cpu = time.process_time()
        tasks = [asyncio.create_task(worker(stop)) for worker in workers]
        try:
            if not preload:
                # Let the relay's LISTEN connection and the consumer's first fetch get in place, so
                # the first events do not measure start-up.
                await asyncio.sleep(0.3)
                cpu = time.process_time()
                await self.produce(payloads, send, rate)
            complete = asyncio.create_task(timeline.complete.wait())
            # A worker that dies would otherwise leave us waiting for effects that never come.
            await asyncio.wait([complete, *tasks], timeout=RUN_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            timeline.cpu_seconds = time.process_time() - cpu
            complete.cancel()
        finally:
            stop.set()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        if not timeline.complete.is_set():
            raise TimeoutError(f"{len(timeline.applied)} of {timeline.expected} effects after {RUN_TIMEOUT_SECONDS}s")


def user_payloads(count: int) -> list[UserRegistered]:
    """Payloads of a realistic size, shared by both lines."""
    return [
        UserRegistered(
            user_id=uuid.uuid4(), email=f"user{index}@example.com", display_name=f"User {index}", role="user"
        )
        for index in range(count)
    ]


async def benchmark(
    postgres: PostgresServer, nats_server: NatsServer, *, events: int, producers: int, rate: float
) -> None:
    url = await provision_service_role(postgres.url(), service=SERVICE, password=secrets.token_urlsafe(16))
    setup = create_async_engine(url, poolclass=pool.NullPool)
    async with setup.begin() as connection:
        await connection.run_sync(metadata.create_all)
    await setup.dispose()

    # Two pools, as the API (producers) and the worker (relay and consumer) would each have their own.
    producer_engine = create_async_engine(url, pool_size=producers, max_overflow=0)
    worker_engine = create_async_engine(url, pool_size=4, max_overflow=0)
    client = await nats.connect(nats_server.url)
    try:
        bench = Bench(
            js=client.jetstream(), producer_engine=producer_engine, worker_engine=worker_engine, producers=producers
        )
        payloads = user_payloads(events)
        steady_payloads = payloads[: max(events // 4, 1)]
        # Warm both paths (pools, prepared statements, JetStream files) before anything is measured.
        await bench.run_pipeline(payloads[:WARMUP_EVENTS])
        await bench.run_baseline(payloads[:WARMUP_EVENTS])
        burst_load = f"burst {events}"
        steady_load = f"{len(steady_payloads)} at {rate:g}/s"
        burst = (
            summarise(burst_load, "pipeline", await bench.run_pipeline(payloads)),
            summarise(burst_load, "baseline", await bench.run_baseline(payloads)),
        )
        steady = (
            summarise(steady_load, "pipeline", await bench.run_pipeline(steady_payloads, rate)),
            summarise(steady_load, "baseline", await bench.run_baseline(steady_payloads, rate)),
        )
        drain_load = f"drain {events}"
        drain = (
            summarise(drain_load, "pipeline", await bench.run_pipeline(payloads, drain=True)),
            summarise(drain_load, "baseline", await bench.run_baseline(payloads, drain=True)),
        )
    finally:
        await client.close()
        await producer_engine.dispose()
        await worker_engine.dispose()
    body_bytes = len(encode_event(new_envelope(payloads[0], source=SERVICE, sequence=1)))
    report(burst, steady, drain, events=events, producers=producers, body_bytes=body_bytes)


def report(
    burst: tuple[LineResult, LineResult],
    steady: tuple[LineResult, LineResult],
    drain: tuple[LineResult, LineResult],
    *,
    events: int,
    producers: int,
    body_bytes: int,
) -> None:
    print(f"events pipeline benchmark: N={events} events per line ({body_bytes} B CloudEvents bodies), loopback")
    print(f"  producers: {producers} concurrent; each event is its own transaction, or its own awaited js.publish")
    print(
        f"  pipeline: Outbox.add -> 1 OutboxRelay (batch_size={RELAY_BATCH}, NOTIFY wake, poll {RELAY_POLL_SECONDS:g}s)"
    )
    print(
        f"            -> JetStream -> 1 EventConsumer (batch_size={CONSUMER_BATCH}; inbox + effect committed, then ack)"
    )
    print("  baseline: js.publish with Nats-Msg-Id")
    print(
        f"            -> JetStream -> 1 plain pull loop (fetch batch {CONSUMER_BATCH}; effect only, 1 tx/message, ack)"
    )
    print("  latency: outbox commit returned (pipeline) / publish acknowledged (baseline) -> effect tx committed")
    print("  burst: all N offered at once, so events/s is capacity and latency is mostly queueing;")
    print("  steady: N/4 offered at a fixed rate, so latency is the hops themselves")
    print("  drain: N already in the stream, then the consumer alone (no producers, no relay): one consumer's capacity")
    print("  CPU µs: this process's CPU per event (producers, relay, consumer), steady even when other work shares")
    print("          the cores; 1e6 / (CPU µs) is the events/s one free core would do")
    print("  one Python process and event loop for producers, relay and consumer (all on one thread)")
    print(f"  Postgres fsync off; no tracing SDK; each line warmed up with {WARMUP_EVENTS} events first")
    print()
    print(
        f"  {'load':<16} {'line':<9} {'produced/s':>10} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        f" {'CPU µs':>7}"
    )
    for line in (*burst, *steady, *drain):
        print(
            f"  {line.load:<16} {line.name:<9} {line.produced_per_second:>10.0f} {line.throughput:>9.0f}"
            f" {line.p50_ms:>8.1f} {line.p99_ms:>8.1f} {line.max_ms:>8.1f} {line.cpu_us:>7.0f}"
        )
    print()
    print(
        f"  pipeline/baseline, {burst[0].load}: throughput x{burst[0].throughput / burst[1].throughput:.2f},"
        f" p50 latency x{burst[0].p50_ms / burst[1].p50_ms:.2f}, CPU per event x{burst[0].cpu_us / burst[1].cpu_us:.2f}"
    )
    print(
        f"  pipeline/baseline, {drain[0].load}: throughput x{drain[0].throughput / drain[1].throughput:.2f},"
        f" CPU per event x{drain[0].cpu_us / drain[1].cpu_us:.2f};"
        f" one consumer: {drain[0].throughput:.0f} events/s, {1e6 / drain[0].cpu_us:.0f} per free core"
    )
    # At a fixed offered rate both lines keep up, so only the latencies can differ.
    print(
        f"  pipeline/baseline, {steady[0].load}: p50 latency x{steady[0].p50_ms / steady[1].p50_ms:.2f},"
        f" p99 latency x{steady[0].p99_ms / steady[1].p99_ms:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=2000, help="events per line (default 2000)")
    parser.add_argument("--producers", type=int, default=8, help="concurrent producers (default 8)")
    parser.add_argument("--rate", type=float, default=100.0, help="events/s offered in the steady phase (default 100)")
    args = parser.parse_args()
    with interrupt_guard(), bench_servers(nats=True) as servers:
        assert servers.nats is not None
        run(benchmark(servers.postgres, servers.nats, events=args.events, producers=args.producers, rate=args.rate))


if __name__ == "__main__":
    main()
