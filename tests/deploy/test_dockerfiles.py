"""The services' one Dockerfile: hadolint clean, generic but for each service's last stage, holding to the image rules.

The rules are checkov's Dockerfile checks that apply here (checkov itself cannot be a dev
dependency: see test_security.py), by checkov's id.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.deploy.dockerfile import DOCKERFILE, context_ignore, copies_from_context, image_steps, instructions
from tests.deploy.manifests import ROOT, SERVICES, tool

# The one check not held to, and why.
NOT_ENFORCED = {
    "CKV_DOCKER_2": "no HEALTHCHECK: the image runs three commands (api on 8000, worker on 9000, migrate with no "
    "port); Docker would mark two of them unhealthy, and Kubernetes ignores HEALTHCHECK for its own probes",
}


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_dockerfile_builds_every_service_and_only_its_last_stage_names_one() -> None:
    assert not list((ROOT / "services").glob("*/Dockerfile")), "one Dockerfile at the root builds every service"
    steps = instructions()
    assert [step.stage for step in steps if step.keyword == "FROM"] == ["build", "runtime", *SERVICES]
    # Every workspace member's metadata is copied for `uv lock`: the lock needs them all.
    members = [path.parent for glob in ("libs/*", "services/*") for path in ROOT.glob(f"{glob}/pyproject.toml")]
    metadata = [step for step in steps if step.keyword == "COPY" and step.arguments.endswith("pyproject.toml ./")]
    metadata += [step for step in steps if step.keyword == "COPY" and "/pyproject.toml " in step.arguments]
    assert sorted(step.arguments.split()[0] for step in metadata) == sorted(
        ["pyproject.toml", *(f"{member.relative_to(ROOT)}/pyproject.toml" for member in members)]
    )
    # Apart from those, the build and runtime stages take the service from the argument, never by name.
    generic = [step for step in steps if step.stage in ("build", "runtime") and step not in metadata]
    text = " ".join(step.arguments for step in generic)
    assert not [service for service in SERVICES if re.search(rf"\b{service}\b", text, re.IGNORECASE)]

    def neutral(service: str) -> list[str]:
        stage = [f"{step.keyword} {step.arguments}" for step in steps if step.stage == service]
        text = "\n".join(stage).replace(service, "SERVICE").replace(service.upper(), "SERVICE")
        # The one line that says what the service does.
        return re.sub(r'description="Relay Shop SERVICE service: [^"]*"', 'description="..."', text).splitlines()

    assert all(neutral(service) == neutral(SERVICES[0]) for service in SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_image_rules(service: str) -> None:
    steps = image_steps(service)
    stages = [step for step in steps if step.keyword == "FROM"]
    assert [step.stage for step in stages] == ["build", "runtime", service]
    # CKV_DOCKER_7: a pinned base, the same Python in both stages. Both stages start FROM the
    # BASE_IMAGE argument (`just images` passes a local equivalent); its default is the official image.
    (base,) = [step.arguments for step in steps if step.keyword == "ARG" and step.arguments.startswith("BASE_IMAGE=")]
    assert re.fullmatch(r"BASE_IMAGE=docker\.io/library/python:3\.11\.\d+-slim-bookworm", base)
    assert [step.arguments for step in stages] == [
        "${BASE_IMAGE} AS build",
        "${BASE_IMAGE} AS runtime",
        f"runtime AS {service}",
    ]
    # What the image is: the runtime stage and the service's own stage on top of it.
    runtime = [step for step in steps if step.stage in ("runtime", service)]
    users = [step.arguments for step in runtime if step.keyword == "USER"]
    assert users == ["10001:10001"]  # CKV_DOCKER_3, _8: numeric, not root
    assert not [step for step in steps if step.keyword == "ADD"]  # CKV_DOCKER_4
    assert not [step for step in steps if step.keyword == "HEALTHCHECK"], NOT_ENFORCED["CKV_DOCKER_2"]
    exposed = {port for step in runtime if step.keyword == "EXPOSE" for port in step.arguments.split()}
    assert exposed == {"8000", "9000"}  # CKV_DOCKER_1: no 22
    stop = [step.arguments for step in runtime if step.keyword == "STOPSIGNAL"]
    assert stop == ["SIGTERM"]
    # Exec form: the process is PID 1 and gets SIGTERM itself, no shell in between.
    (entrypoint,) = [step.arguments for step in runtime if step.keyword == "ENTRYPOINT"]
    # CMD after ENTRYPOINT in the same stage: setting ENTRYPOINT clears an inherited CMD.
    keywords = [step.keyword for step in runtime if step.stage == service]
    assert "CMD" in keywords[keywords.index("ENTRYPOINT") :]
    (command,) = [step.arguments for step in runtime if step.keyword == "CMD"]
    assert json.loads(entrypoint) == [service]
    assert json.loads(command)[0] == "api"
    for step in steps:  # no secret baked into a layer
        if step.keyword in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|PRIVATE_KEY)\w*=", step.arguments), step.arguments
    # Only runtime dependencies: no dev group, the service's package alone.
    syncs = [step.arguments for step in steps if step.keyword == "RUN" and "uv sync" in step.arguments]
    assert syncs
    assert all(f'--package "{service}" --no-dev --frozen' in sync for sync in syncs)
    assert "--no-editable" in syncs[-1]
    labels = " ".join(step.arguments for step in runtime if step.keyword == "LABEL")
    assert f'org.opencontainers.image.title="relay-shop-{service}"' in labels
    assert f'org.opencontainers.image.description="Relay Shop {service} service:' in labels
    # In a container the API and the worker's health port listen on every interface.
    env = " ".join(step.arguments for step in runtime if step.keyword == "ENV")
    prefix = service.upper()
    for setting in (f"{prefix}_HTTP_HOST=0.0.0.0", f"{prefix}_HTTP_PORT=8000", f"{prefix}_WORKER_HEALTH_HOST=0.0.0.0"):
        assert setting in env.split(), setting


def test_the_build_context_sends_the_sources_and_never_local_data() -> None:
    ignore = context_ignore()
    for path in [
        "pyproject.toml",
        "libs/shared/pyproject.toml",
        "libs/shared/src/shared/app.py",
        "libs/devtools/pyproject.toml",  # uv lock reads every workspace member
        "services/users/pyproject.toml",
        "services/notify/src/notify/migrations/script.py.mako",
    ]:
        assert ignore.sends(path), path
    for path in [
        ".data/secrets.json",
        ".data/postgres/superuser-password",
        ".venv/bin/python",
        ".git/config",
        "uv.lock",
        "tests/users/test_auth.py",
        # dev tooling never reaches a build
        "libs/devtools/src/devtools/stack/supervisor.py",
        "libs/devtools/src/devtools/testing/plugin.py",
        "services/users/src/users/__pycache__/app.cpython-311.pyc",
        "deploy/k8s/overlays/dev/dev-only/users-jwt-private.pem",
    ]:
        assert not ignore.sends(path), path


@pytest.mark.parametrize("service", SERVICES)
def test_every_copied_path_exists_and_reaches_the_build(service: str) -> None:
    ignore = context_ignore()
    for sources, _ in copies_from_context(service, "build"):
        for source in sources:
            origin = ROOT / source
            assert origin.exists(), source
            files = [origin] if origin.is_file() else list(origin.rglob("*.py"))
            assert any(ignore.sends(file.relative_to(ROOT).as_posix()) for file in files), source


def test_every_exception_has_a_reason() -> None:
    assert all(reason.strip() for reason in NOT_ENFORCED.values())
