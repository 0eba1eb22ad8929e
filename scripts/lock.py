"""Pin every dependency, direct and transitive, in pyproject.toml's constraint-dependencies.

uv.lock stays out of git because it records the registry's host. This resolves (``uv lock
--upgrade`` when asked), exports the exact versions, and writes them between the markers in
``[tool.uv]``, so a fresh clone resolves to the same versions without the lock file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BEGIN = "# begin: pinned by `just lock`"
END = "# end: pinned by `just lock`"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def main() -> None:
    """Resolve, export and write the pins."""
    upgrade = "--upgrade" in sys.argv
    if upgrade:  # the pins would hold every package where it is: drop them before resolving anew
        _write_block([])
    subprocess.run(["uv", "lock", *(["--upgrade"] if upgrade else [])], check=True)
    exported = subprocess.run(
        [
            "uv",
            "export",
            "--frozen",
            "--no-hashes",
            "--no-emit-workspace",
            "--all-groups",
            "--no-header",
            "--no-annotate",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = sorted(
        line.strip() for line in exported.splitlines() if line.strip() and not line.startswith(("#", "-e", "."))
    )
    _write_block(pins)
    print(f"pinned {len(pins)} packages in {PYPROJECT.name}")


def _write_block(pins: list[str]) -> None:
    block = "\n".join([BEGIN, "constraint-dependencies = [", *(f'    "{pin}",' for pin in pins), "]", END])
    text = PYPROJECT.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    PYPROJECT.write_text(text[:start] + block + text[stop:])


if __name__ == "__main__":
    main()
