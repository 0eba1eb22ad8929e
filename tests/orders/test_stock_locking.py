"""Every path that changes several products' stock races order placement without a deadlock.

Products L < H by id. Placement locks L then H. A path that returned stock order by order (an
order on H, then one on L) took H then L: with placements queued on both rows that is a deadlock,
a 500 for a customer or a deactivation retried until it is dead-lettered. Each test below runs one
cancelling path (deactivation as the worker's consumer runs it, the unpaid sweep as the worker runs
it, customer and administrator cancels with restocks) while many clients place orders over [L, H]
and [H, L], several rounds, and checks: no 5xx, the path never raised, every order it should cancel
is cancelled, not one unit of stock appeared or vanished, and no transaction needed a retry. One
test does the issue's shape end to end (events through NATS to the real worker: nothing
dead-lettered); the last ones pin the rule itself (lock_stock takes the lower id first, refuses to
reach back) and the retry of a deadlock victim that a lock outside the rule can still cause.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import uuid
from typing import TYPE_CHECKING

import pytest
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from sqlalchemy import case, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from devtools.testing import eventually
from orders.events import users_replica_handlers
from orders.models import OUTBOX, Order, OrderLine, Product
from orders.stock import lock_stock
from orders.worker import worker_plan
from shared.db import TRANSIENT_SQLSTATES
from shared.events import streams
from shared.events.consumer import EventConsumer, HandlerOutcome
from shared.events.contracts import UserDeactivated, decode_event, encode_event, new_envelope
from shared.events.streams import DLQ_STREAM
from tests.orders.helpers import Tokens, add_product, place, publish, remember, run_worker_until, with_nats

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    import httpx
    from nats.js.client import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine

    from devtools.stack.servers import NatsServer
    from orders.settings import OrdersSettings

ROUNDS = 4
PLACERS = 10
INITIAL_STOCK = 1_000_000
OPEN = ("pending", "paid")


class Race:
    """Two products L < H by id, clients placing orders over both, and the stock bookkeeping."""

    def __init__(self, client: httpx.AsyncClient, tokens: Tokens, low: str, high: str) -> None:
        self.client = client
        self.tokens = tokens
        self.low = low
        self.high = high
        self.restocked: collections.Counter[str] = collections.Counter()

    @classmethod
    async def open(cls, client: httpx.AsyncClient, tokens: Tokens) -> Race:
        ids = [str((await add_product(client, tokens, sku=f"RACE-{n}", stock=INITIAL_STOCK))["id"]) for n in range(2)]
        low, high = sorted(ids, key=uuid.UUID)
        return cls(client, tokens, low, high)

    async def order(self, customer: dict[str, str], products: list[str]) -> str:
        response = await place(self.client, customer, [(product, 1) for product in products])
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def placing(
        self, stop: asyncio.Event, customer: dict[str, str], statuses: list[int], *, patterns: int = 0
    ) -> None:
        """Place orders over [L, H] and [H, L] (and single lines) until ``stop``, noting each status."""
        shapes = [[self.low, self.high], [self.high, self.low], [self.high], [self.low]]
        n = patterns
        while not stop.is_set():
            response = await place(self.client, customer, [(product, 1) for product in shapes[n % len(shapes)]])
            statuses.append(response.status_code)
            n += 1

    async def during_placements(
        self, work: Callable[[], Awaitable[None]], *, extra: Sequence[tuple[dict[str, str], list[int]]] = ()
    ) -> list[int]:
        """Run ``work`` while ``PLACERS`` clients (plus ``extra`` ones) place orders; their statuses."""
        stop = asyncio.Event()
        statuses: list[int] = []
        placers = [
            asyncio.create_task(self.placing(stop, self.tokens.customer(), statuses, patterns=n))
            for n in range(PLACERS)
        ] + [asyncio.create_task(self.placing(stop, customer, seen)) for customer, seen in extra]

        async def placed(count: int) -> bool:
            return len(statuses) >= count or any(task.done() for task in placers)  # a failed placer ends it

        try:
            await eventually(lambda: placed(PLACERS), within=60, what="every placer under way")
            await work()
            # and they keep racing whatever the work left behind until it is done
            after = len(statuses) + PLACERS
            await eventually(lambda: placed(after), within=60, what="placements after the work")
        finally:
            stop.set()
            await asyncio.gather(*placers)
        return statuses

    def restock(self, product: str, quantity: int) -> None:
        self.restocked[product] += quantity


async def conserved(engine: AsyncEngine, race: Race) -> dict[str, tuple[int, int]]:
    """Per product: (initial stock + restocked, available + reserved by orders not cancelled)."""
    reserved = func.coalesce(func.sum(case((Order.status != "cancelled", OrderLine.quantity), else_=0)), 0)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(Product.id, Product.stock, reserved)
                .select_from(Product)
                .outerjoin(OrderLine, OrderLine.product_id == Product.id)
                .outerjoin(Order, Order.id == OrderLine.order_id)
                .group_by(Product.id, Product.stock)
            )
        ).all()
    return {
        str(product_id): (INITIAL_STOCK + race.restocked[str(product_id)], stock + int(held))
        for product_id, stock, held in rows
    }


def assert_conserved(books: dict[str, tuple[int, int]]) -> None:
    for product, (expected, found) in books.items():
        assert expected == found, f"product {product}: stock + reserved is {found}, should be {expected}"


async def statuses_of(engine: AsyncEngine, order_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(Order.id, Order.status, Order.cancel_reason).where(Order.id.in_([uuid.UUID(i) for i in order_ids]))
        )
        return {str(row.id): (row.status, row.cancel_reason) for row in rows}


def transaction_retries() -> float:
    """How often the service re-ran a transaction Postgres aborted (the lock order should keep it 0)."""
    return sum(
        REGISTRY.get_sample_value("orders_transaction_retries_total", {"sqlstate": state}) or 0.0
        for state in TRANSIENT_SQLSTATES
    )


def no_server_errors(statuses: list[int], allowed: set[int]) -> None:
    counts = collections.Counter(statuses)
    assert set(counts) <= allowed, f"answers during the race: {dict(counts)}"


@pytest.fixture
async def engine(orders_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(orders_database, pool_size=4)
    yield engine
    await engine.dispose()


async def test_deactivation_racing_placements_cancels_every_open_order_without_a_deadlock(
    client: httpx.AsyncClient,
    tokens: Tokens,
    orders_settings: OrdersSettings,
    engine: AsyncEngine,
    jetstream: JetStreamContext,
) -> None:
    race = await Race.open(client, tokens)
    retries = transaction_retries()
    handlers = users_replica_handlers(orders_settings)
    handler = handlers.get(UserDeactivated)
    assert handler is not None
    # The handler runs inside the worker's consumer transaction (inbox row + effect), exactly as
    # the worker runs it; it raising would mean a retry, and five of them a dead letter.
    consumer = EventConsumer(
        spec=streams.consumer("orders", "users-replica"),
        handlers=handlers,
        session_maker=async_sessionmaker(engine, expire_on_commit=False),
        js=jetstream,
        outbox=OUTBOX,
    )
    for _ in range(ROUNDS):
        user_id = uuid.uuid4()
        customer = tokens.customer(user_id)
        await remember(orders_settings, user_id, is_active=True, sequence=1)
        # order 1 on H, order 2 on L, and more of both: returned order by order, H is locked first
        victims = [await race.order(customer, [product]) for product in [race.high, race.low] * 3]
        victims.append(await race.order(customer, [race.high, race.low]))
        paid = victims[-2]
        assert (await client.post(f"/orders/{paid}/pay", headers=customer)).status_code == 200
        outcomes: list[str] = []

        async def deactivate(user_id: uuid.UUID = user_id, outcomes: list[str] = outcomes) -> None:
            envelope = new_envelope(UserDeactivated(user_id=user_id), source="users", sequence=2)
            outcomes.append(await consumer.apply(decode_event(encode_event(envelope)), handler))

        own: list[int] = []
        others = await race.during_placements(deactivate, extra=[(customer, own)])

        assert outcomes == [HandlerOutcome.APPLIED]
        no_server_errors(others, {201})
        no_server_errors(own, {201, 403})  # the user's own orders: placed before, refused after
        async with engine.connect() as connection:
            still_open = await connection.scalar(
                select(func.count()).select_from(Order).where(Order.user_id == user_id, Order.status.in_(OPEN))
            )
        assert still_open == 0
        assert set((await statuses_of(engine, victims)).values()) == {("cancelled", "user_deactivated")}
        assert_conserved(await conserved(engine, race))
    assert transaction_retries() == retries, "a deadlock happened (and was retried): the lock order is broken"


async def test_deactivations_through_the_worker_racing_placements_are_never_retried_or_dead_lettered(
    client: httpx.AsyncClient,
    tokens: Tokens,
    orders_settings: OrdersSettings,
    engine: AsyncEngine,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
) -> None:
    # The issue's own shape, end to end: users.user.deactivated over NATS to the real worker while
    # clients place orders; before the fix some of these events failed five times and were dead-lettered.
    race = await Race.open(client, tokens)
    consumer = "orders-users-replica"
    failures_before = consumer_samples(consumer)
    victims: dict[uuid.UUID, list[str]] = {}
    for _ in range(ROUNDS):
        user_id = uuid.uuid4()
        customer = tokens.customer(user_id)
        victims[user_id] = [await race.order(customer, [product]) for product in [race.high, race.low] * 3]

    async def all_cancelled() -> bool:
        async with engine.connect() as connection:
            still_open = await connection.scalar(
                select(func.count()).select_from(Order).where(Order.user_id.in_(list(victims)), Order.status.in_(OPEN))
            )
        try:
            info = await jetstream.consumer_info("USERS", consumer)
        except NotFoundError:  # the worker has not created its durable consumer yet
            return False
        return still_open == 0 and info.num_pending == 0 and info.num_ack_pending == 0

    async def deactivate_through_the_worker() -> None:
        for user_id in victims:
            await publish(jetstream, UserDeactivated(user_id=user_id), sequence=2)
        await run_worker_until(with_nats(orders_settings, nats_server), all_cancelled)

    statuses = await race.during_placements(deactivate_through_the_worker)

    no_server_errors(statuses, {201})
    assert consumer_samples(consumer) == failures_before, "the handler failed and was retried or dead-lettered"
    assert (await jetstream.stream_info(DLQ_STREAM)).state.messages == 0
    for orders in victims.values():
        assert set((await statuses_of(engine, orders)).values()) == {("cancelled", "user_deactivated")}
    assert_conserved(await conserved(engine, race))


def consumer_samples(consumer: str) -> tuple[float, float]:
    """(retried, dead-lettered) attempts of a consumer so far in this process."""

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(f"relay_consumer_{name}_total", {"consumer": consumer}) or 0.0

    return sample("retried"), sample("dead_lettered")


async def test_unpaid_sweep_racing_placements_cancels_every_stale_order_without_a_deadlock(
    client: httpx.AsyncClient, tokens: Tokens, orders_settings: OrdersSettings, engine: AsyncEngine
) -> None:
    race = await Race.open(client, tokens)
    retries = transaction_retries()
    sweep = next(s for s in worker_plan(orders_settings).sweeps if s.name == "cancel-unpaid-orders")
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
        seconds=orders_settings.unpaid_order_timeout_seconds + 3600
    )
    for _ in range(ROUNDS):
        customers = [tokens.customer() for _ in range(3)]
        stale = [
            await race.order(customer, products)
            for customer in customers
            for products in ([race.high], [race.low], [race.high, race.low], [race.high])
        ]
        async with engine.begin() as connection:
            await connection.execute(
                update(Order).where(Order.id.in_([uuid.UUID(i) for i in stale])).values(created_at=long_ago)
            )
        swept: list[int] = []

        async def sweep_until_done(swept: list[int] = swept) -> None:
            while (cancelled := await sweep.run(sessions)) > 0:  # as the worker's loop calls it
                swept.append(cancelled)

        statuses = await race.during_placements(sweep_until_done)

        no_server_errors(statuses, {201})
        assert sum(swept) == len(stale)
        assert set((await statuses_of(engine, stale)).values()) == {("cancelled", "payment_timeout")}
        assert_conserved(await conserved(engine, race))
    assert transaction_retries() == retries, "a deadlock happened (and was retried): the lock order is broken"


async def test_customer_and_admin_cancels_and_restocks_racing_placements_keep_stock_exact(
    client: httpx.AsyncClient, tokens: Tokens, engine: AsyncEngine
) -> None:
    race = await Race.open(client, tokens)
    retries = transaction_retries()
    for _ in range(ROUNDS):
        customer = tokens.customer()
        mine = [await race.order(customer, products) for products in ([race.high, race.low], [race.low], [race.high])]
        theirs = [await race.order(tokens.customer(), [race.low, race.high]) for _ in range(2)]
        answers: list[int] = []

        async def cancel_and_restock(
            mine: list[str] = mine,
            theirs: list[str] = theirs,
            customer: dict[str, str] = customer,
            answers: list[int] = answers,
        ) -> None:
            async def restock(product: str) -> httpx.Response:
                response = await client.post(
                    f"/products/{product}/restock", json={"quantity": 5}, headers=tokens.admin()
                )
                if response.status_code == 200:
                    race.restock(product, 5)
                return response

            responses = await asyncio.gather(
                *(client.post(f"/orders/{order}/cancel", headers=customer) for order in mine),
                *(client.post(f"/orders/{order}/cancel", headers=tokens.admin()) for order in theirs),
                restock(race.high),
                restock(race.low),
            )
            answers.extend(response.status_code for response in responses)

        statuses = await race.during_placements(cancel_and_restock)

        no_server_errors(statuses, {201})
        assert answers == [200] * len(answers)
        assert set((await statuses_of(engine, mine)).values()) == {("cancelled", "customer")}
        assert set((await statuses_of(engine, theirs)).values()) == {("cancelled", "admin")}
        assert_conserved(await conserved(engine, race))
    assert transaction_retries() == retries, "a deadlock happened (and was retried): the lock order is broken"


async def test_placement_that_loses_a_deadlock_is_run_again_instead_of_a_500(
    client: httpx.AsyncClient, tokens: Tokens, engine: AsyncEngine
) -> None:
    # Someone outside the rule (say, by hand in psql) locks H, then L. The placement locks L and
    # waits for H; it has waited longest, so Postgres picks it as the deadlock's victim.
    race = await Race.open(client, tokens)
    retries = transaction_retries()

    async with engine.connect() as outsider:
        lock = select(Product.id).with_for_update()
        await outsider.execute(lock.where(Product.id == uuid.UUID(race.high)))
        placing = asyncio.create_task(place(client, tokens.customer(), [(race.low, 1), (race.high, 1)]))
        await eventually(lambda: someone_waits_for_a_lock(engine), within=30, what="the placement waiting for H")
        await outsider.execute(lock.where(Product.id == uuid.UUID(race.low)))  # returns once the victim is gone
        await outsider.commit()
    response = await placing
    assert response.status_code == 201, response.text
    assert transaction_retries() == retries + 1
    assert_conserved(await conserved(engine, race))


async def someone_waits_for_a_lock(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        waiting = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def test_lock_stock_takes_the_lower_id_first_whatever_order_it_is_given(
    client: httpx.AsyncClient, tokens: Tokens, engine: AsyncEngine
) -> None:
    race = await Race.open(client, tokens)
    low, high = uuid.UUID(race.low), uuid.UUID(race.high)
    lock = select(Product.id).with_for_update()
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with engine.connect() as outsider:
        await outsider.execute(lock.where(Product.id == high))

        async def lock_both() -> list[uuid.UUID]:
            async with sessions() as session, session.begin():
                return [row.id for row in (await lock_stock(session, [high, low])).rows]

        locking = asyncio.create_task(lock_both())
        await eventually(lambda: someone_waits_for_a_lock(engine), within=30, what="lock_stock waiting for H")
        # It waits for H while it already holds L: L was taken first.
        async with engine.connect() as probe:
            with pytest.raises(DBAPIError, match="could not obtain lock"):
                await probe.execute(select(Product.id).where(Product.id == low).with_for_update(nowait=True))
        await outsider.commit()
    assert await locking == [low, high]


async def test_stock_changes_only_under_its_lock_and_products_are_locked_once_per_transaction(
    client: httpx.AsyncClient, tokens: Tokens, engine: AsyncEngine
) -> None:
    race = await Race.open(client, tokens)
    low, high = uuid.UUID(race.low), uuid.UUID(race.high)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        async with session.begin():
            locked = await lock_stock(session, [high])
            with pytest.raises(ValueError, match="without its lock"):
                await locked.change({low: 1})
            with pytest.raises(RuntimeError, match="out of id order"):
                await lock_stock(session, [low])  # a second call reaching back below what is held
            await locked.change({high: 1})
            race.restock(race.high, 1)
        async with session.begin():  # a new transaction starts afresh
            await lock_stock(session, [low])
    assert_conserved(await conserved(engine, race))
