"""Benchmark: one cached read in process, through the project, through plain Litestar, and bare.

``GET /products/{id}`` called as an ASGI app in this process (no HTTP server, no socket: what is left
is the app's own CPU per request) three ways, on the same Postgres and row:

* **project**: the orders app as ``create_app`` builds it, with the prod overlay's sampler (spans
  not exported: ``OTEL_TRACES_EXPORTER=none``) and JSON access lines (written to ``/dev/null``).
* **plain Litestar**: one Litestar route doing the same read on an asyncpg pool and answering the
  same msgspec struct: no middleware, no telemetry, no problem details, no per-request session.
  What the framework itself costs: the floor under any Litestar service.
* **bare**: ``bench/ceiling.py``'s app, the ceiling of ``bench/http.py``: no framework at all.

Alternating rounds, medians of the process's CPU µs per request, on uvloop as under granian.
``bench/http.py`` measures the same read from outside (granian, k6), this plain app among its servers;
this one shows how much of
its distance to the ceiling is the framework's and how much the project's own layers
(authentication, input boundary, telemetry, the request's database session).

Run: ``uv run python -m bench.framework_floor [--requests N] [--rounds K]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import uvloop
from litestar import Litestar, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath  # noqa: TC002 - Litestar reads the handler's annotations at run time

from devtools.testing import prepare_service_database
from orders.schemas import ProductOut
from orders.service import PRODUCT_BY_ID_SQL
from shared.auth import AccessTokenSigner, generate_private_key_pem

from .harness import bench_servers, interrupt_guard, run
from .http import prod_tracing

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Message = MutableMapping[str, Any]
    App = Callable[
        [MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
        Awaitable[None],
    ]


async def call(app: App, path: str) -> tuple[int, bytes]:
    """One GET through ``app`` as an ASGI server would make it; the status and the body."""
    sent: list[Message] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"accept", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


def plain_litestar(pool: asyncpg.Pool | None = None) -> Litestar:
    """The same read as one plain Litestar route: the framework's own share of a request.

    Without ``pool`` the app opens its own at start-up, from ``BENCH_ORDERS_DATABASE_URL`` and of the
    ceiling's size: ``bench/http.py`` serves it with granian as the factory of its "plain Litestar".
    """
    pools = [] if pool is None else [pool]

    async def open_pool() -> None:
        if not pools:
            from .ceiling import POOL_SIZE

            dsn = os.environ["BENCH_ORDERS_DATABASE_URL"].replace("postgresql+asyncpg", "postgresql")
            pools.append(await asyncpg.create_pool(dsn, min_size=1, max_size=POOL_SIZE))

    async def close_pool() -> None:
        if pool is None and pools:
            await pools.pop().close()

    @get("/products/{product_id:uuid}")
    async def show_product(product_id: FromPath[uuid.UUID]) -> ProductOut:
        async with pools[0].acquire() as connection:
            row = await connection.fetchrow(PRODUCT_BY_ID_SQL, product_id)
        if row is None:
            raise NotFoundException
        return ProductOut(**row)

    return Litestar([show_product], on_startup=[open_pool], on_shutdown=[close_pool], logging_config=None)


async def measure(app: App, path: str, requests: int) -> float:
    """CPU µs per request of ``requests`` calls."""
    started = time.process_time()
    for _ in range(requests):
        await call(app, path)
    return (time.process_time() - started) * 1e6 / requests


async def benchmark(database_url: str, *, requests: int, rounds: int) -> None:
    from orders.app import create_app
    from orders.settings import OrdersSettings

    dsn = database_url.replace("postgresql+asyncpg", "postgresql")
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=10)
    product_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO orders.product (id, sku, name, description, price, currency, stock, is_active, created_at,"
        " updated_at) VALUES ($1, 'FLOOR-1', 'A mug', 'Blue', 1250, 'EUR', 10, true, now(), now())",
        product_id,
    )
    private_key = generate_private_key_pem()
    public_key = AccessTokenSigner(private_key, issuer="users", audiences=["orders"], ttl_seconds=60).public_key_pem()
    # The ceiling reads its settings from BENCH_* variables; only orders' tables are read here.
    for service in ("users", "orders", "notify"):
        os.environ[f"BENCH_{service.upper()}_DATABASE_URL"] = database_url
    os.environ |= {"BENCH_JWT_PUBLIC_KEY": public_key, "BENCH_JWT_PRIVATE_KEY": private_key}
    from . import ceiling

    project = create_app(OrdersSettings(database_url=database_url, jwt_public_keys=public_key, log_json=True))
    plain = plain_litestar(pool)
    path = f"/products/{product_id}"
    apps: dict[str, Any] = {"project": project, "plain Litestar": plain, "bare": ceiling.app}
    samples: dict[str, list[float]] = {name: [] for name in apps}
    async with project.lifespan(), plain.lifespan():
        await ceiling.ceiling.start()
        try:
            answers = {name: await call(app, path) for name, app in apps.items()}
            statuses = {name: status for name, (status, _) in answers.items()}
            if set(statuses.values()) != {200}:
                raise RuntimeError(f"not every app answered 200: {statuses}")
            for app in apps.values():  # warm-up: prepared statements, caches, pools
                await measure(app, path, max(requests // 5, 100))
            for round_number in range(rounds):
                names = list(apps)
                names = names[round_number % len(names) :] + names[: round_number % len(names)]
                for name in names:
                    samples[name].append(await measure(apps[name], path, requests))
        finally:
            await ceiling.ceiling.stop()
    await pool.close()
    report(samples, requests=requests, rounds=rounds)


def report(samples: dict[str, list[float]], *, requests: int, rounds: int) -> None:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"GET /products/{{id}} in process: {rounds} alternating round(s) of {requests} requests, medians")
    print("  project: orders' create_app, prod sampler (spans not exported), JSON access lines to /dev/null")
    print("  plain Litestar: one route, the same read on an asyncpg pool, the same msgspec answer")
    print("  bare: bench/ceiling.py's ASGI app (bench/http.py's ceiling)")
    print()
    print(f"  {'app':<16} {'CPU µs/req':>11}   {'rounds':<30}")
    for name, median in medians.items():
        print(f"  {name:<16} {median:>11.0f}   {', '.join(f'{value:.0f}' for value in samples[name])}")
    project, plain, bare = medians["project"], medians["plain Litestar"], medians["bare"]
    print()
    print(f"  plain Litestar / bare: x{plain / bare:.2f} the CPU (the framework)")
    print(
        f"  project / plain Litestar: x{project / plain:.2f} the CPU (the project's layers: {project - plain:.0f} µs)"
    )
    print(f"  project / bare: x{project / bare:.2f} the CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000, help="requests per app per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    args = parser.parse_args()
    os.environ |= prod_tracing() | {"OTEL_TRACES_EXPORTER": "none"}
    with interrupt_guard(), bench_servers() as servers, open(os.devnull, "w") as discarded:
        from orders.app import DATABASE

        database_url = prepare_service_database(servers.postgres, DATABASE)
        stderr, sys.stderr = sys.stderr, discarded  # the access lines, as a container's log pipe takes them
        uvloop.install()  # granian's loop, and the ceiling's, when uvloop is installed (it is in the images)
        try:
            run(benchmark(database_url, requests=args.requests, rounds=args.rounds))
        finally:
            sys.stderr = stderr


if __name__ == "__main__":
    main()
