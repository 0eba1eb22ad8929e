"""The whole story over HTTP and SSE, and the faults it must survive, against real processes."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from devtools.testing import eventually
from tests.system.conftest import RunningStack

if TYPE_CHECKING:
    from devtools.stack.supervisor import StackPorts

PASSWORD = "system test password"
REPO = Path(__file__).resolve().parents[2]


class Customer:
    """A registered, signed-in user of the running stack."""

    def __init__(self, stack: RunningStack, token: str, user_id: str) -> None:
        self.stack = stack
        self.headers = {"Authorization": f"Bearer {token}"}
        self.id = user_id

    @classmethod
    async def register(cls, stack: RunningStack, name: str) -> Customer:
        email = f"{name}.{uuid.uuid4().hex[:8]}@example.com"
        async with httpx.AsyncClient(base_url=stack.url("users"), timeout=10) as users:
            account = await users.post(
                "/auth/register", json={"email": email, "password": PASSWORD, "display_name": name}
            )
            assert account.status_code == 201, account.text
            tokens = (await users.post("/auth/login", json={"email": email, "password": PASSWORD})).json()
        return cls(stack, tokens["access_token"], account.json()["id"])

    async def notifications(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        async with httpx.AsyncClient(base_url=self.stack.url("notify"), timeout=10) as notify:
            while True:
                page = (
                    await notify.get(
                        "/notifications", params={"limit": 100, "offset": len(items)}, headers=self.headers
                    )
                ).json()
                items += page["items"]
                if len(items) >= page["total"] or not page["items"]:
                    return items


async def admin_token(stack: RunningStack) -> str:
    email = f"admin.{uuid.uuid4().hex[:8]}@example.com"
    env = stack.env | _users_env(stack)
    users = Path(sys.executable).parent / "users"
    await asyncio.to_thread(
        subprocess.run,
        [str(users), "create-admin", "--email", email],
        input=f"{PASSWORD}\n{PASSWORD}\n",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    async with httpx.AsyncClient(base_url=stack.url("users"), timeout=10) as users_api:
        return str(
            (await users_api.post("/auth/login", json={"email": email, "password": PASSWORD})).json()["access_token"]
        )


def _users_env(stack: RunningStack) -> dict[str, str]:
    from devtools.stack.supervisor import DevStack

    devstack = DevStack(stack.data, stack.ports, services=("users",))
    return devstack.service_env("users", devstack.database_url("users"))


async def add_product(stack: RunningStack, admin: str, *, stock: int) -> str:
    async with httpx.AsyncClient(base_url=stack.url("orders"), timeout=10) as orders:
        response = await orders.post(
            "/products",
            json={
                "sku": f"SYS-{uuid.uuid4().hex[:8]}",
                "name": "System mug",
                "price": 990,
                "currency": "EUR",
                "stock": stock,
            },
            headers={"Authorization": f"Bearer {admin}"},
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def place_orders(customer: Customer, product_id: str, count: int, *, concurrency: int = 10) -> list[str]:
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=customer.stack.url("orders"), timeout=30) as orders:
        for start in range(0, count, concurrency):
            batch = [
                orders.post(
                    "/orders",
                    json={"items": [{"product_id": product_id, "quantity": 1}]},
                    headers=customer.headers | {"Idempotency-Key": uuid.uuid4().hex},
                )
                for _ in range(min(concurrency, count - start))
            ]
            for response in await asyncio.gather(*batch):
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
    return ids


def placed_notifications(items: list[dict[str, Any]]) -> int:
    return sum(1 for item in items if item["kind"] == "order_placed")


async def test_demo_tells_the_whole_story(stack: RunningStack) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "The story is told" in done.stdout
    assert "same order both times: True" in done.stdout
    assert "(user_deactivated)" in done.stdout
    # Alice's order emails reached the mail folder before her account was deactivated.
    emails = [line for line in done.stdout.splitlines() if line.strip().startswith("EML ")]
    assert len(emails) == 5, done.stdout[-4000:]
    assert sum("order" in line.lower() for line in emails) == 4, emails


async def test_every_event_crosses_within_a_few_seconds(stack: RunningStack) -> None:
    customer = await Customer.register(stack, "quick")
    await eventually(lambda: _has_kind(customer, "welcome"), within=10, what="users.user.registered reaching notify")
    admin = await admin_token(stack)
    product = await add_product(stack, admin, stock=5)
    [order_id] = await place_orders(customer, product, 1)
    await eventually(lambda: _has_kind(customer, "order_placed"), within=10, what="orders.order.placed reaching notify")
    async with httpx.AsyncClient(base_url=stack.url("users"), timeout=10) as users:
        assert (await users.delete("/users/me", headers=customer.headers)).status_code == 204

    async def cancelled() -> bool:
        async with httpx.AsyncClient(base_url=stack.url("orders"), timeout=10) as orders:
            order = (await orders.get(f"/orders/{order_id}", headers={"Authorization": f"Bearer {admin}"})).json()
        return bool(order["status"] == "cancelled")

    await eventually(cancelled, within=10, what="users.user.deactivated reaching orders")


async def _has_kind(customer: Customer, kind: str) -> bool:
    return any(item["kind"] == kind for item in await customer.notifications())


async def test_killing_the_notify_worker_mid_stream_still_gives_one_notification_per_order(stack: RunningStack) -> None:
    customer = await Customer.register(stack, "steady")
    admin = await admin_token(stack)
    product = await add_product(stack, admin, stock=1000)

    async def kill_midway() -> int:
        await asyncio.sleep(1.0)
        return stack.kill("notify-worker")

    orders, killed = await asyncio.gather(place_orders(customer, product, 200), kill_midway())
    assert len(set(orders)) == 200
    await asyncio.to_thread(
        stack.wait_restarted, "notify-worker", killed, f"http://127.0.0.1:{stack.ports.worker('notify')}/health/ready"
    )

    async def all_arrived() -> bool:
        return placed_notifications(await customer.notifications()) >= 200

    await eventually(all_arrived, within=90, what="200 order notifications")
    await asyncio.sleep(2)  # anything duplicated would arrive by now
    assert placed_notifications(await customer.notifications()) == 200


async def test_restarting_nats_mid_stream_loses_nothing(stack: RunningStack) -> None:
    customer = await Customer.register(stack, "through-outage")
    admin = await admin_token(stack)
    product = await add_product(stack, admin, stock=1000)

    async def restart_nats() -> int:
        await asyncio.sleep(0.5)
        return stack.kill("nats")

    orders, killed = await asyncio.gather(place_orders(customer, product, 100), restart_nats())
    await asyncio.to_thread(
        stack.wait_restarted, "nats", killed, f"http://127.0.0.1:{stack.ports.nats_monitor}/healthz"
    )

    async def all_arrived() -> bool:
        return placed_notifications(await customer.notifications()) >= len(orders)

    await eventually(all_arrived, within=90, what="every order's notification after the NATS restart")
    await asyncio.sleep(2)
    assert placed_notifications(await customer.notifications()) == len(orders) == 100


SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def contract_tokens(stack: RunningStack) -> dict[str, str]:
    """An administrator's and a customer's access token, taken before any fuzzing.

    Fuzzed sign-ins fill the per-address login limit; tokens taken first are not refused by it.
    """

    async def take() -> dict[str, str]:
        customer = await Customer.register(stack, "contract")
        return {"admin": await admin_token(stack), "customer": customer.headers["Authorization"].split()[-1]}

    return asyncio.run(take())


def schemathesis(stack: RunningStack, service: str, token: str, *selection: str) -> subprocess.CompletedProcess[str]:
    """``st run`` over a service's OpenAPI document: every check, every phase, a fixed seed."""
    st = Path(sys.executable).parent / "st"
    return subprocess.run(
        [
            str(st),
            "--config-file",
            str(SCHEMATHESIS_CONFIG),
            "run",
            f"{stack.url(service)}/docs/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "10",
            "--seed",
            "20261125",
            # One worker and no example database: the run depends on nothing but the seed and the
            # stack (a stored failing example from an earlier run would be replayed first).
            "--workers",
            "1",
            "--generation-database",
            "none",
            # NUL characters are refused at the input boundary by design (Postgres text cannot
            # hold them), a class tests/contract/test_hostile_input.py walks on every route.
            "--generation-allow-x00",
            "false",
            # The reproducing curl of a failure carries the real (throwaway) token.
            "--output-sanitize",
            "false",
            "-H",
            f"Authorization: Bearer {token}",
            "--exclude-path",
            "/notifications/stream",  # endless: tests/notify/test_live_stream.py reads it over HTTP
            *selection,
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def failures(output: str) -> str:
    """Schemathesis' report of the failures, each with its reproducing curl."""
    start = output.find("FAILURES")
    return output[start if start >= 0 else -8000 :][:30_000]


@pytest.mark.parametrize("service", ["users", "orders", "notify"])
async def test_schemathesis_finds_nothing_with_every_check_and_every_phase(
    stack: RunningStack, contract_tokens: dict[str, str], service: str
) -> None:
    # As an administrator, every operation but the one that deactivates the caller (users'
    # DELETE /users/me): that one runs first, as a customer (the administrator's fuzzing may
    # change that customer's role, which revokes their tokens), so the administrator's token
    # stays valid for the whole run.
    admin_run: tuple[str, ...] = ()
    if service == "users":
        admin_run = ("--exclude-operation-id", "deactivateOwnAccount")
        done = await asyncio.to_thread(
            schemathesis, stack, service, contract_tokens["customer"], "--include-operation-id", "deactivateOwnAccount"
        )
        assert done.returncode == 0, failures(done.stdout)
        assert " passed" in done.stdout
    done = await asyncio.to_thread(schemathesis, stack, service, contract_tokens["admin"], *admin_run)
    assert done.returncode == 0, failures(done.stdout)
    assert re.search(r"✅\s+Stateful", done.stdout), "the stateful phase did not run:\n" + done.stdout[-3000:]


def test_up_after_a_crash_of_the_supervisor_recovers_with_its_data(tmp_path: Path, stack_ports: StackPorts) -> None:
    from tests.system.conftest import RunningStack as Stack

    ports = type(stack_ports)(**{name: _free() for name in type(stack_ports).names()})
    first = Stack(data=tmp_path / "data", ports=ports)
    first.start()
    email = f"survivor.{uuid.uuid4().hex[:6]}@example.com"
    with httpx.Client(base_url=first.url("users"), timeout=10) as users:
        assert (
            users.post("/auth/register", json={"email": email, "password": PASSWORD, "display_name": "S"}).status_code
            == 201
        )
    postgres_pid = first.pid("postgres")
    first.crash()
    _wait_gone(postgres_pid)

    second = Stack(data=tmp_path / "data", ports=ports)
    second.start()
    try:
        with httpx.Client(base_url=second.url("users"), timeout=10) as users:
            assert users.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
    finally:
        assert second.stop() == 0


def _free() -> int:
    from devtools.stack.servers import free_port

    return free_port()


def _wait_gone(pid: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"process {pid} outlived its supervisor")
