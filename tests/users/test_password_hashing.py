"""Password hashing's bound: at most ``password_hash_concurrency`` argon2 hashes hold their memory
at once, however many sign-ins arrive together, and by default one per CPU the process can use."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from users.passwords import PasswordHasher, cpus_available

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from users.settings import UsersSettings


class InFlight:
    """Stands in front of argon2's hasher, counting how many of its calls run at the same moment
    and on which threads."""

    def __init__(self, argon2: Any) -> None:
        self.hash = self.around(argon2.hash)
        self.verify = self.around(argon2.verify)
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.thread_names: set[str] = set()

    def around(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            with self._lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.thread_names.add(threading.current_thread().name)
            try:
                time.sleep(0.05)  # long enough that every hash asked for at once overlaps, if allowed to
                return call(*args)
            finally:
                with self._lock:
                    self.running -= 1

        return counted


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_concurrent_hashes_and_verifies_never_exceed_the_configured_concurrency(
    users_settings: UsersSettings, monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> None:
    settings = msgspec.structs.replace(users_settings, password_hash_concurrency=concurrency)
    hasher = PasswordHasher.from_settings(settings)
    in_flight = InFlight(hasher._argon2)
    monkeypatch.setattr(hasher, "_argon2", in_flight)
    try:
        stored = await hasher.hash("a password of some length")
        results = await asyncio.gather(
            *(hasher.hash(f"password number {n}") for n in range(6)),
            *(hasher.verify(stored, "a password of some length") for _ in range(6)),
            *(hasher.verify(None, "an unknown account's guess") for _ in range(6)),
        )
    finally:
        hasher.close()

    assert in_flight.most == concurrency
    assert all(name.startswith("argon2") for name in in_flight.thread_names)
    assert results[6:12] == [True] * 6
    assert results[12:] == [False] * 6


async def test_a_closed_hasher_refuses_new_hashes(users_settings: UsersSettings) -> None:
    hasher = PasswordHasher.from_settings(users_settings)
    hasher.close()
    with pytest.raises(RuntimeError):
        await hasher.hash("a password of some length")


def test_a_concurrency_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PasswordHasher(time_cost=1, memory_kib=8192, concurrency=0)


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("50000 100000\n", lambda: 1),  # half a CPU: still one thread
        ("100000 100000\n", lambda: 1),
        ("150000 100000\n", lambda: min(2, _affinity())),  # 1.5 CPUs: two threads keep them busy
        ("6400000 100000\n", _affinity),  # a limit above the CPUs it may run on
        ("max 100000\n", _affinity),  # no limit
        ("garbage\n", _affinity),
    ],
)
def test_cpus_available_is_the_affinity_lowered_to_the_cgroup_limit(
    tmp_path: Path, cpu_max: str, expected: Callable[[], int]
) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert cpus_available(path) == expected()


def test_cpus_available_without_a_cgroup_file_is_the_affinity(tmp_path: Path) -> None:
    assert cpus_available(tmp_path / "absent") == _affinity()
