"""``just up``: every service on real Postgres and NATS, its refusals, and a clean stop on Ctrl-C.

The one full stack here is stopped the way a terminal stops it: SIGINT to the whole foreground
process group while orders are in flight. The refusals (ports, a second run, ``just env`` without a
stack) need no stack at all and run in seconds.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pytest

from devtools.stack.servers import free_port
from devtools.stack.supervisor import (
    DevStack,
    StackLock,
    StackPorts,
    StartupError,
    check_ports,
    installed_services,
)
from devtools.testing import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PASSWORD = "devstack test password"


def _children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if parent == pid:
                found.add(int(entry))
                found |= _children_of(int(entry))
    return found


def _process_group(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[2])


def _socket_inodes(pids: set[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _tcp_sockets(port: int, state: str) -> set[int]:
    """Inodes of IPv4 TCP sockets on local ``port`` in ``state`` (``0A`` listen, ``01`` established)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return {int(row[9]) for row in rows if int(row[1].split(":")[1], 16) == port and row[3] == state}


def _eventually_ready(url: str, also: object, within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200 and also():  # type: ignore[operator]
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _stack_ports(*, besides: int | None = None) -> StackPorts:
    """Free ports, all different: two free_port() calls may be handed the same one (and ``besides``)."""
    chosen: dict[str, int] = {}
    for name in StackPorts.names():
        port = free_port()
        while port in chosen.values() or port == besides:
            port = free_port()
        chosen[name] = port
    return StackPorts(**chosen)


def _port_env(ports: StackPorts) -> dict[str, str]:
    return {StackPorts.variable(name): str(port) for name, port in ports.named().items()}


def _run_up(
    data: Path, ports: StackPorts, *args: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devtools.stack", "--data", str(data), *args],
        env=os.environ | _port_env(ports) | (extra or {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def granian_like_listener() -> Iterator[socket.socket]:
    """A listener sharing its port the way granian does (``SO_REUSEPORT``): a second one could join it."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield listener
    listener.close()


@pytest.mark.parametrize("name", list(StackPorts.names()))
def test_every_taken_port_is_refused_by_name(name: str, granian_like_listener: socket.socket) -> None:
    taken = granian_like_listener.getsockname()[1]
    ports = StackPorts(**(_stack_ports(besides=taken).named() | {name: taken}))
    with pytest.raises(StartupError) as refused:
        check_ports(ports)
    message = str(refused.value)
    assert f"port {taken}" in message
    assert StackPorts.variable(name) in message
    assert StackPorts.purpose(name) in message
    assert "\n" not in message


def test_a_port_given_twice_is_refused_naming_both_variables() -> None:
    ports = _stack_ports()
    twice = StackPorts(**(ports.named() | {"notify_worker": ports.orders}))
    with pytest.raises(StartupError, match=r"RELAY_ORDERS_PORT .* and RELAY_NOTIFY_WORKER_PORT"):
        check_ports(twice)


def test_free_ports_pass_the_check() -> None:
    check_ports(_stack_ports())


def test_up_with_a_taken_port_says_so_in_one_line_and_starts_nothing(
    tmp_path: Path, granian_like_listener: socket.socket
) -> None:
    taken = granian_like_listener.getsockname()[1]
    ports = StackPorts(**(_stack_ports(besides=taken).named() | {"orders": taken}))
    done = _run_up(tmp_path / "data", ports)
    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        f"just up: port {taken} (RELAY_ORDERS_PORT, for the orders API) is already in use; "
        f"stop what holds it or move it with RELAY_ORDERS_PORT=<port>"
    ], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "data" / "postgres").exists()  # nothing was started


def test_up_with_a_port_that_is_not_a_number_says_so_in_one_line(tmp_path: Path) -> None:
    done = _run_up(tmp_path / "data", _stack_ports(), extra={"RELAY_NATS_PORT": "42x"})
    assert done.returncode != 0
    assert done.stderr.splitlines() == ["just up: RELAY_NATS_PORT='42x' is not a port number"]


def _fake_running_stack(data: Path) -> None:
    """What a running stack has on disk: pid files, Postgres's live postmaster.pid, secrets."""
    for path, text in {
        "run/orders-api.pid": "4242\n",
        "postgres/data/postmaster.pid": "4243\n/data\n",
        "secrets.json": "{}",
    }.items():
        (data / path).parent.mkdir(parents=True, exist_ok=True)
        (data / path).write_text(text)


@pytest.mark.parametrize(
    ("command", "refusal"),
    [
        (["--data"], "just up: already running"),
        (["--fresh", "--data"], "just up: already running"),
        (["reset", "--data"], "just reset: already running"),
    ],
    ids=["up", "up --fresh", "reset"],
)
def test_a_second_up_or_a_reset_in_the_same_folder_refuses_and_touches_nothing(
    tmp_path: Path, command: list[str], refusal: str
) -> None:
    data = tmp_path / "data"
    _fake_running_stack(data)
    holder = StackLock(data)
    assert holder.acquire() is None  # the first `just up` is this test process
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in data.rglob("*") if path.is_file()}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "devtools.stack", *command, str(data)],
            env=os.environ | _port_env(_stack_ports()),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        holder.release()
    assert done.returncode != 0
    [line] = done.stderr.splitlines()
    assert line.startswith(f"{refusal} (pid {os.getpid()}) in {data.resolve()}"), line
    after = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in data.rglob("*") if path.is_file()}
    assert after == before


def test_reset_wipes_the_data_when_no_stack_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _fake_running_stack(data)
    done = subprocess.run(
        [sys.executable, "-m", "devtools.stack", "reset", "--data", str(data)], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert not data.exists()


def test_the_lock_is_free_again_once_its_holder_is_gone(tmp_path: Path) -> None:
    lock = StackLock(tmp_path)
    assert lock.acquire() is None
    assert StackLock(tmp_path).held_elsewhere() == os.getpid()
    lock.release()
    assert StackLock(tmp_path).held_elsewhere() is None
    with open(lock.path) as file:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it


def test_env_without_a_running_stack_says_so_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "devtools.stack", "env", "orders", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"just env: no `just up` is running in {tmp_path.resolve()}: start it first"]


def test_after_a_crash_only_the_stacks_own_leftovers_are_killed(tmp_path: Path) -> None:
    stack = DevStack(tmp_path / "data", _stack_ports(), environ={})

    def sleeper(env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], env=os.environ | env, start_new_session=True
        )

    leftover = sleeper({"RELAY_STACK_DATA": str(stack.root)})  # a worker of the crashed run
    stranger = sleeper({})  # an unrelated process that got a pid from an old pid file
    try:
        stack.run_dir.mkdir(parents=True)
        (stack.run_dir / "orders-worker.pid").write_text(f"{leftover.pid}\n")
        (stack.run_dir / "notify-api.pid").write_text(f"{stranger.pid}\n")
        stack._clear_leftovers(grace=0.5)
        assert leftover.wait(10) == -signal.SIGKILL
        assert stranger.poll() is None
        assert not stack.run_dir.exists()
    finally:
        for process in (leftover, stranger):
            process.kill()
            process.wait()


