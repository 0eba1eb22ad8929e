"""``python -m devtools.stack.migrations users orders notify``: every service's ``migrate``, in one process.

``just up`` migrates all services at start. Each ``<service> migrate`` process spends seconds of
CPU importing the same libraries before it sends its first statement; running the services' own
``migrate`` commands (their console scripts, found by name) one after another in one interpreter
pays that once. Each service reads its ``<SERVICE>_*`` settings from this process's environment.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("main",)


def main(services: Sequence[str] | None = None) -> int:
    """Run ``<service> migrate`` for each service named; returns 1 if any of them failed.

    Args:
        services: The services to migrate (default: the command line's arguments).
    """
    failed: list[str] = []
    for service in sys.argv[1:] if services is None else services:
        [script] = entry_points(group="console_scripts", name=service)
        command = script.load()
        try:
            command(["migrate"], prog_name=service, standalone_mode=False)
        except Exception as error:  # noqa: BLE001 - one service's failure is reported, the others still run
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            sys.stdout.write(f"{service}: {type(error).__name__}: {first}\n")
            failed.append(service)
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
