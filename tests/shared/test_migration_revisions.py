"""The API reads its migration scripts' revisions without Alembic; Alembic must agree, for every service.

The readiness check compares the schema's revision with ``ServiceDatabase.head()`` and
``revisions()``, which parse the scripts' literals so that Alembic stays out of the API's memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from alembic.script import ScriptDirectory

from shared.db import ServiceDatabase
from tests.shared.commands import WORKER_DATABASES

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize("service", sorted(WORKER_DATABASES))
def test_head_and_revisions_are_alembics(service: str) -> None:
    database = WORKER_DATABASES[service]
    scripts = ScriptDirectory.from_config(database.alembic_config("postgresql://"))

    assert database.head() == scripts.get_current_head()
    assert database.revisions() == {script.revision for script in scripts.walk_revisions()}
    assert len(database.revisions()) >= 2, "every service has a history of several scripts"


def _package_with_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scripts: dict[str, str]) -> ServiceDatabase:
    name = f"lab_{tmp_path.name.replace('-', '_')}"  # a package of its own per test: imports are cached
    versions = tmp_path / name / "migrations" / "versions"
    versions.mkdir(parents=True)
    for package in (versions.parent.parent, versions.parent, versions):
        (package / "__init__.py").write_text("")
    for script, body in scripts.items():
        (versions / script).write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return ServiceDatabase(WORKER_DATABASES["orders"].metadata, migrations=f"{name}:migrations")


def test_two_heads_are_refused_not_guessed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = _package_with_scripts(
        tmp_path,
        monkeypatch,
        {
            "a.py": 'revision = "a"\ndown_revision = None\n',
            "b.py": 'revision: str = "b"\ndown_revision: str | None = "a"\n',
            "c.py": 'revision: str = "c"\ndown_revision: str | None = "a"\n',
        },
    )

    assert database.revisions() == {"a", "b", "c"}
    with pytest.raises(RuntimeError, match="2 heads"):
        database.head()


def test_a_merge_revision_is_refused_rather_than_misread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = _package_with_scripts(tmp_path, monkeypatch, {"m.py": 'revision = "m"\ndown_revision = ("a", "b")\n'})

    with pytest.raises(RuntimeError, match="single down_revision"):
        database.revisions()
