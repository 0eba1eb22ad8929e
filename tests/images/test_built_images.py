"""The images `just images` built with buildah: what they hold, and their entrypoints running.

There is no container runtime here (crun's setrlimit is denied), so each image's root filesystem
is mounted (``buildah mount``), bound read-only in a directory of its own (the pods'
readOnlyRootFilesystem) with /proc, /dev and an empty /tmp, and its entrypoint is run there with
``chroot --userspec=10001:10001`` and the image's own environment plus what the dev overlay's
manifests give the container. The chroot shares the network namespace, so the processes reach the
test Postgres and NATS on loopback. Run with ``uv run just images-check`` after ``just images``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
import tomllib
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from packaging.requirements import Requirement
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.stack.servers import free_port, stop_process
from devtools.testing import TEST_ROLE_PASSWORD
from shared.auth import AccessTokenSigner
from shared.db import provision_service_role
from tests.deploy.manifests import K8S, ROOT, SERVICES, Manifest, generated, named, render

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devtools.stack.servers import NatsServer, PostgresServer

CACHE = Path(os.environ.get("RELAY_IMAGES_CACHE", "/var/cache/relay-images"))
RUNTIME_USER = "10001:10001"
SITE_PACKAGES = "opt/venv/lib/python3.11/site-packages"
SHARED_SOURCE = ROOT / "libs" / "shared" / "src" / "shared"
# What moved from shared to the dev-only libs/devtools (issue 14): never in an image.
MOVED_TO_DEVTOOLS = ("shared/devstack", "shared/testing", "shared/events/asyncapi.py")
# Writable by everyone in every Debian image, sticky: only their owners may remove entries.
STICKY_SCRATCH = {"/tmp", "/var/tmp", "/run/lock"}  # noqa: S108 - paths inside the image, checked not used


def _tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: `just images` installs it"
    return found


@pytest.fixture(scope="session")
def built() -> dict[str, Any]:
    record = CACHE / "images.json"
    assert record.exists(), f"{record} is missing: run `uv run just images` first"
    return dict(json.loads(record.read_text()))


def _buildah(built: dict[str, Any], *args: str) -> str:
    return subprocess.run(
        [_tool("buildah"), *built["storage"], *args], capture_output=True, text=True, check=True
    ).stdout


def _config(built: dict[str, Any], service: str) -> dict[str, Any]:
    return dict(json.loads(_buildah(built, "inspect", "--type", "image", built["images"][service]))["OCIv1"]["config"])


@contextlib.contextmanager
def _mounted(built: dict[str, Any], service: str, where: Path) -> Iterator[tuple[Path, Path]]:
    """(the container's writable rootfs, a read-only view of it with /proc, /dev and /tmp)."""
    container = _buildah(built, "from", "--pull-never", built["images"][service]).strip()
    view = where / "root"
    view.mkdir()
    mounts: list[Path] = []
    try:
        rootfs = Path(_buildah(built, "mount", container).strip())
        subprocess.run([_tool("mount"), "--bind", str(rootfs), str(view)], check=True)
        mounts.append(view)
        subprocess.run([_tool("mount"), "-o", "remount,bind,ro", str(view)], check=True)
        for source, target, options in (
            ("proc", "proc", ["-t", "proc"]),
            ("/dev", "dev", ["--bind"]),
            ("tmpfs", "tmp", ["-t", "tmpfs"]),
        ):
            subprocess.run([_tool("mount"), *options, source, str(view / target)], check=True)
            mounts.append(view / target)
        yield rootfs, view
    finally:
        for mount in reversed(mounts):
            subprocess.run([_tool("umount"), "-l", str(mount)], check=False)
        subprocess.run([_tool("buildah"), *built["storage"], "umount", container], capture_output=True, check=False)
        subprocess.run([_tool("buildah"), *built["storage"], "rm", container], capture_output=True, check=False)


def _closure(name: str) -> set[str]:
    """The distributions ``name`` needs at run time (markers and extras evaluated here, Python 3.11)."""
    names: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    pending = [(name, frozenset[str]())]
    while pending:
        current, extras = pending.pop()
        key = current.lower().replace("_", "-")
        if (key, extras) in visited:
            continue
        visited.add((key, extras))
        names.add(key)
        for line in metadata.requires(current) or []:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            pending.append((requirement.name, frozenset(requirement.extras)))
    return names


def _installed(rootfs: Path) -> set[str]:
    """The distributions in the image's venv, by the Name in their metadata."""
    names = set()
    for info in (rootfs / SITE_PACKAGES).glob("*.dist-info"):
        for line in (info / "METADATA").read_text(errors="replace").splitlines():
            if line.startswith("Name: "):
                names.add(line.removeprefix("Name: ").strip().lower().replace("_", "-"))
                break
    return names


def _dev_tools() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {Requirement(line).name.lower() for line in pyproject["dependency-groups"]["dev"]}


def _modules(package: Path) -> set[str]:
    """The ``.py`` files under ``package``, relative to it."""
    return {path.relative_to(package).as_posix() for path in package.rglob("*.py")}


def _size(path: Path) -> int:
    return sum(file.lstat().st_size for file in path.rglob("*") if not file.is_symlink() and file.is_file())


def _record(service: str, **values: object) -> None:
    """Add measurements to <cache>/check.json (`just images-check` prints it)."""
    record = CACHE / "check.json"
    found = json.loads(record.read_text()) if record.exists() else {}
    found.setdefault(service, {}).update(values)
    record.write_text(json.dumps(found, indent=2) + "\n")


@pytest.mark.parametrize("service", SERVICES)
def test_image_holds_its_service_and_its_runtime_closure_only(
    built: dict[str, Any], service: str, tmp_path: Path
) -> None:
    with _mounted(built, service, tmp_path) as (rootfs, _):
        installed = _installed(rootfs)
        # Exactly the service's declared dependency closure: nothing missing, nothing more.
        assert installed == _closure(service), {
            "extra": installed - _closure(service),
            "missing": _closure(service) - installed,
        }
        assert not installed & (set(SERVICES) - {service}), "another service is in the image"
        assert not installed & _dev_tools(), "dev tooling is in the image"
        site = rootfs / SITE_PACKAGES
        assert not (site / "tests").exists()
        ours = [*(site / "shared").rglob("*.py"), *(site / service).rglob("*.py")]
        assert not [path for path in ours if path.name.startswith("test_") or path.name == "conftest.py"]
        # Migrations travel inside the wheel.
        assert list((site / service / "migrations" / "versions").glob("*.py"))
        # No dev tooling: neither the devtools package nor pytest, by distribution or by files.
        assert not {"devtools", "pytest"} & installed
        assert not [name for name in ("devtools", "pytest", "_pytest") if (site / name).exists()]
        assert not [moved for moved in MOVED_TO_DEVTOOLS if (site / moved).exists()]
        # shared's files are exactly its runtime modules: every one of them, nothing else.
        shipped = _modules(site / "shared")
        assert shipped == _modules(SHARED_SOURCE), {
            "extra": shipped - _modules(SHARED_SOURCE),
            "missing": _modules(SHARED_SOURCE) - shipped,
        }
        shared_code = [(site / "shared" / module).read_bytes() for module in shipped]
        _record(
            service,
            venv_bytes=_size(rootfs / "opt/venv"),
            image_bytes=built["sizes"][service],
            shared_py_lines=sum(code.count(b"\n") for code in shared_code),
            shared_py_bytes=sum(len(code) for code in shared_code),
        )


@pytest.mark.parametrize("service", SERVICES)
def test_nothing_in_the_image_is_writable_by_the_runtime_user(
    built: dict[str, Any], service: str, tmp_path: Path
) -> None:
    writable = []
    with _mounted(built, service, tmp_path) as (rootfs, _):
        for path in [rootfs, *rootfs.rglob("*")]:
            if path.is_symlink():
                continue
            status = path.lstat()
            # Device nodes (mmdebstrap leaves /dev/null and friends) hold no data; a runtime
            # mounts its own /dev over them anyway.
            if not (stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode)):
                continue
            inside = "/" + path.relative_to(rootfs).as_posix() if path != rootfs else "/"
            by_owner = status.st_uid == 10001 and status.st_mode & 0o200
            by_group = status.st_gid == 10001 and status.st_mode & 0o020
            by_anyone = status.st_mode & 0o002
            if by_owner or by_group or (by_anyone and inside not in STICKY_SCRATCH):
                writable.append(inside)
            if inside in STICKY_SCRATCH:
                assert status.st_mode & 0o1000, f"{inside} is world-writable without the sticky bit"
    assert writable == []


