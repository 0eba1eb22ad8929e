"""``just up``: Postgres, NATS and every service process on this machine, under ``.data/``.

The supervisor owns every process it starts: servers and services die with it (Ctrl-C, SIGTERM,
or a crash of the supervisor itself), and a second run after a crash reuses the data.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from shared.auth import AccessTokenSigner, generate_private_key_pem
from shared.db import provision_service_role
from shared.devstack.servers import NatsServer, PostgresServer, die_with_parent, stop_process
from shared.events.permissions import nats_authorization

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ("SERVICES", "DevStack", "ServiceProcess", "StackPorts", "installed_services")

DATABASE = "relay"


SERVICES = ("users", "orders", "notify")


@dataclass(frozen=True)
class StackPorts:
    """Fixed loopback ports of the local stack; each can be moved with a ``RELAY_*_PORT`` variable."""

    postgres: int = 5544
    nats: int = 4333
    nats_monitor: int = 8333
    users: int = 8001
    orders: int = 8002
    notify: int = 8003
    users_worker: int = 9001
    orders_worker: int = 9002
    notify_worker: int = 9003

    @classmethod
    def from_environment(cls) -> StackPorts:
        """The defaults, overridden by ``RELAY_POSTGRES_PORT``, ``RELAY_ORDERS_PORT``, ``RELAY_ORDERS_WORKER_PORT``."""
        defaults = cls()
        values = {
            name: int(os.environ.get(f"RELAY_{name.upper()}_PORT", getattr(defaults, name)))
            for name in cls.__dataclass_fields__
        }
        return cls(**values)

    def api(self, service: str) -> int:
        """The HTTP port of a service's API."""
        return int(getattr(self, service))

    def worker(self, service: str) -> int:
        """The health and metrics port of a service's worker."""
        return int(getattr(self, f"{service}_worker"))


def installed_services() -> tuple[str, ...]:
    """The services whose package is present (a service is added to the stack by existing)."""
    return tuple(service for service in SERVICES if importlib.util.find_spec(f"{service}.cli") is not None)


