"""The services' Dockerfiles: hadolint clean, alike, and holding to the image rules.

The rules are checkov's Dockerfile checks that apply here (checkov itself cannot be a dev
dependency: see test_security.py), by checkov's id.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.deploy.dockerfile import context_ignore, copies_from_context, dockerfile, instructions
from tests.deploy.manifests import ROOT, SERVICES, tool

# The one check not held to, and why.
NOT_ENFORCED = {
    "CKV_DOCKER_2": "no HEALTHCHECK: the image runs three commands (api on 8000, worker on 9000, migrate with no "
    "port); Docker would mark two of them unhealthy, and Kubernetes ignores HEALTHCHECK for its own probes",
}


@pytest.mark.parametrize("service", SERVICES)
def test_hadolint_finds_nothing(service: str) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(dockerfile(service))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_three_dockerfiles_differ_only_in_the_service() -> None:
    members = [f"COPY services/{member}/pyproject.toml services/{member}/\n" for member in SERVICES]

    def neutral(service: str) -> str:
        text = dockerfile(service).read_text()
        # Every member's metadata is copied for `uv lock`, in every Dockerfile alike.
        assert all(line in text for line in members)
        for line in members:
            text = text.replace(line, "")
        text = text.replace(service, "SERVICE").replace(service.upper(), "SERVICE")
        # The one line that says what the service does.
        return re.sub(r'description="Relay Shop SERVICE service: [^"]*"', 'description="..."', text)

    assert neutral("users") == neutral("orders") == neutral("notify")


@pytest.mark.parametrize("service", SERVICES)
def test_image_rules(service: str) -> None:
    steps = instructions(dockerfile(service))
    stages = [step for step in steps if step.keyword == "FROM"]
    assert [step.stage for step in stages] == ["build", "runtime"]
    # CKV_DOCKER_7: a pinned base, the same Python in both stages. Both stages start FROM the
    # BASE_IMAGE argument (`just images` passes a local equivalent); its default is the official image.
    (base,) = [step.arguments for step in steps if step.keyword == "ARG" and step.arguments.startswith("BASE_IMAGE=")]
    assert re.fullmatch(r"BASE_IMAGE=docker\.io/library/python:3\.11\.\d+-slim-bookworm", base)
    assert [step.arguments for step in stages] == ["${BASE_IMAGE} AS build", "${BASE_IMAGE} AS runtime"]
    runtime = [step for step in steps if step.stage == "runtime"]
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
    (command,) = [step.arguments for step in runtime if step.keyword == "CMD"]
    assert json.loads(entrypoint) == [service]
    assert json.loads(command)[0] == "api"
    for step in steps:  # no secret baked into a layer
        if step.keyword in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|PRIVATE_KEY)\w*=", step.arguments), step.arguments
    # Only runtime dependencies: no dev group, the service's package alone.
    syncs = [step.arguments for step in steps if step.keyword == "RUN" and "uv sync" in step.arguments]
    assert syncs
    assert all(f"--package {service} --no-dev --frozen" in sync for sync in syncs)
    assert "--no-editable" in syncs[-1]
    labels = " ".join(step.arguments for step in runtime if step.keyword == "LABEL")
    assert f'org.opencontainers.image.title="relay-shop-{service}"' in labels


def test_the_build_context_sends_the_sources_and_never_local_data() -> None:
    ignore = context_ignore()
    for path in [
        "pyproject.toml",
        "libs/shared/pyproject.toml",
        "libs/shared/src/shared/app.py",
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
        "services/users/src/users/__pycache__/app.cpython-311.pyc",
        "deploy/k8s/overlays/dev/dev-only/users-jwt-private.pem",
    ]:
        assert not ignore.sends(path), path


@pytest.mark.parametrize("service", SERVICES)
def test_every_copied_path_exists_and_reaches_the_build(service: str) -> None:
    ignore = context_ignore()
    for sources, _ in copies_from_context(dockerfile(service), "build"):
        for source in sources:
            origin = ROOT / source
            assert origin.exists(), source
            files = [origin] if origin.is_file() else list(origin.rglob("*.py"))
            assert any(ignore.sends(file.relative_to(ROOT).as_posix()) for file in files), source


def test_every_exception_has_a_reason() -> None:
    assert all(reason.strip() for reason in NOT_ENFORCED.values())
