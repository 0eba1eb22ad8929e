"""Readiness is exported as metrics, so a flapping pod can be alerted on (the prod PrometheusRule):
``relay_ready`` is the last answer of this process, ``relay_readiness_changes_total`` counts flips."""

from __future__ import annotations

from prometheus_client import REGISTRY

from shared.health import run_checks


def sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, f"{name} is not exported"
    return value


async def _passes() -> str | None:
    return None


async def test_flips_are_counted_and_repeated_answers_are_not() -> None:
    answers = iter([None, None, "database down", "database down", None, None, "nats down", None])

    async def check() -> str | None:
        return next(answers)

    await run_checks({"ready": _passes})  # start from "ready", whatever an earlier test left
    before = sample("relay_readiness_changes_total")
    seen = []
    for _ in range(8):
        report = await run_checks({"flaky": check})
        seen.append((report.status, sample("relay_ready")))
    flips = sample("relay_readiness_changes_total") - before

    assert [ready for _, ready in seen] == [1, 1, 0, 0, 1, 1, 0, 1]
    assert [status for status, _ in seen] == ["ok", "ok", *["unavailable"] * 2, "ok", "ok", "unavailable", "ok"]
    # ok->down, down->ok, ok->down, down->ok: four flips, and none for a repeated answer.
    assert flips == 4


async def test_a_check_that_raises_counts_as_not_ready() -> None:
    async def broken() -> str | None:
        raise RuntimeError("boom")

    report = await run_checks({"broken": broken})
    assert report.status == "unavailable"
    assert sample("relay_ready") == 0
