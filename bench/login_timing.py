"""Benchmark-style check: does ``POST /auth/login`` take as long for an unknown email as for a known one?

A sign-in that answers faster for an unknown email than for a wrong password tells an attacker which
emails have accounts. This runs the users app in process (the real app, the real argon2 costs of
production unless told otherwise) on a freshly started Postgres and times, interleaved, wrong-password
sign-ins for:

* **unknown**: an email with no account;
* **known**: an existing account, wrong password;
* **deactivated**: a deactivated account, wrong password;
* **throttled**: an account past its failure limit (an app whose limit is 1).

The known, unknown and deactivated lines run on an app whose limits are high enough never to throttle,
so each line measures its own path. It prints each line's median and the known/unknown ratio (1.0 is
the goal: every path costs one argon2 verify). Nothing is asserted: timings belong here, not in tests.

Run: ``uv run python -m bench.login_timing [--samples N] [--runs R] [--time-cost T] [--memory-kib M]``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from typing import TYPE_CHECKING

import msgspec

from devtools.testing import serve_app
from shared.auth import generate_private_key_pem
from shared.db import provision_service_role
from users.app import DATABASE, create_app
from users.settings import UsersSettings

from .harness import bench_servers, interrupt_guard, run

if TYPE_CHECKING:
    import httpx

    from .harness import PostgresServer

PASSWORD = "the right password"  # noqa: S105 - a throwaway account on a throwaway server
WRONG = "not the password!"
LINES = ("unknown", "known", "deactivated", "throttled")


async def _timed_login(client: httpx.AsyncClient, email: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = await client.post("/auth/login", json={"email": email, "password": WRONG})
    return (time.perf_counter() - started) * 1000, response.status_code


async def _prepare(client: httpx.AsyncClient, admin_email: str) -> None:
    """A known account, a deactivated one (deactivated through its own DELETE /users/me), a throttled one."""
    for email in ("known@example.com", "gone@example.com", "throttled@example.com", admin_email):
        response = await client.post(
            "/auth/register", json={"email": email, "password": PASSWORD, "display_name": "Bench"}
        )
        response.raise_for_status()
    token = (await client.post("/auth/login", json={"email": "gone@example.com", "password": PASSWORD})).json()
    gone = await client.delete("/users/me", headers={"Authorization": f"Bearer {token['access_token']}"})
    gone.raise_for_status()


async def benchmark(postgres: PostgresServer, *, samples: int, runs: int, time_cost: int, memory_kib: int) -> None:
    url = await provision_service_role(postgres.url(), service="users", password=secrets.token_urlsafe(16))
    await asyncio.to_thread(DATABASE.upgrade, url)
    lenient = UsersSettings(
        database_url=url,
        jwt_private_key=generate_private_key_pem(),
        password_hash_time_cost=time_cost,
        password_hash_memory_kib=memory_kib,
        login_max_failures_per_account=1_000_000,
        login_max_failures_per_address=1_000_000,
    )
    strict = msgspec.structs.replace(lenient, login_max_failures_per_account=1)
    async with serve_app(create_app(lenient)) as client, serve_app(create_app(strict)) as throttling:
        await _prepare(client, "admin@example.com")
        await _timed_login(throttling, "throttled@example.com")  # its one allowed failure
        emails = {"known": "known@example.com", "deactivated": "gone@example.com"}
        for _ in range(3):  # warm up: the first calls build the dummy hash, the pool, the statement cache
            for line in ("unknown", "known"):
                await _timed_login(client, emails.get(line, f"warmup-{secrets.token_hex(4)}@example.com"))
        print(
            f"login timing: {samples} wrong-password sign-ins per line and run, interleaved, one at a time; "
            f"argon2 time_cost={time_cost} memory={memory_kib} KiB"
        )
        for run in range(1, runs + 1):
            timings: dict[str, list[float]] = {line: [] for line in LINES}
            statuses: dict[str, set[int]] = {line: set() for line in LINES}
            for _ in range(samples):
                for line in LINES:
                    if line == "throttled":
                        elapsed, status = await _timed_login(throttling, "throttled@example.com")
                    else:
                        email = emails.get(line, f"nobody-{secrets.token_hex(6)}@example.com")
                        elapsed, status = await _timed_login(client, email)
                    timings[line].append(elapsed)
                    statuses[line].add(status)
            medians = {line: statistics.median(values) for line, values in timings.items()}
            cells = "  ".join(f"{line} {medians[line]:7.1f} ms {sorted(statuses[line])}" for line in LINES)
            print(f"run {run}: {cells}  known/unknown x{medians['known'] / medians['unknown']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    defaults = UsersSettings(database_url="")
    parser.add_argument("--time-cost", type=int, default=defaults.password_hash_time_cost)
    parser.add_argument("--memory-kib", type=int, default=defaults.password_hash_memory_kib)
    args = parser.parse_args()
    with interrupt_guard(), bench_servers(prefix="relay-bench-login-") as servers:
        run(
            benchmark(
                servers.postgres,
                samples=args.samples,
                runs=args.runs,
                time_cost=args.time_cost,
                memory_kib=args.memory_kib,
            )
        )


if __name__ == "__main__":
    main()
