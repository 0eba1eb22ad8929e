"""``just up``: Postgres, NATS and every service process on this machine, under ``.data/``.

The supervisor owns every process it starts. Each child runs in its own session (process group):
a terminal's Ctrl-C reaches the supervisor alone, which stops the APIs first (they finish the
requests in flight), then the workers, then NATS, then Postgres. A child that dies is restarted
after its whole process group is gone (granian's worker outlives a SIGKILLed granian otherwise).
Children also die with the supervisor (parent-death signal), and a second run after a crash
reuses the data. One lock on the data directory keeps a second ``just up`` from touching it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from devtools.stack.servers import (
    NatsServer,
    PostgresServer,
    await_process,
    die_with_parent,
    kill_process_group,
    process_group_members,
)
from devtools.stack.services import DEV_SERVICES, DevService, dev_service
from devtools.traces.collector import TRACES_PATH
from devtools.traces.store import store_path
from shared.events.topology import SERVICE_NAMES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = (
    "DevStack",
    "ServiceProcess",
    "StackLock",
    "StackPorts",
    "StartupError",
    "check_ports",
    "installed_services",
    "main",
)

DATABASE = "relay"

INFRASTRUCTURE_PORTS = {
    "postgres": (5544, "Postgres"),
    "nats": (4333, "NATS"),
    "nats_monitor": (8333, "NATS monitoring"),
    # OTLP/HTTP's standard port: a bare `uv run orders api` beside `just up` finds it by default too.
    "collector": (4318, "the trace collector (OTLP/HTTP)"),
}
"""The servers' default ports and what they are, by port name; the services' come from ``DEV_SERVICES``."""

PROGRESS_EVERY = 5.0
"""Seconds between two "still waiting for ..." lines while the stack starts."""

STACK_MARKER = "RELAY_STACK_DATA"
"""Set in every service process's environment to the data directory: marks the processes as this
stack's, so a later run cleans up after a crash without ever touching anyone else's process."""


class StartupError(Exception):
    """``just up`` cannot start; the message is one line for the person who ran it."""


class StackPorts:
    """Fixed loopback ports of the local stack; each can be moved with a ``RELAY_*_PORT`` variable.

    One port per server (``postgres``, ``nats``, ``nats_monitor``) and three per service, named
    ``<service>`` (its API), ``<service>_worker`` and ``<service>_metrics``, each read as an
    attribute (``ports.orders_worker``). The services and their defaults come from ``DEV_SERVICES``.
    """

    __slots__ = ("_ports",)

    def __init__(self, **ports: int) -> None:
        defaults = self.defaults()
        if unknown := set(ports) - set(defaults):
            raise TypeError(f"no such port of the stack: {', '.join(sorted(unknown))}")
        self._ports = defaults | ports

    @staticmethod
    def defaults() -> dict[str, int]:
        """Every port's default by name: the servers', then every API's, every worker's, every metrics port."""
        ports = {name: port for name, (port, _) in INFRASTRUCTURE_PORTS.items()}
        ports |= {spec.name: spec.api_port for spec in DEV_SERVICES}
        ports |= {f"{spec.name}_worker": spec.worker_port for spec in DEV_SERVICES}
        ports |= {f"{spec.name}_metrics": spec.metrics_port for spec in DEV_SERVICES}
        return ports

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every port's name, in the order they are checked."""
        return tuple(cls.defaults())

    def __getattr__(self, name: str) -> int:
        # Only names that are not attributes get here; read the slot without coming back here.
        ports: dict[str, int] = object.__getattribute__(self, "_ports")
        if name not in ports:
            raise AttributeError(f"no such port of the stack: {name}")
        return ports[name]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StackPorts) and self.named() == other.named()

    def __hash__(self) -> int:
        return hash(tuple(self.named().items()))

    def __repr__(self) -> str:
        return f"StackPorts({', '.join(f'{name}={port}' for name, port in self.named().items())})"

    @classmethod
    def from_environment(cls) -> StackPorts:
        """The defaults, overridden by ``RELAY_POSTGRES_PORT``, ``RELAY_ORDERS_PORT``, ``RELAY_ORDERS_WORKER_PORT``.

        Raises:
            StartupError: A variable is not a port number.
        """
        values: dict[str, int] = {}
        for name, default in cls.defaults().items():
            variable = cls.variable(name)
            raw = os.environ.get(variable, str(default))
            try:
                values[name] = int(raw)
            except ValueError:
                raise StartupError(f"{variable}={raw!r} is not a port number") from None
            if not 0 < values[name] < 65536:  # noqa: PLR2004 - the TCP port range
                raise StartupError(f"{variable}={raw} is not a port number (1-65535)")
        return cls(**values)

    @staticmethod
    def variable(name: str) -> str:
        """The environment variable that moves port ``name``: ``orders_worker`` → ``RELAY_ORDERS_WORKER_PORT``."""
        return f"RELAY_{name.upper()}_PORT"

    @staticmethod
    def purpose(name: str) -> str:
        """What listens on port ``name``, in words."""
        if name in INFRASTRUCTURE_PORTS:
            return INFRASTRUCTURE_PORTS[name][1]
        service, _, role = name.partition("_")
        if service in SERVICE_NAMES:
            return f"the {service} API" if not role else f"the {service} {role.replace('_', ' ')}"
        return name.replace("_", " ")

    def named(self) -> dict[str, int]:
        """Every port by its name."""
        return dict(self._ports)

    def api(self, service: str) -> int:
        """The HTTP port of a service's API."""
        return self._ports[service]

    def worker(self, service: str) -> int:
        """The health and metrics port of a service's worker."""
        return self._ports[f"{service}_worker"]

    def metrics(self, service: str) -> int:
        """The internal ``/metrics`` port of a service's API (never its public port)."""
        return self._ports[f"{service}_metrics"]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a plain listener could take ``host:port`` now.

    ``SO_REUSEADDR`` only lets the probe ignore connections in TIME_WAIT (Linux never lets it share a
    port with a listener); without ``SO_REUSEPORT`` it also collides with a granian that shares
    its port through ``SO_REUSEPORT``, which a server of ours would otherwise join silently.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError:
            return False
    return True


