"""Every test gets the shared fixtures: real Postgres, real NATS, token signing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

pytest_plugins = ["devtools.testing.plugin"]

IMAGE_CHECK = Path(__file__).parent / "tests" / "images"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave out tests/images unless it is named: it checks images built by `just images` with buildah.

    `just test` runs on any machine; the image check runs from its own recipe (`just images-check`).
    """
    if collection_path != IMAGE_CHECK:
        return None
    here = config.invocation_params.dir
    named = (Path(here, arg.split("::")[0]).resolve() for arg in config.args)
    return None if any(path.is_relative_to(IMAGE_CHECK) for path in named) else True
