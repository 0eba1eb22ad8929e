"""``just events``: every service's ``events status`` against the running local stack, side by side.

Each service's own command runs with the settings the stack gave it (``<data>/run/env/<service>.json``,
as ``just env`` prints them), so what is shown is exactly what ``<service> events status`` says:
the outbox backlog, the stream it publishes to, and each of its consumers' pending, ack-pending,
redelivered and dead-lettered counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING

from devtools.stack.supervisor import StackLock
from shared.events.topology import SERVICE_NAMES

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("main",)


def _status(data: Path, service: str) -> tuple[int, str]:
    env_file = data / "run" / "env" / f"{service}.json"
    if not env_file.exists():
        return 1, f"{service}: not run by this stack\n"
    environment = os.environ | json.loads(env_file.read_text())
    command = Path(sys.executable).with_name(service)
    done = subprocess.run(  # noqa: S603 - the service's own console script
        [str(command), "events", "status"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def main(argv: Sequence[str] | None = None, out: IO[str] = sys.stdout) -> int:
    """``python -m devtools.stack.events [--data DIR]``."""
    parser = argparse.ArgumentParser(prog="just events", description="Every service's events status.")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("RELAY_DATA", ".data")))
    data = parser.parse_args(argv).data.resolve()
    if StackLock(data).held_elsewhere() is None:
        sys.stderr.write(f"just events: no `just up` is running in {data}: start it first\n")
        return 1
    with ThreadPoolExecutor(max_workers=len(SERVICE_NAMES)) as pool:
        results = list(pool.map(lambda service: _status(data, service), SERVICE_NAMES))
    for service, (_code, text) in zip(SERVICE_NAMES, results, strict=True):
        out.write(f"{service}\n")
        out.write("".join(f"  {line}\n" for line in text.splitlines()))
    return max(code for code, _ in results)


if __name__ == "__main__":
    sys.exit(main())