def check_ports(ports: StackPorts) -> None:
    """Refuse to start when two ports are the same or one is taken, naming the port and its variable.

    Raises:
        StartupError: One line naming the first conflict found.
    """
    seen: dict[int, str] = {}
    for name, port in ports.named().items():
        if port in seen:
            first = seen[port]
            raise StartupError(
                f"port {port} is given twice: {StackPorts.variable(first)} ({StackPorts.purpose(first)}) "
                f"and {StackPorts.variable(name)} ({StackPorts.purpose(name)})"
            )
        seen[port] = name
    for name, port in ports.named().items():
        if not port_is_free(port):
            raise StartupError(
                f"port {port} ({StackPorts.variable(name)}, for {StackPorts.purpose(name)}) is already in use; "
                f"stop what holds it or move it with {StackPorts.variable(name)}=<port>"
            )


def installed_services() -> tuple[str, ...]:
    """The services whose package is present (a service is added to the stack by existing)."""
    return tuple(service for service in SERVICE_NAMES if importlib.util.find_spec(f"{service}.cli") is not None)


class StackLock:
    """An exclusive ``flock`` on ``<data>/up.lock``, held for the supervisor's whole life.

    The kernel releases it when the supervisor dies however it dies, so a stale lock never blocks.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / "up.lock"
        self._fd: int | None = None

    def acquire(self) -> int | None:
        """Take the lock and write our pid into it; returns ``None``, or the pid of the run holding it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._holder_pid()
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return None

    def held_elsewhere(self) -> int | None:
        """The pid of a running ``just up`` holding the lock, or ``None`` when none runs."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._holder_pid()
        finally:
            os.close(fd)  # closing drops the shared lock if we got it
        return None

    def _holder_pid(self) -> int:
        # the holder writes its pid right after taking the lock: give it a moment
        for _ in range(20):
            with contextlib.suppress(OSError, ValueError):
                return int(self.path.read_text().split()[0])
            time.sleep(0.05)
        return 0

    def release(self) -> None:
        """Drop the lock (the kernel does it anyway when the process ends)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class ServiceProcess:
    """One child process whose output is streamed with a prefix."""

    name: str
    command: Sequence[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    last_line: str = field(default="", repr=False)

    @property
    def role(self) -> str:
        """``api``, ``worker`` or ``migrate``: the last part of the name."""
        return self.name.rsplit("-", 1)[-1]

    def start(self, output: IO[str]) -> None:
        """Start the process and a thread that copies its output, prefixed, to ``output``.

        Call it from the main thread: the parent-death signal fires when the thread that forked
        the child ends, not only the process.
        """
        self.process = subprocess.Popen(  # noqa: S603 - our own console scripts
            list(self.command),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
            # Its own session and process group: the terminal's Ctrl-C reaches only the supervisor,
            # which stops the children in order, and the group reaches granian's worker processes.
            start_new_session=True,
        )
        stream = self.process.stdout
        assert stream is not None  # noqa: S101 - stdout=PIPE above
        prefix = f"{self.name:>14} | "
        if _is_terminal(output):
            # In a terminal, each service's lines are told apart at a glance by the colour of their name.
            prefix = f"{_colour_of(self.name.split('-')[0])}{self.name:>14}\033[0m | "

        def copy() -> None:
            for line in iter(stream.readline, b""):
                text = line.decode(errors="replace")
                if text.strip():
                    self.last_line = text.strip()
                output.write(prefix + text)
                output.flush()

        threading.Thread(target=copy, name=f"log-{self.name}", daemon=True).start()

    def exited(self) -> int | None:
        """The exit code if the process has ended, else ``None``."""
        return None if self.process is None else self.process.poll()

    def request_stop(self) -> None:
        """SIGTERM to the process itself: granian stops accepting and drains, a worker finishes its message."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def finish_stop(self, timeout: float) -> None:
        """Wait for the process, then SIGKILL whatever is left of its process group."""
        if self.process is not None:
            await_process(self.process, timeout)

    def stop(self, timeout: float = 25.0) -> None:
        """SIGTERM, then SIGKILL its whole process group if it has not stopped in time."""
        self.request_stop()
        self.finish_stop(timeout)


class DevStack:
    """The whole local system under ``root`` (default ``.data/``)."""

    def __init__(
        self,
        root: Path,
        ports: StackPorts,
        output: IO[str] = sys.stdout,
        services: tuple[str, ...] | None = None,
        environ: dict[str, str] | None = None,
        *,
        quiet: bool = False,
        service_bin: Path | None = None,
    ) -> None:
        self.root = root.resolve()
        self.service_bin = service_bin or Path(sys.executable).parent
        """Where the services' console scripts are (bench/http.py: an environment holding only what ships)."""
        self.ports = ports
        self.output = output
        self.environ = dict(os.environ) if environ is None else environ
        self.services = installed_services() if services is None else services
        self.quiet = quiet
        """``just up --quiet``: no access-log line per request (the services' other lines stay)."""
        self.postgres = PostgresServer(self.root / "postgres", port=ports.postgres, durable=True)
        self.processes: list[ServiceProcess] = []
        self.stored = self.secrets()
        self.nats = NatsServer(self.root / "nats", port=ports.nats, monitor_port=ports.nats_monitor)
        self.failure = ""
        """Why the last ``run`` could not start: ``main`` prints it as its one line."""

    @property
    def mail_dir(self) -> Path:
        """Where a service that sends email (notify) writes each one as an ``.eml`` file."""
        return self.root / "mail"

    @property
    def collector_url(self) -> str:
        """The local trace collector's base URL (OTLP/HTTP; spans go to ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.ports.collector}"

    def own_otlp_endpoint(self) -> str:
        """The person's own ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``, or ``""``: then no local collector runs."""
        for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            if self.environ.get(name, "").strip():
                return self.environ[name].strip()
        return ""

    def telemetry_env(self) -> dict[str, str]:
        """Where every service process exports its spans: the local collector, unless the person set an endpoint.

        Only the endpoint is set: the person's other ``OTEL_*`` variables (``OTEL_TRACES_EXPORTER=console``,
        a sampler, ...) reach the processes as they are.
        """
        return {} if self.own_otlp_endpoint() else {"OTEL_EXPORTER_OTLP_ENDPOINT": self.collector_url}

    def api_url(self, service: str) -> str:
        """The loopback URL of a service's API."""
        return f"http://127.0.0.1:{self.ports.api(service)}"

    def say(self, message: str) -> None:
        """A line from the supervisor itself."""
        self.output.write(f"{'up':>14} | {message}\n")
        self.output.flush()

    def secrets(self) -> dict[str, str]:
        """Role and NATS passwords, the token signing key and each service's own, made once and kept in ``.data/``."""
        path = self.root / "secrets.json"
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        wanted: dict[str, Callable[[], str]] = {_signing_key_name(): _new_signing_key}
        for spec in DEV_SERVICES:
            wanted |= spec.secrets
        for service in SERVICE_NAMES:
            wanted[f"{service}_db_password"] = lambda: secrets.token_urlsafe(16)
            wanted[f"{service}_nats_password"] = lambda: secrets.token_urlsafe(16)
        missing = {name: make() for name, make in wanted.items() if name not in stored}
        if missing:
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stored | missing, indent=2))
            path.chmod(0o600)
        return stored | missing

    def wiring(self, service: str, database_url: str) -> dict[str, str]:
        """The variables that connect a service to this stack; the supervisor's values always win."""
        prefix = service.upper()
        env = {
            f"{prefix}_DATABASE_URL": database_url,
            f"{prefix}_NATS_URL": self.nats.url,
            f"{prefix}_NATS_USER": service,
            f"{prefix}_NATS_PASSWORD": self.stored[f"{service}_nats_password"],
            f"{prefix}_HTTP_HOST": "127.0.0.1",
            f"{prefix}_HTTP_PORT": str(self.ports.api(service)),
            f"{prefix}_WORKER_HEALTH_PORT": str(self.ports.worker(service)),
            f"{prefix}_METRICS_PORT": str(self.ports.metrics(service)),
        }
        if dev_service(service).issues_tokens:
            env[f"{prefix}_JWT_PRIVATE_KEY"] = self.stored[_signing_key_name()]
        else:
            env[f"{prefix}_JWT_PUBLIC_KEYS"] = _public_key_pem(self.stored[_signing_key_name()])
        return env

    def local_defaults(self, service: str) -> dict[str, str]:
        """Settings the supervisor picks for local use; the person's own ``<SERVICE>_*`` variables win."""
        prefix = service.upper()
        env = {f"{prefix}_LOG_JSON": "false"}
        if self.quiet:
            env[f"{prefix}_ACCESS_LOG"] = "false"
        issuer = _token_issuer()
        if service == issuer.name:
            # Swagger UI on the other services' pages signs in at the issuer's /auth/token: cross-origin.
            others = [self.api_url(other) for other in SERVICE_NAMES if other != issuer.name]
            env[f"{prefix}_CORS_ALLOW_ORIGINS"] = ",".join(others)
        else:
            env[f"{prefix}_TOKEN_URL"] = f"{self.api_url(issuer.name)}{TOKEN_PATH}"
        return env | dev_service(service).local_settings(self)

    def own_variables(self, service: str, database_url: str) -> dict[str, str]:
        """Every ``<SERVICE>_*`` variable a service's processes get.

        Three layers, later ones winning: the supervisor's local defaults, the person's own
        ``<SERVICE>_*`` variables (CORS origins, log level, email URL, any setting), and the
        wiring to this stack (database, NATS, ports, keys), which a person's variable cannot
        override: move ports with ``RELAY_*_PORT`` instead. A person's ``X_FILE`` counts as ``X``.
        """
        prefix = f"{service.upper()}_"
        wiring = self.wiring(service, database_url)
        mine = {key: value for key, value in self.environ.items() if key.startswith(prefix)}
        defaults = {
            key: value
            for key, value in self.local_defaults(service).items()
            if key not in mine and f"{key}_FILE" not in mine
        }
        passed = {
            key: value for key, value in mine.items() if key not in wiring and key.removesuffix("_FILE") not in wiring
        }
        return defaults | passed | wiring

    def ignored_variables(self, service: str) -> list[str]:
        """The person's variables that ``own_variables`` overrides with the stack's wiring."""
        wiring = self.wiring(service, "")
        prefix = f"{service.upper()}_"
        return sorted(
            key
            for key in self.environ
            if key.startswith(prefix) and (key in wiring or key.removesuffix("_FILE") in wiring)
        )

    def service_env(self, service: str, database_url: str) -> dict[str, str]:
        """The environment of one service's processes: what Kubernetes would put in its ConfigMap and Secret."""
        prefix = f"{service.upper()}_"
        base = {key: value for key, value in self.environ.items() if not key.startswith(prefix)}
        return base | self.telemetry_env() | self.own_variables(service, database_url)

    def migration_env(self, urls: dict[str, str]) -> dict[str, str]:
        """The environment of the one process that migrates every service: each one's variables side by side."""
        prefixes = tuple(f"{service.upper()}_" for service in self.services)
        env = {key: value for key, value in self.environ.items() if not key.startswith(prefixes)}
        for service in self.services:
            env |= self.own_variables(service, urls[service])
        return env

    def run(self) -> int:
        """Start everything, wait until ready, then supervise (restarting what dies) until a signal.

        Returns:
            0 after a signal, 1 when start-up failed (one line says why) or a process kept dying.
        """
        started = time.monotonic()
        stopping = threading.Event()
        # SIGHUP too: a closed terminal no longer reaches the children (own sessions), so the
        # supervisor must stop them in order itself.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda *_: stopping.set())
        try:
            try:
                ready = self._start(stopping, started)
            except StartupError as error:
                self._fail(str(error))
                return 1
            except Exception as error:  # noqa: BLE001 - any start-up failure is one line, not a traceback
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                self._fail(f"{type(error).__name__}: {first}" if first else type(error).__name__)
                return 1
            if not ready:
                return 0
            return self._supervise(stopping)
        finally:
            self._stop_everything()

    def _fail(self, message: str) -> None:
        self.failure = message

    def _start(self, stopping: threading.Event, started: float) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self._clear_leftovers()
        check_ports(self.ports)
        from shared.events.permissions import nats_authorization

        self.nats.config = nats_authorization({s: self.stored[f"{s}_nats_password"] for s in SERVICE_NAMES})
        for service in self.services:
            for key in self.ignored_variables(service):
                self.say(f"ignoring {key} from the environment: just up sets it (ports move with RELAY_*_PORT)")
        # Both servers boot side by side; the supervisor imports the database layer meanwhile.
        self.say(f"starting postgres on 127.0.0.1:{self.ports.postgres} and nats on 127.0.0.1:{self.ports.nats}")
        self.nats.launch()
        self.postgres.launch()
        servers = {"postgres": self.postgres.poll_ready, "nats": self.nats.poll_ready}
        if not self.own_otlp_endpoint():
            listen, store = str(self.ports.collector), str(store_path(self.root))
            collector = ServiceProcess(
                "collector",
                [sys.executable, "-m", "devtools.traces.collector", "--port", listen, "--store", store],
                self.environ | {STACK_MARKER: str(self.root)},
            )
            collector.start(self.output)
            self.processes.append(collector)
            servers["collector"] = _answers_ready(collector, f"{self.collector_url}/health")
        import shared.db  # noqa: F401 - imported while the servers boot, used by _provision

        if not self._wait(servers, stopping, 60.0):
            return False
        urls = asyncio.run(self._provision())
        self.say(f"migrating {', '.join(self.services)}")
        # one process runs every service's own `migrate`: the libraries are imported once, not three times
        migration = ServiceProcess(
            "migrate",
            [sys.executable, "-m", "devtools.stack.migrations", *self.services],
            self.migration_env(urls) | {STACK_MARKER: str(self.root)},
        )
        migration.start(self.output)
        self.processes.append(migration)
        if not self._wait({migration.name: _finished(migration)}, stopping, 180.0):
            return False
        self.processes = [process for process in self.processes if process.role != "migrate"]
        self.say(f"starting {', '.join(f'{service}-api, {service}-worker' for service in self.services)}")
        waiting: dict[str, Callable[[], bool]] = {}
        for service in self.services:
            env = self.service_env(service, urls[service]) | {STACK_MARKER: str(self.root)}
            for role, port in (("api", self.ports.api(service)), ("worker", self.ports.worker(service))):
                process = ServiceProcess(f"{service}-{role}", [str(self.service_bin / service), role], env)
                process.start(self.output)
                self.processes.append(process)
                waiting[process.name] = _answers_ready(process, f"http://127.0.0.1:{port}/health/ready")
        if not self._wait(waiting, stopping, 180.0):
            return False
        self._write_run_files(urls)
        self._print_urls(time.monotonic() - started)
        return True

    def _wait(self, checks: dict[str, Callable[[], bool]], stopping: threading.Event, timeout: float) -> bool:
        """Poll every check until all pass; say which are still pending every few seconds.

        Returns False when a signal asked us to stop first. A check raises ``StartupError`` when
        what it waits for has failed; still waiting after ``timeout`` is a failure too.
        """
        pending = dict(checks)
        begun = time.monotonic()
        last_said = begun
        # Polled side by side: a busy process that takes its whole probe timeout to answer does not
        # delay noticing the others (or a failure).
        with ThreadPoolExecutor(max_workers=max(len(checks), 1), thread_name_prefix="ready") as probes:
            while pending:
                if stopping.is_set():
                    return False
                outcomes = {name: probes.submit(check) for name, check in pending.items()}
                for name, outcome in outcomes.items():
                    if outcome.result():
                        del pending[name]
                now = time.monotonic()
                if pending and now - begun > timeout:
                    raise StartupError(f"{', '.join(pending)} not ready after {timeout:.0f}s")
                if pending and now - last_said >= PROGRESS_EVERY:
                    self.say(f"waiting for {', '.join(pending)} ({now - begun:.0f}s)")
                    last_said = now
                if pending:
                    stopping.wait(0.1)
        return True

    def _clear_leftovers(self, grace: float = 20.0) -> None:
        # After a crash of the supervisor, its children are still on their way out (the
        # parent-death signal reached them). We hold the lock, so they are ours: wait for them,
        # then make sure their process groups are gone before anything binds their ports.
        # A pid file may be old and its pid reused: only processes marked as this stack's count.
        pid_files = list(self.run_dir.glob("*.pid")) if self.run_dir.exists() else []
        deadline = time.monotonic() + grace
        for pid_file in pid_files:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().split()[0])
                while self._ours(process_group_members(pid)) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if pid_file.stem != "postgres":  # Postgres is left to finish its shutdown
                    for member in self._ours(process_group_members(pid)):
                        with contextlib.suppress(OSError):
                            os.kill(member, signal.SIGKILL)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _ours(self, pids: set[int]) -> set[int]:
        """The processes among ``pids`` that this stack started (marked, or naming its data directory)."""
        marker, root = f"{STACK_MARKER}={self.root}".encode(), str(self.root).encode()
        found = set()
        for pid in pids:
            with contextlib.suppress(OSError):
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if marker in environ or root in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.add(pid)
        return found

    def _stop_everything(self) -> None:
        if self.nats.process is None and self.postgres.process is None and not self.processes:
            return  # refused before starting anything
        self.say("stopping")
        # APIs first: they stop accepting and finish the requests in flight while the database
        # and NATS still run; then the workers; then NATS; Postgres last.
        # The collector after the workers: it receives the spans they flush as they stop.
        for role, timeout in (("migrate", 10.0), ("api", 25.0), ("worker", 15.0), ("collector", 5.0)):
            group = [process for process in self.processes if process.role == role]
            for process in group:
                process.request_stop()
            for process in group:
                process.finish_stop(timeout)
                self.say(f"stopped {process.name}")
        for name, server in (("nats", self.nats), ("postgres", self.postgres)):
            if server.process is not None:
                server.stop()
                self.say(f"stopped {name}")
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.say("stopped")

    @property
    def run_dir(self) -> Path:
        """``<name>.pid`` of every process the stack runs, for operators and fault-injection tests."""
        return self.root / "run"

    def _write_run_files(self, urls: dict[str, str]) -> None:
        self._write_pid_files()
        env_dir = self.run_dir / "env"
        env_dir.mkdir(exist_ok=True)
        env_dir.chmod(0o700)
        for service in self.services:
            path = env_dir / f"{service}.json"
            path.write_text(json.dumps(self.own_variables(service, urls[service]), indent=2))
            path.chmod(0o600)

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
            dead = self._exited()
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
        children = {"postgres": self.postgres.process, "nats": self.nats.process}
        children |= {process.name: process.process for process in self.processes}
        old = children[name]
        if old is not None:
            # A SIGKILLed granian leaves its worker serving the port under PID 1: the whole old
            # group goes before the new process starts, so exactly one listens afterwards.
            kill_process_group(old.pid)
        try:
            if name == "postgres":
                self.postgres.start()
            elif name == "nats":
                self.nats.start()
            else:
                next(process for process in self.processes if process.name == name).start(self.output)
        except (RuntimeError, TimeoutError) as error:
            self.say(f"{name} did not start again: {error}")

    def database_url(self, service: str) -> str:
        """The URL a service connects with, as its own role."""
        return self.postgres.url(DATABASE, user=service, password=self.stored[f"{service}_db_password"])

    async def _provision(self) -> dict[str, str]:
        from shared.db import provision_service_role

        await _ensure_database(self.postgres.url(), DATABASE)
        for service in self.services:  # one after another: concurrent GRANTs on the database collide
            await provision_service_role(
                self.postgres.url(DATABASE), service=service, password=self.stored[f"{service}_db_password"]
            )
        return {service: self.database_url(service) for service in self.services}

    def _print_urls(self, seconds: float) -> None:
        rows = []
        for service in self.services:
            api = f"http://127.0.0.1:{self.ports.api(service)}"
            rows += [(f"{service} API", api), (f"{service} docs", f"{api}/docs")]
            rows.append((f"{service} worker", f"http://127.0.0.1:{self.ports.worker(service)}/health/ready"))
            rows.append((f"{service} metrics", f"http://127.0.0.1:{self.ports.metrics(service)}/metrics"))
        rows += [
            ("postgres", f"postgresql://postgres@127.0.0.1:{self.ports.postgres}/{DATABASE}"),
            ("nats", self.nats.url),
        ]
        rows += [row for service in self.services for row in dev_service(service).shown(self).items()]
        if own := self.own_otlp_endpoint():
            rows.append(("traces", f"exported to {own} (your OTEL_EXPORTER_OTLP_*ENDPOINT; no local collector)"))
        else:
            rows.append(("traces", f"{self.collector_url}{TRACES_PATH}: uv run just traces, uv run just trace last"))
        self.say(f"ready in {seconds:.1f}s")
        for name, url in rows:
            self.say(f"  {name:<15} {url}")
        self.say('one service\'s settings for its CLI: eval "$(uv run just env <service>)"')
        self.say("Ctrl-C stops everything")


