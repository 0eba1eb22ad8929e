"""Benchmark: ``GET /orders/{id}``'s lean Core read against the ordinary ORM read of the same order.

Both lines run in this one process, on the same freshly started and seeded Postgres, with the same
engine, the same sequence of order ids and the same answer:

* **core**: ``OrderService.get``, as the route calls it: one prebuilt statement (the order row
  joined to its lines) on the session's asyncpg connection (``shared.db.driver_connection``, no
  BEGIN/ROLLBACK), straight into the ``OrderOut`` and ``OrderLineOut`` Structs.
* **orm**: the way a typical codebase would write it: advanced-alchemy repositories load the
  ``Order`` entity and its ``OrderLine`` entities (identity map, instance state), then the same
  ``OrderOut`` is built from them.

Each read opens its own ``AsyncSession`` and closes it, as a request does; ``concurrency`` tasks
read side by side over one engine whose pool holds as many connections. Latency is one read,
session open to session closed.

Run: ``uv run python -m bench.order_reads [--reads N] [--concurrency C] [--orders M]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import random
import secrets
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from uuid_utils.compat import uuid7

from orders.app import DATABASE
from orders.models import OUTBOX, Order, OrderLine, Product
from orders.schemas import OrderLineOut, OrderOut
from orders.service import OrderService
from orders.settings import OrdersSettings
from shared.auth import Principal
from shared.db import provision_service_role
from shared.errors import NotFound

from .harness import bench_servers, interrupt_guard, run

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncEngine

    from orders.schemas import OrderStatus

    from .harness import PostgresServer

SERVICE = "orders"
PRODUCTS = 200
MAX_LINES = 5
USERS = 100
WARMUP_READS = 500
STATUSES: tuple[OrderStatus, ...] = ("pending", "paid", "shipped", "delivered", "cancelled")


class OrderRepository(SQLAlchemyAsyncRepository[Order]):
    """Orders, as the ordinary CRUD code reads them."""

    model_type = Order


class OrderLineRepository(SQLAlchemyAsyncRepository[OrderLine]):
    """Order lines, as the ordinary CRUD code reads them."""

    model_type = OrderLine


class OrmOrderReads:
    """The baseline: ``OrderService.get``'s rule and answer, through entities and repositories."""

    def __init__(self, *, session: AsyncSession) -> None:
        self.orders = OrderRepository(session=session, auto_commit=False)
        self.lines = OrderLineRepository(session=session, auto_commit=False)

    async def get(self, user: Principal, order_id: uuid.UUID) -> OrderOut:
        order = await self.orders.get_one_or_none(id=order_id)
        if order is None or (order.user_id != user.id and not user.is_admin):
            raise NotFound("No such order.")
        lines = await self.lines.get_many(OrderLine.order_id == order.id, order_by=(OrderLine.product_id, False))
        return OrderOut(
            id=order.id,
            user_id=order.user_id,
            status=cast("OrderStatus", order.status),
            lines=[
                OrderLineOut(
                    product_id=line.product_id,
                    sku=line.sku,
                    name=line.name,
                    unit_price=line.unit_price,
                    quantity=line.quantity,
                    line_total=line.unit_price * line.quantity,
                )
                for line in lines
            ],
            total=order.total,
            currency=order.currency,
            cancel_reason=order.cancel_reason,
            created_at=order.created_at,
            updated_at=order.updated_at,
        )


@dataclass(frozen=True)
class LineResult:
    """The measurements of one line."""

    name: str
    reads: int
    throughput: float
    p50_ms: float
    p99_ms: float


@dataclass
class Bench:
    """The engine's sessions, the caller, and the two ways to read an order."""

    sessions: async_sessionmaker[AsyncSession]
    settings: OrdersSettings
    concurrency: int

    def __post_init__(self) -> None:
        self.outbox = OUTBOX
        # An administrator sees every order, so any id is a hit for both lines.
        self.admin = Principal(id=uuid.uuid4(), roles=frozenset({"admin"}), token_id="bench", expires_at=0)  # noqa: S106 - a token id, not a secret

    async def read_core(self, session: AsyncSession, order_id: uuid.UUID) -> OrderOut:
        """The service's own read, built per request as the app's provider builds it."""
        return await OrderService(session=session, outbox=self.outbox, settings=self.settings).get(self.admin, order_id)

    async def read_orm(self, session: AsyncSession, order_id: uuid.UUID) -> OrderOut:
        """The baseline read."""
        return await OrmOrderReads(session=session).get(self.admin, order_id)

    async def check_equal(self, order_ids: list[uuid.UUID]) -> None:
        """Both lines must give the same answer before their speeds mean anything."""
        for order_id in order_ids:
            async with self.sessions() as session:
                core = await self.read_core(session, order_id)
            async with self.sessions() as session:
                orm = await self.read_orm(session, order_id)
            assert core == orm, f"order {order_id}: core {core!r} != orm {orm!r}"
            assert core.lines, f"order {order_id} has no lines"

    async def run(
        self, name: str, read: Callable[[AsyncSession, uuid.UUID], Awaitable[OrderOut]], order_ids: list[uuid.UUID]
    ) -> LineResult:
        """Read every id once, from ``concurrency`` tasks sharing one queue of ids."""
        pending = iter(order_ids)  # one shared iterator: each id is read by exactly one task
        latencies: list[float] = []

        async def reader() -> None:
            for order_id in pending:
                started = time.perf_counter()
                async with self.sessions() as session:
                    await read(session, order_id)
                latencies.append((time.perf_counter() - started) * 1000)

        gc.collect()  # neither line pays for the other's garbage
        began = time.perf_counter()
        await asyncio.gather(*(reader() for _ in range(self.concurrency)))
        elapsed = time.perf_counter() - began
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        return LineResult(
            name=name, reads=len(latencies), throughput=len(latencies) / elapsed, p50_ms=cuts[49], p99_ms=cuts[98]
        )