def test_a_failing_migration_is_named_in_the_migration_process_last_line() -> None:
    nowhere = f"postgresql+asyncpg://users:nothing@127.0.0.1:{free_port()}/relay"
    done = subprocess.run(
        [sys.executable, "-m", "devtools.stack.migrations", "users"],
        env=os.environ | {"USERS_DATABASE_URL": nowhere},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].startswith("users: "), done.stdout + done.stderr


def test_a_persons_own_service_variables_reach_the_service_but_never_rewire_it(tmp_path: Path) -> None:
    ports = _stack_ports()
    mine = {
        "ORDERS_CORS_ALLOW_ORIGINS": "https://shop.example",
        "ORDERS_LOG_LEVEL": "DEBUG",
        "ORDERS_DATABASE_URL": "postgresql+asyncpg://someone@elsewhere/db",
        "ORDERS_HTTP_PORT": "1",
        "ORDERS_NATS_PASSWORD_FILE": "/nowhere",
        "NOTIFY_EMAIL_URL": "smtp://mail.example:25",
        "NOTIFY_UNSUBSCRIBE_SECRET_FILE": "/run/secrets/unsubscribe",
        "USERS_LOG_JSON": "true",
        "PATH": os.environ["PATH"],
    }
    stack = DevStack(tmp_path / "data", ports, environ=mine)
    orders = stack.service_env("orders", stack.database_url("orders"))
    # the person's settings pass through, and win over the supervisor's local defaults
    assert orders["ORDERS_CORS_ALLOW_ORIGINS"] == "https://shop.example"
    assert orders["ORDERS_LOG_LEVEL"] == "DEBUG"
    assert orders["ORDERS_LOG_JSON"] == "false"  # a local default where the person said nothing
    # the wiring to this stack is the supervisor's, whatever the environment says
    assert orders["ORDERS_DATABASE_URL"] == stack.database_url("orders")
    assert orders["ORDERS_HTTP_PORT"] == str(ports.orders)
    assert "ORDERS_NATS_PASSWORD_FILE" not in orders
    assert stack.ignored_variables("orders") == ["ORDERS_DATABASE_URL", "ORDERS_HTTP_PORT", "ORDERS_NATS_PASSWORD_FILE"]
    notify = stack.service_env("notify", stack.database_url("notify"))
    assert notify["NOTIFY_EMAIL_URL"] == "smtp://mail.example:25"
    assert notify["NOTIFY_UNSUBSCRIBE_SECRET_FILE"] == "/run/secrets/unsubscribe"
    assert "NOTIFY_UNSUBSCRIBE_SECRET" not in notify  # it would shadow the person's *_FILE
    assert stack.service_env("users", stack.database_url("users"))["USERS_LOG_JSON"] == "true"
    assert stack.ignored_variables("users") == stack.ignored_variables("notify") == []