_PREFIX_COLOURS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m")


def _colour_of(name: str) -> str:
    """One colour per service (in their declared order), another for the servers and the collector."""
    if name in SERVICE_NAMES:
        return _PREFIX_COLOURS[SERVICE_NAMES.index(name) % len(_PREFIX_COLOURS)]
    return "\033[2m"  # dim: postgres, nats, the collector, the migration


def _is_terminal(output: IO[str]) -> bool:
    return bool(getattr(output, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def _finished(process: ServiceProcess) -> Callable[[], bool]:
    def check() -> bool:
        code = process.exited()
        if code is None:
            return False
        if code != 0:
            said = f": {process.last_line}" if process.last_line else ""
            raise StartupError(f"{process.name} failed with exit code {code}{said}")
        return True

    return check


def _answers_ready(process: ServiceProcess, url: str) -> Callable[[], bool]:
    def check() -> bool:
        code = process.exited()
        if code is not None:
            said = f": {process.last_line}" if process.last_line else ""
            raise StartupError(f"{process.name} exited with {code} during start-up{said}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)  # noqa: PLR2004
        return False

    return check


TOKEN_PATH = "/auth/token"  # noqa: S105 - a URL path, not a secret
"""The token issuer's OAuth2 password-flow endpoint, where Swagger UI signs in."""


def _token_issuer() -> DevService:
    """The one service that signs access tokens."""
    (issuer,) = (spec for spec in DEV_SERVICES if spec.issues_tokens)
    return issuer


def _signing_key_name() -> str:
    """The name of the token signing key in ``secrets.json`` (``users_jwt_private_key``)."""
    return f"{_token_issuer().name}_jwt_private_key"


# The two key helpers use cryptography directly: importing shared.auth would import Litestar
# into the supervisor, seconds of start-up spent before Postgres even starts.


def _new_signing_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return (
        Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )


def _public_key_pem(private_key_pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


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


def export_lines(root: Path, service: str) -> str:
    """``export`` lines with the settings a running stack gave ``service``, for ``eval`` in a shell.

    Raises:
        StartupError: No ``just up`` runs in ``root``, or it does not run ``service``.
    """
    holder = StackLock(root).held_elsewhere()
    env_file = root / "run" / "env" / f"{service}.json"
    if holder is None:
        raise StartupError(f"no `just up` is running in {root}: start it first")
    if not env_file.exists():
        raise StartupError(f"the stack in {root} (pid {holder}) runs no service {service!r} or is still starting")
    variables: dict[str, str] = json.loads(env_file.read_text())
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in sorted(variables.items()))


def _fresh(root: Path, keep: Iterable[Path]) -> None:
    kept = {path.resolve() for path in keep}
    for entry in root.iterdir() if root.exists() else ():
        if entry.resolve() in kept:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _reset(root: Path) -> int:
    """Wipe ``root`` unless a ``just up`` runs on it (then say so and touch nothing)."""
    if not root.exists():
        return 0
    lock = StackLock(root)
    holder = lock.acquire()
    if holder is not None:
        sys.stderr.write(f"just reset: already running (pid {holder}) in {root.resolve()}; stop it first\n")
        return 1
    _fresh(root, keep=[lock.path])
    lock.path.unlink()
    root.rmdir()
    lock.release()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m devtools.stack [--fresh] [--data DIR]``, or ``... env SERVICE``, or ``... reset``.

    Every failure to start is one line on stderr and a non-zero exit code.
    """
    import argparse

    arguments = list(sys.argv[1:] if argv is None else argv)
    default_data = Path(os.environ.get("RELAY_DATA", ".data"))
    if arguments[:1] == ["env"]:
        parser = argparse.ArgumentParser(
            prog="just env", description="Print the export lines one service's CLI needs against the running stack."
        )
        parser.add_argument("service", choices=SERVICE_NAMES)
        parser.add_argument("--data", type=Path, default=default_data, help="data directory (default .data)")
        args = parser.parse_args(arguments[1:])
        try:
            sys.stdout.write(export_lines(args.data.resolve(), args.service))
        except StartupError as error:
            sys.stderr.write(f"just env: {error}\n")
            return 1
        return 0
    if arguments[:1] == ["reset"]:
        parser = argparse.ArgumentParser(prog="just reset", description="Wipe the local stack's data.")
        parser.add_argument("--data", type=Path, default=default_data, help="data directory (default .data)")
        return _reset(parser.parse_args(arguments[1:]).data)
    parser = argparse.ArgumentParser(prog="just up", description="Run Relay Shop locally.")
    parser.add_argument("--fresh", action="store_true", help="wipe the data directory first")
    parser.add_argument("--quiet", action="store_true", help="no access-log line per request")
    parser.add_argument("--data", type=Path, default=default_data, help="data directory (default .data)")
    args = parser.parse_args(arguments)
    lock = StackLock(args.data)
    try:
        holder = lock.acquire()
        if holder is not None:
            raise StartupError(f"already running (pid {holder}) in {args.data.resolve()}")
        if args.fresh:
            _fresh(args.data, keep=[lock.path])
        stack = DevStack(args.data, StackPorts.from_environment(), quiet=args.quiet)
    except (StartupError, OSError, ValueError) as error:
        sys.stderr.write(f"just up: {error}\n")
        return 1
    code = stack.run()
    if stack.failure:
        sys.stderr.write(f"just up: {stack.failure}\n")
    lock.release()
    return code
