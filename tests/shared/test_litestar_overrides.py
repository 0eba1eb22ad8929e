"""Litestar's per-request steps as ``shared.litestar_overrides`` changes them."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Litestar, get
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.testing import TestClient

from shared.litestar_overrides import apply_litestar_overrides


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
    apply_litestar_overrides()
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


def test_guards_get_the_route_handler_itself_and_still_refuse() -> None:
    apply_litestar_overrides()
    seen: list[BaseRouteHandler] = []

    async def remember(_: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        seen.append(handler)

    @get("/guarded", guards=[remember, remember], sync_to_thread=False)
    def guarded() -> str:
        return "ok"

    async def refuse(_: ASGIConnection[Any, Any, Any, Any], __: BaseRouteHandler) -> None:
        raise NotAuthorizedException("no")

    @get("/admins", guards=[refuse], sync_to_thread=False)
    def admins() -> str:
        return "ok"

    with TestClient(Litestar([guarded, admins])) as client:
        assert client.get("/guarded").status_code == 200
        assert client.get("/guarded").status_code == 200
        assert client.get("/admins").status_code == 401  # a guard's refusal is still the answer
    # Litestar's own step hands each guard a fresh copy of the handler
    assert len(seen) == 4
    assert all(handler is seen[0] for handler in seen)  # the app's own handler, every time
    assert seen[0].handler_name == "guarded"