async def _admin_token(data: Path, users_url: str) -> str:
    email = f"admin.{uuid.uuid4().hex[:8]}@example.com"
    bin_dir = os.path.dirname(sys.executable)
    # the README's way: the running stack's settings for the users CLI, eval'd in a shell
    script = (
        f'eval "$({sys.executable} -m devtools.stack env users --data {data})" && '
        f"{bin_dir}/users create-admin --email {email}"
    )
    clean = {key: value for key, value in os.environ.items() if not key.startswith("USERS_")}
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", script],
        input=f"{PASSWORD}\n{PASSWORD}\n",
        env=clean,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    async with httpx.AsyncClient(base_url=users_url, timeout=10) as users:
        login = await users.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return str(login.json()["access_token"])


async def _customer_token(users_url: str) -> str:
    email = f"buyer.{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(base_url=users_url, timeout=10) as users:
        account = await users.post("/auth/register", json={"email": email, "password": PASSWORD, "display_name": "B"})
        assert account.status_code == 201, account.text
        login = await users.post("/auth/login", json={"email": email, "password": PASSWORD})
    return str(login.json()["access_token"])


async def _orders_in_flight_through_ctrl_c(stack: subprocess.Popen[str], data: Path, ports: StackPorts) -> None:
    """Place 40 orders at once and press Ctrl-C (SIGINT to the group) once the API holds them all.

    The product's row is locked from here first, so every placement waits in Postgres for its stock
    lock: they are surely in flight at the Ctrl-C (a placement takes milliseconds; without the lock,
    some finished before the last connection was even made). The lock goes right after the Ctrl-C.
    """
    users_url, orders_url = f"http://127.0.0.1:{ports.users}", f"http://127.0.0.1:{ports.orders}"
    admin = await _admin_token(data, users_url)
    buyer = await _customer_token(users_url)
    database_url = DevStack(data, ports).database_url("orders").replace("postgresql+asyncpg://", "postgresql://")
    async with httpx.AsyncClient(base_url=orders_url, timeout=60, limits=httpx.Limits(max_connections=100)) as orders:
        product = await orders.post(
            "/products",
            json={"sku": f"DEV-{uuid.uuid4().hex[:8]}", "name": "Mug", "price": 990, "currency": "EUR", "stock": 1000},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert product.status_code == 201, product.text
        holder = await asyncpg.connect(database_url)
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM orders.product WHERE id = $1 FOR UPDATE", uuid.UUID(product.json()["id"]))
        finished: list[float] = []

        async def place() -> int:
            response = await orders.post(
                "/orders",
                json={"items": [{"product_id": product.json()["id"], "quantity": 1}]},
                headers={"Authorization": f"Bearer {buyer}", "Idempotency-Key": uuid.uuid4().hex},
            )
            finished.append(time.monotonic())
            return response.status_code

        in_flight = 40
        placing = [asyncio.create_task(place()) for _ in range(in_flight)]
        api = int((data / "run" / "orders-api.pid").read_text())

        async def all_accepted() -> bool:
            held = _socket_inodes(_children_of(api) | {api})
            return len(held & _tcp_sockets(ports.orders, "01")) >= in_flight

        # Ctrl-C once the orders API has accepted every connection: all of them are in flight
        try:
            await eventually(all_accepted, within=30, what="the orders API accepting every connection")
            interrupted = time.monotonic()
            os.killpg(stack.pid, signal.SIGINT)
            await asyncio.sleep(0.5)  # the supervisor is stopping the API while every order waits
            assert not finished, "an order finished while its stock was locked"
        finally:
            await lock.rollback()
            await holder.close()
        codes = await asyncio.gather(*placing, return_exceptions=True)
    assert codes == [201] * in_flight, codes
    assert max(finished) > interrupted, "every order finished before Ctrl-C: nothing was in flight"


def _wait_for_ready_line(stack: subprocess.Popen[str], lines: list[str], within: float = 180.0) -> None:
    assert stack.stdout is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = stack.stdout.readline()
        lines.append(line)
        if "Ctrl-C stops everything" in line or not line:
            break
    assert any("ready in" in line for line in lines), "".join(lines)


def test_up_serves_every_service_restarts_what_dies_and_ctrl_c_lets_requests_in_flight_finish(
    tmp_path: Path,
) -> None:
    services = installed_services()
    ports = _stack_ports()
    data = tmp_path / "data"
    # As a terminal runs it: the supervisor leads its own foreground process group, and Ctrl-C
    # sends SIGINT to that whole group.
    stack = subprocess.Popen(
        [sys.executable, "-m", "devtools.stack", "--data", str(data)],
        env=os.environ | _port_env(ports),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert stack.stdout is not None
    lines: list[str] = []
    children: set[int] = set()
    try:
        _wait_for_ready_line(stack, lines)
        children = _children_of(stack.pid)
        assert len(children) >= 2 + 2 * len(services)  # postgres, nats-server, an API and a worker each
        # every child leads its own process group: the terminal's SIGINT cannot reach it
        names = ["postgres", "nats", *(f"{s}-{role}" for s in services for role in ("api", "worker"))]
        leaders = {int((data / "run" / f"{name}.pid").read_text()) for name in names}
        assert all(_process_group(pid) == pid != stack.pid for pid in leaders)

        for service in services:
            base = f"http://127.0.0.1:{ports.api(service)}"
            with urllib.request.urlopen(f"{base}/docs/openapi.json", timeout=5) as response:
                assert json.load(response)["paths"]
            for url in (base, f"http://127.0.0.1:{ports.worker(service)}"):
                with urllib.request.urlopen(f"{url}/health/ready", timeout=5) as response:
                    assert json.load(response)["checks"] == {"database": "ok", "nats": "ok"}

        # a process that dies is restarted, as an orchestrator would
        pid_file = data / "run" / "users-worker.pid"
        killed = int(pid_file.read_text())
        os.kill(killed, signal.SIGKILL)
        worker = f"http://127.0.0.1:{ports.worker('users')}/health/ready"
        assert _eventually_ready(worker, lambda: int(pid_file.read_text()) != killed)

        asyncio.run(_orders_in_flight_through_ctrl_c(stack, data, ports))
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGINT)
        exit_code = stack.wait(90)
        lines += stack.stdout.readlines()
        stack.stdout.close()
    assert exit_code == 0, "".join(lines[-40:])
    assert not {pid for pid in children if os.path.exists(f"/proc/{pid}")}
    # stopped in order: the APIs (still with a database behind them), the workers, the trace
    # collector (it receives the spans they flush as they stop), NATS, Postgres
    stopped = [line.split("stopped ", 1)[1].strip() for line in lines if "| stopped " in line]
    assert stopped == [
        *(f"{s}-api" for s in services),
        *(f"{s}-worker" for s in services),
        "collector",
        "nats",
        "postgres",
    ], "".join(lines[-40:])