@pytest.mark.parametrize("service", SERVICES)
def test_image_config_runs_the_service_as_the_unprivileged_user(built: dict[str, Any], service: str) -> None:
    config = _config(built, service)
    assert config["User"] == RUNTIME_USER
    assert config["Entrypoint"] == [service]
    assert config["Cmd"][0] == "api"
    assert config.get("StopSignal") == "SIGTERM"
    assert set(config["ExposedPorts"]) == {"8000/tcp", "9000/tcp"}
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == f"relay-shop-{service}"
    assert labels["org.opencontainers.image.description"].startswith(f"Relay Shop {service} service")
    assert labels["org.opencontainers.image.version"]
    assert labels["org.opencontainers.image.revision"] == built["revision"]
    assert labels["org.opencontainers.image.base.name"] == built["base"]


async def _recreate_database(server: PostgresServer, name: str, *, drop_only: bool = False) -> None:
    engine = create_async_engine(server.url(), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            if not drop_only:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()


def _write_pod_file(rootfs: Path, in_pod: str, content: str) -> None:
    """A mounted Secret or ConfigMap file, root-owned and readable (the kubelet's 0644)."""
    relative = PurePosixPath(in_pod).relative_to("/")
    if relative.parts[:2] == ("var", "run") and (rootfs / "var" / "run").is_symlink():
        relative = PurePosixPath("run", *relative.parts[2:])  # /var/run -> /run in Debian
    target = rootfs / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    target.chmod(0o644)


def _environment(
    image: dict[str, Any], container: Manifest, config: dict[str, str], overrides: dict[str, str]
) -> dict[str, str]:
    """What the container's process sees: the image's ENV, then the manifest's, then the test's overrides."""
    values = dict(line.split("=", 1) for line in image.get("Env", []))
    if any("configMapRef" in source for source in container.get("envFrom", [])):
        values |= config
    values |= {variable["name"]: variable["value"] for variable in container.get("env", []) if "value" in variable}
    return values | {key: value for key, value in overrides.items() if key in values or key.startswith("OTEL_")}


def _argv(image: dict[str, Any], container: Manifest) -> list[str]:
    """Kubernetes' rule: command replaces the entrypoint, args replace the image's CMD."""
    command = container.get("command") or image["Entrypoint"]
    return [*command, *(container.get("args") or ([] if container.get("command") else image.get("Cmd", [])))]


def _in_image(view: Path, argv: list[str], env: dict[str, str]) -> list[str]:
    """The command line that runs ``argv`` in the mounted image as the runtime user (PATH from ``env``)."""
    return [_tool("chroot"), f"--userspec={RUNTIME_USER}", "--groups=", str(view), *argv]


async def _eventually_ready(url: str, process: subprocess.Popen[bytes], within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            assert process.poll() is None, f"{url}: the process exited with {process.returncode}"
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    assert response.json()["checks"] == {"database": "ok", "nats": "ok"}
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{url} not ready in {within}s"
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("service", SERVICES)
async def test_image_entrypoints_migrate_then_serve_api_and_worker(
    built: dict[str, Any],
    service: str,
    tmp_path: Path,
    postgres_server: PostgresServer,
    nats_server: NatsServer,
    private_key_pem: str,
) -> None:
    image = _config(built, service)
    database = f"image_check_{service}"
    await _recreate_database(postgres_server, database)
    url = await provision_service_role(postgres_server.url(database), service=service, password=TEST_ROLE_PASSWORD)
    docs = render("dev")
    config = generated(docs, "ConfigMap", f"{service}-config")["data"]
    job = named(docs, "Job", f"{service}-migrate")["spec"]["template"]["spec"]["containers"][0]
    pods = {c: named(docs, "Deployment", f"{service}-{c}")["spec"]["template"]["spec"] for c in ("api", "worker")}
    prefix = service.upper()
    ports = {"api": free_port(), "worker": free_port()}
    overrides = {
        f"{prefix}_HTTP_PORT": str(ports["api"]),
        f"{prefix}_WORKER_HEALTH_PORT": str(ports["worker"]),
        f"{prefix}_NATS_URL": nats_server.url,  # the manifests name the in-cluster service
        "OTEL_TRACES_EXPORTER": "none",  # no collector here
    }
    public_key = AccessTokenSigner(private_key_pem, issuer="users", audiences=["users"], ttl_seconds=1).public_key_pem()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    with _mounted(built, service, tmp_path) as (rootfs, view):
        for in_pod, content in {
            "/var/run/secrets/relay/db/url": url,
            "/var/run/secrets/relay/nats/password": "not-checked-by-the-test-server",
            "/var/run/secrets/relay/app/jwt-private-key": private_key_pem,
            "/etc/relay/jwt/public.pem": public_key,
            "/var/run/secrets/relay/app/unsubscribe-secret": "an-unsubscribe-link-key-for-tests",
            "/var/run/secrets/relay/app/email-url": "file:/tmp/mail",
            "/opt/relay/wait_for_migrations.py": (K8S / "base/common/wait_for_migrations.py").read_text(),
        }.items():
            _write_pod_file(rootfs, in_pod, content)

        def run(container: Manifest, extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
            env = _environment(image, container, config, overrides)
            argv = _argv(image, container)[:-2] + (extra or []) if extra else _argv(image, container)
            return subprocess.run(_in_image(view, argv, env), env=env, capture_output=True, text=True, check=False)

        init = pods["worker"]["initContainers"][0]
        before = await asyncio.to_thread(run, init, ["--timeout", "0.5"])
        assert before.returncode == 1, before.stdout + before.stderr
        assert "not migrated yet" in before.stdout
        migrate = await asyncio.to_thread(run, job)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        after = await asyncio.to_thread(run, init, ["--timeout", "5"])
        assert after.returncode == 0, after.stdout + after.stderr

        started: dict[str, float] = {}
        try:
            for component, pod in pods.items():
                container = pod["containers"][0]
                env = _environment(image, container, config, overrides)
                started[component] = time.monotonic()
                processes[component] = subprocess.Popen(  # noqa: ASYNC220 - started once, then polled over HTTP
                    _in_image(view, _argv(image, container), env),
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await _eventually_ready(f"http://127.0.0.1:{ports[component]}/health/ready", processes[component])
                started[component] = round(time.monotonic() - started[component], 2)
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            codes = {component: _wait(process) for component, process in processes.items()}
            await _recreate_database(postgres_server, database, drop_only=True)
    _record(service, ready_seconds=started)
    assert codes == {"api": 0, "worker": 0}


def _wait(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_process(process, 1)
        return None
