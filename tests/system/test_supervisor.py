"""What ``just up`` guarantees to the person running it, checked on the session's running stack.

This file sorts before ``test_system.py``, so it runs on the stack before the fuzzing tests fill
the per-address sign-in limit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from devtools.stack.servers import process_group_members
from devtools.stack.supervisor import installed_services
from tests.system.conftest import CORS_ORIGIN, RunningStack


def _listening_sockets(port: int) -> set[int]:
    """Inodes of the IPv4 TCP sockets listening on ``port`` (two with ``SO_REUSEPORT`` sharing it)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return {int(row[9]) for row in rows if int(row[1].split(":")[1], 16) == port and row[3] == "0A"}


def _holders(inode: int) -> set[int]:
    """The processes holding socket ``inode`` open."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") == f"socket:[{inode}]":
                    found.add(int(entry))
            except OSError:
                continue
    return found


def test_kill_9_of_an_api_leaves_exactly_one_process_group_listening_on_its_port(stack: RunningStack) -> None:
    port = stack.ports.orders
    old = stack.pid("orders-api")
    old_group = process_group_members(old)
    assert len(old_group) >= 2, "granian runs a main process and a worker"
    os.kill(old, signal.SIGKILL)
    stack.wait_restarted("orders-api", old, f"{stack.url('orders')}/health/ready")

    new = stack.pid("orders-api")
    assert not process_group_members(old), "granian's worker outlived its killed parent"
    [listener] = _listening_sockets(port)  # one socket, not two sharing the port
    holders = _holders(listener)
    assert holders
    assert holders <= process_group_members(new), (holders, new)


async def test_a_second_up_in_the_same_folder_refuses_and_the_first_keeps_serving(stack: RunningStack) -> None:
    assert stack.process is not None
    run_files = {path: path.read_text() for path in (stack.data / "run").glob("*.pid")}
    postmaster = stack.data / "postgres" / "data" / "postmaster.pid"
    postmaster_before = (postmaster.read_text(), postmaster.stat().st_mtime_ns)
    for extra in ([], ["--fresh"]):
        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "devtools.stack", "--data", str(stack.data), *extra],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode != 0
        assert second.stderr.splitlines() == [
            f"just up: already running (pid {stack.process.pid}) in {stack.data.resolve()}"
        ]
    assert {path: path.read_text() for path in (stack.data / "run").glob("*.pid")} == run_files
    assert (postmaster.read_text(), postmaster.stat().st_mtime_ns) == postmaster_before
    async with httpx.AsyncClient(timeout=10) as client:
        for service in installed_services():
            assert (await client.get(f"{stack.url(service)}/health/ready")).status_code == 200


async def test_env_prints_exports_that_let_each_service_cli_work_against_the_running_stack(
    stack: RunningStack,
) -> None:
    bin_dir = Path(sys.executable).parent
    for service in installed_services():
        # a shell that has none of the service's variables, as a new terminal would be
        clean = {key: value for key, value in os.environ.items() if not key.startswith(f"{service.upper()}_")}
        script = (
            f'eval "$({sys.executable} -m devtools.stack env {service} --data {stack.data})" && '
            f"{bin_dir / service} events status"
        )
        done = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", script], env=clean, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "outbox backlog: " in done.stdout


async def test_a_persons_own_service_variables_reach_every_api_but_never_rewire_the_stack(
    stack: RunningStack,
) -> None:
    # ORDERS_DATABASE_URL in the environment points nowhere: the stack still serves, on its own database
    assert any("ignoring ORDERS_DATABASE_URL" in line for line in stack.log), "".join(stack.log[-40:])
    async with httpx.AsyncClient(timeout=10) as client:
        for service in installed_services():
            preflight = await client.options(
                f"{stack.url(service)}/health/live",
                headers={"Origin": CORS_ORIGIN, "Access-Control-Request-Method": "GET"},
            )
            assert preflight.headers.get("access-control-allow-origin") == CORS_ORIGIN, (service, preflight.headers)
            refused = await client.options(
                f"{stack.url(service)}/health/live",
                headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"},
            )
            assert refused.headers.get("access-control-allow-origin") != "https://elsewhere.example"