async def seed(engine: AsyncEngine, *, orders: int, rng: random.Random) -> list[uuid.UUID]:
    """A catalog and ``orders`` orders of 1 to ``MAX_LINES`` lines each, inserted with Core; their ids."""
    now = datetime.datetime.now(datetime.UTC)
    products = [
        {
            "id": uuid7(),
            "sku": f"SKU-{index:04d}",
            "name": f"Product {index}",
            "description": f"The {index}th product of the bench catalog.",
            "price": rng.randrange(100, 50_000),
            "currency": "EUR",
            "stock": 1000,
            "is_active": True,
            "created_at": now,
            "updated_at": now,
        }
        for index in range(PRODUCTS)
    ]
    users = [uuid.uuid4() for _ in range(USERS)]
    order_rows: list[dict[str, object]] = []
    line_rows: list[dict[str, object]] = []
    for _ in range(orders):
        order_id = uuid7()
        chosen = rng.sample(products, rng.randint(1, MAX_LINES))
        quantities = [rng.randint(1, 4) for _ in chosen]
        status = rng.choice(STATUSES)
        placed = now - datetime.timedelta(minutes=rng.randrange(60 * 24 * 30))
        order_rows.append(
            {
                "id": order_id,
                "user_id": rng.choice(users),
                "status": status,
                "total": sum(cast("int", p["price"]) * q for p, q in zip(chosen, quantities, strict=True)),
                "currency": "EUR",
                "cancel_reason": "customer" if status == "cancelled" else None,
                "version": STATUSES.index(status) + 1,
                "created_at": placed,
                "updated_at": placed + datetime.timedelta(minutes=5),
            }
        )
        line_rows.extend(
            {
                "id": uuid7(),
                "order_id": order_id,
                "product_id": product["id"],
                "sku": product["sku"],
                "name": product["name"],
                "unit_price": product["price"],
                "quantity": quantity,
            }
            for product, quantity in zip(chosen, quantities, strict=True)
        )
    async with engine.begin() as connection:
        await connection.execute(insert(Product), products)
        await connection.execute(insert(Order), order_rows)
        await connection.execute(insert(OrderLine), line_rows)
        await connection.exec_driver_sql(f"ANALYZE {SERVICE}.product, {SERVICE}.customer_order, {SERVICE}.order_line")
    return [cast("uuid.UUID", row["id"]) for row in order_rows]


async def benchmark(postgres: PostgresServer, *, reads: int, concurrency: int, orders: int) -> None:
    url = await provision_service_role(postgres.url(), service=SERVICE, password=secrets.token_urlsafe(16))
    await asyncio.to_thread(DATABASE.upgrade, url)  # Alembic runs its own event loop

    engine = create_async_engine(url, pool_size=concurrency, max_overflow=0)
    try:
        rng = random.Random(20240601)  # noqa: S311 - reproducible data, not secrets
        order_ids = await seed(engine, orders=orders, rng=rng)
        # The app's sessions never expire on commit (shared.db.RequestSessions); reads do not commit anyway.
        bench = Bench(
            sessions=async_sessionmaker(engine, expire_on_commit=False),
            settings=OrdersSettings(database_url=url),
            concurrency=concurrency,
        )
        await bench.check_equal(order_ids)
        sequence = [rng.choice(order_ids) for _ in range(reads)]  # the same ids, in the same order, for both
        warmup = sequence[:WARMUP_READS]
        await bench.run("core", bench.read_core, warmup)
        await bench.run("orm", bench.read_orm, warmup)
        results = (
            await bench.run("core", bench.read_core, sequence),
            await bench.run("orm", bench.read_orm, sequence),
        )
    finally:
        await engine.dispose()
    report(results, orders=orders, concurrency=concurrency)


def report(results: tuple[LineResult, LineResult], *, orders: int, concurrency: int) -> None:
    core, orm = results
    print(f"order reads benchmark: GET /orders/{{id}}'s read, N={core.reads} reads of random ids per line, loopback")
    print(
        f"  data: {orders} orders of 1-{MAX_LINES} lines over {PRODUCTS} products; an admin caller (every id visible)"
    )
    print(f"  concurrency: {concurrency} tasks; each read its own AsyncSession; one engine, pool_size={concurrency}")
    print("  core: OrderService.get - 2 column selects straight into OrderOut / OrderLineOut")
    print("  orm:  advanced-alchemy repositories - Order + OrderLine entities, then the same OrderOut")
    print(f"  both lines gave equal OrderOut for all {orders} orders; each warmed up with {WARMUP_READS} reads first")
    print("  one Python process and event loop; Postgres fsync off; no tracing SDK")
    print()
    print(f"  {'line':<6} {'reads/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for line in results:
        print(f"  {line.name:<6} {line.throughput:>8.0f} {line.p50_ms:>8.2f} {line.p99_ms:>8.2f}")
    print()
    print(
        f"  core/orm: throughput x{core.throughput / orm.throughput:.2f}, p50 latency x{core.p50_ms / orm.p50_ms:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reads", type=int, default=5000, help="measured reads per line (default 5000)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent readers and pool size (default 8)")
    parser.add_argument("--orders", type=int, default=1000, help="orders seeded (default 1000)")
    args = parser.parse_args()
    with interrupt_guard(), bench_servers() as servers:
        run(benchmark(servers.postgres, reads=args.reads, concurrency=args.concurrency, orders=args.orders))


if __name__ == "__main__":
    main()
