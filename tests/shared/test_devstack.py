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
from shared.devstack.supervisor import installed_services

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


def _eventually_ready(url: str, also: object, within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200 and also():  # type: ignore[operator]
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def test_up_serves_every_service_restarts_what_dies_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    services = installed_services()
    names = [
        "POSTGRES",
        "NATS",
        "NATS_MONITOR",
        *(s.upper() for s in services),
        *(f"{s.upper()}_WORKER" for s in services),
    ]
    ports = {name: free_port() for name in names}
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
        assert len(children) >= 2 + 2 * len(services)  # postgres, nats-server, an API and a worker each

        for service in services:
            base = f"http://127.0.0.1:{ports[service.upper()]}"
            with urllib.request.urlopen(f"{base}/docs/openapi.json", timeout=5) as response:
                assert json.load(response)["paths"]
            for url in (base, f"http://127.0.0.1:{ports[service.upper() + '_WORKER']}"):
                with urllib.request.urlopen(f"{url}/health/ready", timeout=5) as response:
                    assert json.load(response)["checks"] == {"database": "ok", "nats": "ok"}

        # a process that dies is restarted, as an orchestrator would
        pid_file = tmp_path / "data" / "run" / "users-worker.pid"
        killed = int(pid_file.read_text())
        os.kill(killed, signal.SIGKILL)
        worker = f"http://127.0.0.1:{ports['USERS_WORKER']}/health/ready"
        assert _eventually_ready(worker, lambda: int(pid_file.read_text()) != killed)
    finally:
        stack.send_signal(signal.SIGINT)
        exit_code = stack.wait(30)
        stack.stdout.close()
    assert exit_code == 0
    assert not {pid for pid in children if os.path.exists(f"/proc/{pid}")}
