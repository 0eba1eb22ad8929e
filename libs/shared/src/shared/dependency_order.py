"""A request's dependencies are resolved one after another, in the request's own task.

Litestar resolves the dependencies of one depth concurrently: two or more at a depth (a handler's
``user`` and the plugin's ``db_session`` are both at depth 0) open an anyio task group and run each
in a task of its own. For this project's dependencies that buys nothing and costs twice:

* none of them waits on anything: they read the scope, build a service object or hand out the
  request's session; the task group, its tasks and their scheduling were about a tenth of a cached
  read's CPU (issue 15's profile);
* several of them share the request's one ``AsyncSession``, which must never be used by two tasks at
  once: in order, a future dependency that queries cannot race another one on it.

``resolve_dependencies_in_order`` replaces ``KwargsModel.resolve_dependencies`` (Litestar 2.x
internals; ``tests/shared/test_dependency_order.py`` fails if a Litestar release changes them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar._kwargs.cleanup import DependencyCleanupGroup
from litestar._kwargs.dependencies import resolve_dependency
from litestar._kwargs.kwargs_model import KwargsModel

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection

__all__ = ("resolve_dependencies_in_order", "resolve_dependencies_one_at_a_time")


async def resolve_dependencies_in_order(
    self: KwargsModel, connection: ASGIConnection[Any, Any, Any, Any], kwargs: dict[str, Any]
) -> DependencyCleanupGroup:
    """Litestar's ``KwargsModel.resolve_dependencies``, awaiting each dependency in turn (depth by depth)."""
    cleanup_group = DependencyCleanupGroup()
    for batch in self.dependency_batches:
        for dependency in batch:
            await resolve_dependency(dependency, connection, kwargs, cleanup_group)
    return cleanup_group


def resolve_dependencies_one_at_a_time() -> None:
    """Make every Litestar app of this process resolve its dependencies in order (idempotent)."""
    KwargsModel.resolve_dependencies = resolve_dependencies_in_order  # type: ignore[method-assign]