@dataclass
class ServiceProcess:
    """One child process whose output is streamed with a prefix."""

    name: str
    command: Sequence[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, output: IO[str]) -> None:
        """Start the process and a thread that copies its output, prefixed, to ``output``."""
        self.process = subprocess.Popen(  # noqa: S603 - our own console scripts
            list(self.command),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
        )
        stream = self.process.stdout
        assert stream is not None  # noqa: S101 - stdout=PIPE above
        prefix = f"{self.name:>13} | "

        def copy() -> None:
            for line in iter(stream.readline, b""):
                output.write(prefix + line.decode(errors="replace"))
                output.flush()

        threading.Thread(target=copy, name=f"log-{self.name}", daemon=True).start()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not stopped in time."""
        stop_process(self.process, timeout)


class DevStack:
    """The whole local system under ``root`` (default ``.data/``)."""

    def __init__(
        self,
        root: Path,
        ports: StackPorts,
        output: IO[str] = sys.stdout,
        services: tuple[str, ...] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.ports = ports
        self.output = output
        self.services = installed_services() if services is None else services
        self.postgres = PostgresServer(self.root / "postgres", port=ports.postgres, durable=True)
        self.processes: list[ServiceProcess] = []
        self.stored = self.secrets()
        self.nats = NatsServer(
            self.root / "nats",
            port=ports.nats,
            monitor_port=ports.nats_monitor,
            config=nats_authorization({service: self.stored[f"{service}_nats_password"] for service in SERVICES}),
        )

    @property
    def mail_dir(self) -> Path:
        """Where notify writes each email as an ``.eml`` file."""
        return self.root / "mail"

    def say(self, message: str) -> None:
        """A line from the supervisor itself."""
        self.output.write(f"{'up':>13} | {message}\n")
        self.output.flush()

    def secrets(self) -> dict[str, str]:
        """Role and NATS passwords and the users signing key, made once and kept in ``.data/``."""
        path = self.root / "secrets.json"
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        wanted: dict[str, Callable[[], str]] = {"users_jwt_private_key": generate_private_key_pem}
        wanted |= {"notify_unsubscribe_secret": lambda: secrets.token_urlsafe(32)}
        for service in SERVICES:
            wanted[f"{service}_db_password"] = lambda: secrets.token_urlsafe(16)
            wanted[f"{service}_nats_password"] = lambda: secrets.token_urlsafe(16)
        missing = {name: make() for name, make in wanted.items() if name not in stored}
        if missing:
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stored | missing, indent=2))
            path.chmod(0o600)
        return stored | missing

    def service_env(self, service: str, database_url: str) -> dict[str, str]:
        """The environment of one service's processes: what Kubernetes would put in its ConfigMap and Secret."""
        prefix = service.upper()
        stored = self.stored
        base = {key: value for key, value in os.environ.items() if not key.startswith(f"{prefix}_")}
        env = base | {
            f"{prefix}_DATABASE_URL": database_url,
            f"{prefix}_NATS_URL": self.nats.url,
            f"{prefix}_NATS_USER": service,
            f"{prefix}_NATS_PASSWORD": stored[f"{service}_nats_password"],
            f"{prefix}_HTTP_HOST": "127.0.0.1",
            f"{prefix}_HTTP_PORT": str(self.ports.api(service)),
            f"{prefix}_WORKER_HEALTH_PORT": str(self.ports.worker(service)),
            f"{prefix}_LOG_JSON": "false",
        }
        signer = AccessTokenSigner(stored["users_jwt_private_key"], issuer="users", audiences=SERVICES, ttl_seconds=1)
        if service == "users":
            env[f"{prefix}_JWT_PRIVATE_KEY"] = stored["users_jwt_private_key"]
        else:
            env[f"{prefix}_JWT_PUBLIC_KEYS"] = signer.public_key_pem()
        if service == "notify":
            env |= {
                "NOTIFY_EMAIL_URL": self.mail_dir.as_uri(),
                "NOTIFY_UNSUBSCRIBE_SECRET": stored["notify_unsubscribe_secret"],
                "NOTIFY_PUBLIC_BASE_URL": f"http://127.0.0.1:{self.ports.api(service)}",
            }
        return env

    def run(self) -> int:
        """Start everything, wait until ready, then supervise (restarting what dies) until a signal."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        started = time.monotonic()
        stopping = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.set())
        try:
            self.say(f"postgres on 127.0.0.1:{self.ports.postgres} ({self.postgres.bin_dir})")
            self.postgres.start()
            self.say(f"nats on 127.0.0.1:{self.ports.nats}")
            self.nats.start()
            urls = asyncio.run(self._provision())
            bin_dir = Path(sys.executable).parent
            for service in self.services:
                env = self.service_env(service, urls[service])
                self.say(f"migrating {service}")
                subprocess.run([str(bin_dir / service), "migrate"], env=env, check=True)  # noqa: S603
                for role in ("api", "worker"):
                    process = ServiceProcess(f"{service}-{role}", [str(bin_dir / service), role], env)
                    process.start(self.output)
                    self.processes.append(process)
            for service in self.services:
                self._wait_ready(f"http://127.0.0.1:{self.ports.api(service)}/health/ready", stopping)
                self._wait_ready(f"http://127.0.0.1:{self.ports.worker(service)}/health/ready", stopping)
            if stopping.is_set():
                return 0
            self._write_pid_files()
            self._print_urls(time.monotonic() - started)
            return self._supervise(stopping)
        finally:
            self.say("stopping")
            for process in reversed(self.processes):
                process.stop()
            self.nats.stop()
            self.postgres.stop()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.say("stopped")

    @property
    def run_dir(self) -> Path:
        """``<name>.pid`` of every process the stack runs, for operators and fault-injection tests."""
        return self.root / "run"

    def _write_pid_files(self) -> None:
        self.run_dir.mkdir(exist_ok=True)
        children = {"postgres": self.postgres.process, "nats": self.nats.process}
        children |= {process.name: process.process for process in self.processes}
        for name, child in children.items():
            if child is not None:
                (self.run_dir / f"{name}.pid").write_text(f"{child.pid}\n")

    def _supervise(self, stopping: threading.Event, max_restarts: int = 5) -> int:
        """Restart whatever dies, as an orchestrator would; give up on a process that keeps dying."""
        restarts: dict[str, int] = {}
        while not stopping.wait(0.5):
            dead = [(name, code) for name, code in self._exited()]
            for name, code in dead:
                restarts[name] = restarts.get(name, 0) + 1
                if restarts[name] > max_restarts:
                    self.say(f"{name} exited with {code} {max_restarts} times; stopping")
                    return 1
                self.say(f"{name} exited with {code}; restarting")
                self._restart(name)
            if dead:
                self._write_pid_files()
        return 0

    def _exited(self) -> list[tuple[str, int]]:
        children = {"postgres": self.postgres.process, "nats": self.nats.process}
        children |= {process.name: process.process for process in self.processes}
        return [
            (name, child.returncode)
            for name, child in children.items()
            if child is not None and child.poll() is not None
        ]

    def _restart(self, name: str) -> None:
        if name == "postgres":
            self.postgres.start()
        elif name == "nats":
            self.nats.start()
        else:
            next(process for process in self.processes if process.name == name).start(self.output)

    def database_url(self, service: str) -> str:
        """The URL a service connects with, as its own role."""
        return self.postgres.url(DATABASE, user=service, password=self.stored[f"{service}_db_password"])

    async def _provision(self) -> dict[str, str]:
        await _ensure_database(self.postgres.url(), DATABASE)
        for service in self.services:
            await provision_service_role(
                self.postgres.url(DATABASE), service=service, password=self.stored[f"{service}_db_password"]
            )
        return {service: self.database_url(service) for service in self.services}

    def _wait_ready(self, url: str, stopping: threading.Event, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stopping.is_set():
            with suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
                if response.status == 200:  # noqa: PLR2004
                    return
            for process in self.processes:
                if process.process is not None and process.process.poll() is not None:
                    raise RuntimeError(f"{process.name} exited during start-up")
            time.sleep(0.2)
        if not stopping.is_set():
            raise TimeoutError(f"{url} not ready after {timeout}s")

    def _print_urls(self, seconds: float) -> None:
        rows = []
        for service in self.services:
            api = f"http://127.0.0.1:{self.ports.api(service)}"
            rows += [(f"{service} API", api), (f"{service} docs", f"{api}/docs")]
            rows.append((f"{service} worker", f"http://127.0.0.1:{self.ports.worker(service)}/health/ready"))
        rows += [
            ("postgres", f"postgresql://postgres@127.0.0.1:{self.ports.postgres}/{DATABASE}"),
            ("nats", self.nats.url),
        ]
        if "notify" in self.services:
            rows.append(("mail", str(self.mail_dir)))
        self.say(f"ready in {seconds:.1f}s")
        for name, url in rows:
            self.say(f"  {name:<15} {url}")
        self.say("Ctrl-C stops everything")


async def _ensure_database(admin_url: str, name: str) -> None:
    from sqlalchemy import pool, text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(admin_url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            exists = await connection.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if not exists:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shared.devstack [--fresh] [--data DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="just up", description="Run Relay Shop locally.")
    parser.add_argument("--fresh", action="store_true", help="wipe the data directory first")
    parser.add_argument("--data", type=Path, default=Path(".data"), help="data directory (default .data)")
    args = parser.parse_args(argv)
    if args.fresh:
        shutil.rmtree(args.data, ignore_errors=True)
    return DevStack(args.data, StackPorts.from_environment()).run()
