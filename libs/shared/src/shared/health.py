"""Health endpoints: ``/health/live`` says the process answers, ``/health/ready`` that it can work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from litestar import Controller, Response, get
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from prometheus_client import Counter, Gauge

from shared.db import database_failure_reason

__all__ = ("READINESS_CHANGES", "READY", "HealthReport", "ReadinessCheck", "create_health_controller", "run_checks")

READY = Gauge("relay_ready", "1 when the last readiness check of this process passed, 0 when it failed.")
READINESS_CHANGES = Counter(
    "relay_readiness_changes",
    "Times this process's readiness flipped (ready to not ready or back); a steady climb is a flapping pod.",
)
# A process is not ready until its first check passes (the kubelet sees it the same way).
READY.set(0)
READINESS_CHANGES.inc(0)

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""A named check returns None when healthy, or a short reason when not."""


class HealthReport(msgspec.Struct):
    """The answer of a health endpoint."""

    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


async def run_checks(checks: dict[str, ReadinessCheck], timeout_seconds: float = 3.0) -> HealthReport:
    """Run every check at once; each failing or timing-out check names its reason."""

    async def run(check: ReadinessCheck) -> str:
        try:
            problem = await asyncio.wait_for(check(), timeout_seconds)
        except TimeoutError:
            return "timed out"
        except Exception as error:  # noqa: BLE001 - a failing check is a report, not a crash
            # One line, without SQLAlchemy's statement and "Background on this error" link.
            return f"{type(error).__name__}: {database_failure_reason(error)}"
        return problem or "ok"

    names = list(checks)
    results = await asyncio.gather(*(run(checks[name]) for name in names))
    report = dict(zip(names, results, strict=True))
    ready = all(value == "ok" for value in results)
    _record_readiness(ready)
    return HealthReport(status="ok" if ready else "unavailable", checks=report)


_last_readiness: list[bool] = []  # this process's previous answer; empty before the first check


def _record_readiness(ready: bool) -> None:
    # Count flips, not checks: probes come every few seconds, and a flip is what an alert needs.
    if _last_readiness and _last_readiness[0] != ready:
        READINESS_CHANGES.inc()
    _last_readiness[:] = [ready]
    READY.set(1 if ready else 0)


def create_health_controller(checks: dict[str, ReadinessCheck]) -> type[Controller]:
    """The ``/health`` controller with the service's readiness checks."""

    class HealthController(Controller):
        path = "/health"
        tags: Sequence[str] | None = ["health"]
        include_in_schema = False

        @get("/live", sync_to_thread=False)
        def live(self) -> HealthReport:
            """The process is up and its event loop answers."""
            return HealthReport(status="ok")

        @get("/ready")
        async def ready(self) -> Response[HealthReport]:
            """The process can serve: database reachable and migrated, NATS connected when configured."""
            report = await run_checks(checks)
            status = HTTP_200_OK if report.status == "ok" else HTTP_503_SERVICE_UNAVAILABLE
            return Response(report, status_code=status)

    return HealthController
