"""A request's dependencies run one after another in the request's own task (``shared.dependency_order``)."""

from __future__ import annotations

import asyncio

from litestar import Litestar, get
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotAuthorizedException
from litestar.testing import TestClient

from shared.dependency_order import resolve_dependencies_one_at_a_time


def _app(log: list[str]) -> Litestar:
    def task_name() -> str:
        task = asyncio.current_task()
        return task.get_name() if task is not None else "-"

    async def first() -> str:
        log.append("first")
        return task_name()

    def second() -> str:
        log.append("second")
        return task_name()

    async def combined(first: NamedDependency[str], second: NamedDependency[str]) -> str:
        log.append("combined")
        return f"{first}+{second}"

    async def refused() -> str:
        raise NotAuthorizedException("no")

    @get("/", sync_to_thread=False)
    def handler(
        first: NamedDependency[str], second: NamedDependency[str], combined: NamedDependency[str]
    ) -> dict[str, str]:
        return {"first": first, "second": second, "combined": combined, "handler": task_name()}

    @get("/refused", sync_to_thread=False)
    def refusing(first: NamedDependency[str], refused: NamedDependency[str]) -> str:
        return refused

    return Litestar(
        [handler, refusing],
        dependencies={
            "first": Provide(first),
            "second": Provide(second, sync_to_thread=False),
            "combined": Provide(combined),
            "refused": Provide(refused),
        },
    )


def test_dependencies_of_one_depth_run_in_the_requests_own_task_and_in_depth_order() -> None:
    resolve_dependencies_one_at_a_time()
    log: list[str] = []
    with TestClient(_app(log)) as client:
        answer = client.get("/").json()
        refused = client.get("/refused")
    # Litestar's own resolution runs "first" and "second" (both at depth 0) in tasks of a task group
    assert answer["first"] == answer["second"] == answer["handler"]
    assert answer["combined"] == f"{answer['handler']}+{answer['handler']}"
    assert sorted(log[:2]) == ["first", "second"]
    assert log[2] == "combined"  # its dependencies first
    assert refused.status_code == 401  # a dependency's exception is the answer, not a task group's
