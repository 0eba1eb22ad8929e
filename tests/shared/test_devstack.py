"""``just up`` starts Postgres, NATS (with per-service users) and the services, and stops all on SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING

from shared.devstack.servers import free_port

if TYPE_CHECKING:
    from pathlib import Path


def _children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if parent == pid:
                found.add(int(entry))
                found |= _children_of(int(entry))
    return found


def test_up_serves_users_api_and_worker_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("POSTGRES", "NATS", "NATS_MONITOR", "USERS", "USERS_WORKER")}
    env = os.environ | {f"RELAY_{name}_PORT": str(port) for name, port in ports.items()}
    stack = subprocess.Popen(
        [sys.executable, "-m", "shared.devstack", "--data", str(tmp_path / "data")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert stack.stdout is not None
    lines = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = stack.stdout.readline()
            lines.append(line)
            if "Ctrl-C stops everything" in line or not line:
                break
        assert any("ready in" in line for line in lines), "".join(lines)
        children = _children_of(stack.pid)
        assert len(children) >= 3  # postgres, nats-server, the users API (and its workers)

        base = f"http://127.0.0.1:{ports['USERS']}"
        with urllib.request.urlopen(f"{base}/docs/openapi.json", timeout=5) as response:
            assert "/auth/register" in json.load(response)["paths"]
        with urllib.request.urlopen(f"{base}/health/ready", timeout=5) as response:
            assert json.load(response)["checks"] == {"database": "ok", "nats": "ok"}
        worker = f"http://127.0.0.1:{ports['USERS_WORKER']}"
        with urllib.request.urlopen(f"{worker}/health/ready", timeout=5) as response:
            assert json.load(response)["checks"] == {"database": "ok", "nats": "ok"}
    finally:
        stack.send_signal(signal.SIGINT)
        exit_code = stack.wait(30)
        stack.stdout.close()
    assert exit_code == 0
    assert not {pid for pid in children if os.path.exists(f"/proc/{pid}")}
