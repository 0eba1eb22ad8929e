"""The Kubernetes NATS configuration comes from the same permissions as the local stack, and works."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import nats
import pytest

from devtools.stack.servers import NatsServer, nats_server_binary
from shared.events.topology import SERVICE_NAMES
from tests.deploy.manifests import K8S, OVERLAYS, ROOT, generated, render

if TYPE_CHECKING:
    from pathlib import Path

PASSWORDS = {f"{service.upper()}_NATS_PASSWORD": f"{service}-test-password" for service in SERVICE_NAMES}


def test_committed_auth_conf_is_a_fresh_render_of_the_permissions() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_nats_config.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_service_user_takes_its_password_from_the_environment() -> None:
    auth = (K8S / "base" / "nats" / "auth.conf").read_text()
    for variable in PASSWORDS:
        # Bare: nats-server expands $VARIABLE only outside quotes.
        assert f'"password": ${variable},' in auth


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_nats_config_passes_nats_server_test(overlay: str, tmp_path: Path) -> None:
    config = generated(render(overlay), "ConfigMap", "nats-config")["data"]
    for name, text in config.items():
        (tmp_path / name).write_text(text)
    env = os.environ | PASSWORDS | {"POD_NAME": "nats-0"}
    result = subprocess.run(
        [str(nats_server_binary()), "-c", str(tmp_path / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Without a password in its environment the server refuses to start.
    missing = {key: value for key, value in env.items() if key != "USERS_NATS_PASSWORD"}
    result = subprocess.run(
        [str(nats_server_binary()), "-c", str(tmp_path / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        env=missing,
        check=False,
    )
    assert result.returncode != 0
    assert "USERS_NATS_PASSWORD" in result.stdout + result.stderr


async def test_a_service_signs_in_with_the_password_nats_server_read_from_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server inherits this environment: the passwords reach it as they do in the pod.
    for variable, password in PASSWORDS.items():
        monkeypatch.setenv(variable, password)
    server = NatsServer(tmp_path / "nats", config=(K8S / "base" / "nats" / "auth.conf").read_text())
    try:
        server.start()
        # Were the reference quoted, the password would be the literal text "$USERS_NATS_PASSWORD".
        client = await nats.connect(server.url, user="users", password=PASSWORDS["USERS_NATS_PASSWORD"])
        await client.close()
    finally:
        server.stop()
