"""Two of Litestar's per-request steps, done without work our handlers never need.

Both replace a method of Litestar 2.x's internals; ``tests/shared/test_litestar_overrides.py``
fails if a Litestar release changes what they rely on. ``apply_litestar_overrides`` installs them
for every app of the process (``shared.app`` calls it; calling it again changes nothing).

**Dependencies in order, in the request's task.** Litestar resolves the dependencies of one depth
concurrently: two or more at a depth (a handler's ``user`` and the plugin's ``db_session`` are both
at depth 0) open an anyio task group and run each in a task of its own. For this project's
dependencies that buys nothing and costs twice: none of them waits on anything (they read the scope,
build a service object or hand out the request's session), and the task group, its tasks and their
scheduling were about a tenth of a cached read's CPU (issue 15's profile); and several of them share
the request's one ``AsyncSession``, which two tasks must never use at once.

**Guards get the handler itself.** Litestar hands each guard a shallow copy of the route handler, a
copy of a large object on every guarded request (4% of a cached read's CPU). Guards here read the
connection only (``shared.auth``); a guard must never change the handler it is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar._kwargs.cleanup import DependencyCleanupGroup
from litestar._kwargs.dependencies import resolve_dependency
from litestar._kwargs.kwargs_model import KwargsModel
from litestar.handlers.base import BaseRouteHandler

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection

__all__ = ("apply_litestar_overrides", "authorize_with_the_handler_itself", "resolve_dependencies_in_order")


async def resolve_dependencies_in_order(
    self: KwargsModel, connection: ASGIConnection[Any, Any, Any, Any], kwargs: dict[str, Any]
) -> DependencyCleanupGroup:
    """Litestar's ``KwargsModel.resolve_dependencies``, awaiting each dependency in turn (depth by depth)."""
    cleanup_group = DependencyCleanupGroup()
    for batch in self.dependency_batches:
        for dependency in batch:
            await resolve_dependency(dependency, connection, kwargs, cleanup_group)
    return cleanup_group


async def authorize_with_the_handler_itself(
    self: BaseRouteHandler, connection: ASGIConnection[Any, Any, Any, Any]
) -> None:
    """Litestar's ``BaseRouteHandler.authorize_connection``, without copying the handler for each guard."""
    for guard in self.resolve_guards():
        await guard(connection, self)  # type: ignore[misc]


def apply_litestar_overrides() -> None:
    """Make every Litestar app of this process resolve dependencies in order and pass guards the handler."""
    KwargsModel.resolve_dependencies = resolve_dependencies_in_order  # type: ignore[method-assign]
    BaseRouteHandler.authorize_connection = authorize_with_the_handler_itself  # type: ignore[method-assign]
