"""Passwords: argon2id hashing off the event loop, and the rules a new password follows."""

from __future__ import annotations

import asyncio
import math
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from argon2 import PasswordHasher as Argon2Hasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.errors import Unprocessable

if TYPE_CHECKING:
    from users.settings import UsersSettings
    from users.throttle import Attempt

__all__ = (
    "MIN_PASSWORD_LENGTH",
    "PasswordHasher",
    "check_new_password",
    "check_password_is_not_email",
    "cpus_available",
)

MIN_PASSWORD_LENGTH = 10
"""The documented minimum, also stated by the request schemas."""


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""cgroup v2's CPU limit of this process's group: ``<quota> <period>`` or ``max <period>``."""


def cpus_available(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process can keep busy: the ones it may run on, lowered to its cgroup's limit.

    A pod with ``limits.cpu: 1`` on a 32-core node sees 32 CPUs in ``os.cpu_count()`` and its
    affinity, and gets one CPU's time: the cgroup's quota is the number that counts.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()
        limit = math.ceil(int(quota) / int(period))
    except (OSError, ValueError, ZeroDivisionError):  # no cgroup v2, or "max": no limit
        return cpus
    return max(1, min(cpus, limit))


class PasswordHasher:
    """argon2id hashing off the event loop: one hash costs tens of milliseconds of CPU.

    Hashes run on a pool of ``concurrency`` threads of their own, not on asyncio's default pool:
    each holds ``memory_kib`` while it runs, so the pool's size bounds the memory that concurrent
    sign-ins take (asyncio's pool has up to 32 threads: 2 GiB at the default cost), and hashes
    beyond the CPUs there are to run them would only make every one of them slower.
    """

    def __init__(self, *, time_cost: int, memory_kib: int, concurrency: int = 1) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self._argon2 = Argon2Hasher(time_cost=time_cost, memory_cost=memory_kib)
        # Made now, not at the first unknown email: that one would otherwise cost a hash more.
        self._dummy_hash = self._argon2.hash(secrets.token_urlsafe(16))
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="argon2")

    @classmethod
    def from_settings(cls, settings: UsersSettings) -> PasswordHasher:
        """The hasher with the configured argon2 costs and concurrency (0: ``cpus_available()``)."""
        return cls(
            time_cost=settings.password_hash_time_cost,
            memory_kib=settings.password_hash_memory_kib,
            concurrency=settings.password_hash_concurrency or cpus_available(),
        )

    def close(self) -> None:
        """Let the hashing threads end once the hashes already asked for are done."""
        self._threads.shutdown(wait=False)

    async def hash(self, password: str) -> str:
        """A new argon2id hash of ``password``."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, self._argon2.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches ``password_hash``.

        Without a hash (an unknown email, a throttled attempt) a dummy one made with the same costs
        is checked and False returned: every answer costs one argon2 verify, so timing tells nothing.
        """
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._threads, self._argon2.verify, password_hash or self._dummy_hash, password
            )
        except (VerificationError, InvalidHashError):
            return False

    async def verify_attempt(self, attempt: Attempt, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches, for a check counted by ``attempt`` (``users.throttle``).

        An attempt over the limit verifies the dummy hash and is refused only then: the throttled
        path costs the same verify as the others, so a 429's timing tells nothing either.

        Raises:
            TooManyRequests: The attempt was over the account's or the address's limit.
        """
        matches = await self.verify(None if attempt.refusal is not None else password_hash, password)
        if attempt.refusal is not None:
            raise attempt.refusal
        return matches

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with weaker parameters than today's."""
        return self._argon2.check_needs_rehash(password_hash)


def check_new_password(password: str, email: str) -> None:
    """Refuse a new password that is too short or is the account's email.

    Raises:
        Unprocessable: It breaks one of the rules.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Unprocessable(f"The password needs at least {MIN_PASSWORD_LENGTH} characters.")
    check_password_is_not_email(password, email)


def check_password_is_not_email(password: str, email: str) -> None:
    """Refuse a password that is the (canonical) email, in any case or padding.

    Raises:
        Unprocessable: It is.
    """
    if password.strip().lower() == email:
        raise Unprocessable("The password must not be the email address.")
