"""The whole system as real processes, started by the same supervisor as ``just up``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devtools.stack.servers import die_with_parent, free_port
from devtools.stack.supervisor import StackPorts
from shared.events.topology import SERVICE_NAMES

if TYPE_CHECKING:
    from collections.abc import Iterator

READY_LINE = "Ctrl-C stops everything"
CORS_ORIGIN = "https://shop.example.test"


@dataclass
class RunningStack:
    """A ``just up`` in a temporary data directory, on free ports."""

    data: Path
    ports: StackPorts
    process: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    """The person's own variables ``just up`` is started with (``ORDERS_CORS_ALLOW_ORIGINS``, ...)."""

    @property
    def env(self) -> dict[str, str]:
        """The environment that points the supervisor, and ``scripts/demo.py``, at these ports."""
        ports = {f"RELAY_{name.upper()}_PORT": str(getattr(self.ports, name)) for name in StackPorts.names()}
        return os.environ | ports | {"RELAY_DATA": str(self.data)} | self.extra_env

    def url(self, service: str) -> str:
        """The base URL of a service's API."""
        return f"http://127.0.0.1:{self.ports.api(service)}"

    def start(self, timeout: float = 120.0) -> None:
        """Start the supervisor and wait until it says everything is ready."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devtools.stack", "--data", str(self.data)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # its own process group, as in a terminal; and it goes when the test run dies
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
        )
        ready = threading.Event()
        ended = threading.Event()
        stream = self.process.stdout
        assert stream is not None

        def collect() -> None:
            for line in stream:
                self.log.append(line)
                if READY_LINE in line:
                    ready.set()
            ended.set()

        threading.Thread(target=collect, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.is_set() and not ended.is_set() and time.monotonic() < deadline:
            ready.wait(0.2)
        if not ready.is_set():
            self.stop()
            raise AssertionError("the stack did not come up:\n" + "".join(self.log[-60:]))

    def pid(self, name: str) -> int:
        """The pid of ``postgres``, ``nats`` or ``<service>-api|worker``."""
        return int((self.data / "run" / f"{name}.pid").read_text())

    def kill(self, name: str) -> int:
        """SIGKILL one process of the stack; the supervisor will start it again."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, name: str, old_pid: int, health_url: str, within: float = 60.0) -> None:
        """Wait until ``name`` runs under a new pid and answers ready again."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if self.pid(name) != old_pid:
                    with urllib.request.urlopen(health_url, timeout=2) as response:
                        if response.status == 200:
                            return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{name} did not come back:\n" + "".join(self.log[-40:]))

    def crash(self) -> None:
        """SIGKILL the supervisor itself: it cleans nothing up, its children die with it."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self) -> int:
        """Ctrl-C, as a person would; returns the supervisor's exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is not None:
            if self.process.stdout is not None:
                self.process.stdout.close()
            return self.process.returncode
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


@pytest.fixture(scope="session")
def stack_ports() -> StackPorts:
    # free_port() may hand out a port it handed out before (it is free again once probed): draw
    # until every port of the stack is a different one.
    ports: dict[str, int] = {}
    for name in StackPorts.names():
        while (port := free_port()) in ports.values():
            pass
        ports[name] = port
    return StackPorts(**ports)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, stack_ports: StackPorts) -> Iterator[RunningStack]:
    """The whole system, once for the session's system tests."""
    running = RunningStack(
        data=tmp_path_factory.mktemp("stack") / "data",
        ports=stack_ports,
        # A person's own settings reach the services; one that would rewire the stack is ignored.
        extra_env={f"{service.upper()}_CORS_ALLOW_ORIGINS": CORS_ORIGIN for service in SERVICE_NAMES}
        | {"ORDERS_DATABASE_URL": "postgresql+asyncpg://nobody:nothing@127.0.0.1:1/nowhere"}
        # The test plugin turns span export off for every test; this stack's spans go to its collector.
        | {"OTEL_TRACES_EXPORTER": "otlp"},
    )
    running.start()
    yield running
    assert running.stop() == 0, "".join(running.log[-40:])
