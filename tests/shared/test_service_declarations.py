"""The services are declared once (``shared.events.topology``) and every list of them is derived.

Each test walks one place that needs the services (packages, event topology, NATS permissions,
Kubernetes, the local stack, token audiences, the test and image tooling) and fails when it covers
a service that is not declared or misses one that is.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import msgspec
import pytest

from devtools.stack.services import DEV_SERVICES
from devtools.stack.supervisor import DevStack, StackPorts, installed_services
from shared.auth import AccessTokenSigner
from shared.events.permissions import inbox_prefix, nats_authorization, service_permissions
from shared.events.streams import CONSUMERS, LIVE_NOTIFICATIONS, STREAMS
from shared.events.topology import SERVICE_NAMES, SERVICES, service
from tests.deploy import manifests
from tests.shared import commands
from users.settings import UsersSettings

ROOT = Path(__file__).resolve().parents[2]
NAMES = set(SERVICE_NAMES)


def test_the_declared_services_are_the_workspace_services_and_their_commands() -> None:
    assert {path.parent.name for path in (ROOT / "services").glob("*/pyproject.toml")} == NAMES
    assert installed_services() == SERVICE_NAMES
    assert len(SERVICE_NAMES) == len(NAMES)


def test_each_service_owns_one_stream_and_only_declared_services_consume() -> None:
    assert sorted(spec.owner for spec in STREAMS if spec.owner != "*") == sorted(SERVICE_NAMES)
    assert {spec.service for spec in CONSUMERS} <= NAMES
    for spec in SERVICES:
        assert spec.stream.owner == spec.name
        assert {consumer.durable for consumer in spec.consumers} == {
            consumer.durable for consumer in CONSUMERS if consumer.service == spec.name
        }
    with pytest.raises(LookupError):
        service("payments")


def test_nats_users_are_exactly_the_services_with_their_declared_core_subjects() -> None:
    config = nats_authorization({name: f"{name}-password" for name in [*SERVICE_NAMES, "stranger"]})
    users = json.loads(config.removeprefix("authorization {\n  users: ").removesuffix("\n}\n"))
    assert [user["user"] for user in users] == list(SERVICE_NAMES)
    for spec in SERVICES:
        permissions = service_permissions(spec.name)
        # Beyond its own replies, a service subscribes to the core subjects it declares, and only those.
        assert permissions["subscribe"]["allow"] == [f"{inbox_prefix(spec.name)}.>", *spec.core_subjects]
        assert set(spec.core_subjects) <= set(permissions["publish"]["allow"])
        others = {subject for other in SERVICES if other != spec for subject in other.core_subjects}
        assert not others & set(permissions["publish"]["allow"]) - set(spec.core_subjects)
    # Live push is declared by notify, not special-cased in the permissions.
    assert [spec.name for spec in SERVICES if f"{LIVE_NOTIFICATIONS}.>" in spec.core_subjects] == ["notify"]
    with pytest.raises(LookupError):
        service_permissions("stranger")


def test_kubernetes_runs_every_declared_service_and_no_other() -> None:
    assert manifests.SERVICES == SERVICE_NAMES
    for overlay in manifests.OVERLAYS:
        docs = manifests.render(overlay)
        deployments = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "Deployment"}
        jobs = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "Job"}
        assert {name.removesuffix("-api") for name in deployments if name.endswith("-api")} == NAMES, overlay
        assert {name.removesuffix("-worker") for name in deployments if name.endswith("-worker")} == NAMES, overlay
        assert {name.removesuffix("-migrate") for name in jobs if name.endswith("-migrate")} == NAMES, overlay
    auth = (manifests.K8S / "base" / "nats" / "auth.conf").read_text()
    assert set(re.findall(r'"user": "([a-z]+)"', auth)) == NAMES
    sql = (manifests.K8S / "base" / "postgres" / "schemas.sql").read_text()
    (listed,) = re.findall(r"ARRAY\[([^\]]*)\]", sql)
    assert tuple(name.strip(" '") for name in listed.split(",")) == SERVICE_NAMES


def test_the_local_stack_runs_every_declared_service(tmp_path: Path) -> None:
    assert tuple(spec.name for spec in DEV_SERVICES) == SERVICE_NAMES
    assert [spec.name for spec in DEV_SERVICES if spec.issues_tokens] == ["users"]
    ports = StackPorts()
    for name in SERVICE_NAMES:
        assert {name, f"{name}_worker", f"{name}_metrics"} <= set(StackPorts.names())
        assert len({ports.api(name), ports.worker(name), ports.metrics(name)}) == 3
    stack = DevStack(tmp_path / "data", ports, services=None, environ={})
    assert stack.services == SERVICE_NAMES
    for name in SERVICE_NAMES:
        assert {f"{name}_db_password", f"{name}_nats_password"} <= set(stack.stored)
        variables = stack.own_variables(name, f"postgresql+asyncpg://{name}@127.0.0.1/relay")
        assert variables[f"{name.upper()}_NATS_USER"] == name
        assert variables[f"{name.upper()}_HTTP_PORT"] == str(ports.api(name))
        assert all(key.startswith(f"{name.upper()}_") for key in variables), name
    # The one service with email settings is the one that declares them.
    assert [name for name in SERVICE_NAMES if f"{name.upper()}_EMAIL_URL" in stack.local_defaults(name)] == ["notify"]


def test_access_tokens_are_meant_for_every_declared_service(access_token_signer: AccessTokenSigner) -> None:
    (audiences,) = [field.default for field in msgspec.structs.fields(UsersSettings) if field.name == "jwt_audiences"]
    assert audiences == SERVICE_NAMES
    assert access_token_signer.audiences == list(SERVICE_NAMES)


def test_the_test_and_image_tooling_covers_every_declared_service() -> None:
    assert set(commands.SERVICES) == NAMES
    assert set(commands.WORKER_DATABASES) == NAMES
    spec = importlib.util.spec_from_file_location("images_script", ROOT / "scripts" / "images.py")
    assert spec is not None
    assert spec.loader is not None
    images = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(images)
    assert images.SERVICES == SERVICE_NAMES
