"""Running the services' real console scripts as child processes, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from notify.cli import main as notify_main
from orders.cli import main as orders_main
from users.cli import main as users_main

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

SERVICES: dict[str, click.Group] = {"users": users_main, "orders": orders_main, "notify": notify_main}

COMMAND_TIMEOUT = 180.0
"""A generous bound: a command that spins or hangs fails the test instead of blocking the suite."""


@dataclass(frozen=True)
class Finished:
    """What a command left behind."""

    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def console_script(service: str) -> str:
    """The installed ``<service>`` command of this environment."""
    path = Path(sys.executable).with_name(service)
    assert path.exists(), f"{service} console script not installed at {path}"
    return str(path)


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any service's own variables, plus ``extra``."""
    prefixes = tuple(f"{service.upper()}_" for service in SERVICES)
    environment = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    environment.update(extra or {})
    return environment


def run_command(service: str, args: list[str], environment: dict[str, str], cwd: Path) -> Finished:
    """Run ``<service> <args>`` to its end (killed past ``COMMAND_TIMEOUT``)."""
    done = subprocess.run(
        [console_script(service), *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Finished(done.returncode, done.stdout, done.stderr)


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every runnable command of a click group, as the words that invoke it (``events replay``)."""
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)
