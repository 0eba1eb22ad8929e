"""What every benchmark shares: its own servers in a temporary folder, and a clean Ctrl-C.

A benchmark's ``main`` is::

    with interrupt_guard(), bench_servers(nats=True) as servers:
        run(benchmark(servers.postgres, servers.nats, ...))

* ``interrupt_guard``: SIGINT and SIGTERM end the run through every ``finally`` (servers stopped,
  temporary folder removed), and a run that saw a signal ends with one line, "interrupted", and exit
  status 130, instead of the tracebacks of servers that a terminal's Ctrl-C stopped at the same
  moment (they share our process group).
* ``run``: ``asyncio.run`` whose main task is cancelled by those signals, so it unwinds its own
  ``finally`` blocks (workers stopped, pools closed) before the servers stop.
* ``bench_servers``: a fresh Postgres (fsync off) and, if asked, NATS, under one temporary folder.

The local stack's pieces come from ``devtools.stack`` through the one import below, so a move of
that package is a one-line change here.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

# The one place benchmarks import the local stack from (see the module docstring).
from devtools.stack import servers as stack_servers
from devtools.stack import supervisor as stack_supervisor

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

__all__ = (
    "BenchServers",
    "NatsServer",
    "PostgresServer",
    "bench_servers",
    "free_port",
    "interrupt_guard",
    "run",
    "signalled",
    "stack_servers",
    "stack_supervisor",
    "temporary_root",
)

PostgresServer = stack_servers.PostgresServer
NatsServer = stack_servers.NatsServer
free_port = stack_servers.free_port

# Signals received: a run that saw one ends with "interrupted", not with the errors of servers that
# a terminal's Ctrl-C stopped at the same moment (they share our process group).
_signals_received: list[int] = []


def _interrupt_outside_loop(signum: int, _frame: Any) -> NoReturn:
    # Without a handler, SIGTERM would end the process without the finally that stops the servers.
    _signals_received.append(signum)
    raise KeyboardInterrupt


def _interrupt_loop(task: asyncio.Task[None], signum: int) -> None:
    _signals_received.append(signum)
    task.cancel()  # the benchmark unwinds through its finally blocks: workers stopped, pools closed


async def _interruptible(main: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _interrupt_loop, task, signum)
    await task


def run(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, where SIGINT and SIGTERM cancel ``main`` instead of killing the process."""
    asyncio.run(_interruptible(main))


def signalled() -> bool:
    """Whether SIGINT or SIGTERM arrived since ``interrupt_guard`` began."""
    return bool(_signals_received)


@contextlib.contextmanager
def interrupt_guard() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into an orderly unwind; after one, exit 130 saying "interrupted"."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt_outside_loop)
    try:
        yield
    except BaseException:
        if not _signals_received:
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)


@contextlib.contextmanager
def temporary_root(prefix: str = "relay-bench-") -> Iterator[Path]:
    """A temporary folder the unprivileged Postgres account can traverse; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)  # the unprivileged Postgres account must traverse it when we run as root
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class BenchServers:
    """The servers of one benchmark run, and the folder they live in."""

    root: Path
    postgres: stack_servers.PostgresServer
    nats: stack_servers.NatsServer | None


@contextlib.contextmanager
def bench_servers(*, nats: bool = False, prefix: str = "relay-bench-") -> Iterator[BenchServers]:
    """A fresh Postgres (fsync off) and, with ``nats``, a NATS with JetStream; stopped afterwards."""
    with temporary_root(prefix) as root:
        postgres = stack_servers.PostgresServer(root / "postgres")
        nats_server = stack_servers.NatsServer(root / "nats") if nats else None
        try:
            postgres.start()
            if nats_server is not None:
                nats_server.start()
            yield BenchServers(root=root, postgres=postgres, nats=nats_server)
        finally:
            if nats_server is not None:
                nats_server.stop()
            postgres.stop()
