"""Security settings of every workload in both overlays, so that none can regress.

checkov, the policy scanner the issue suggested, cannot join the dev dependencies: it requires
``packaging<24`` while the workspace pins 26.4 (pytest's and kubernetes-validate's), so it would
downgrade the test tools for a linter. These tests are
its Kubernetes checks that apply here, named by checkov's id; the checks deliberately not enforced
are in ``NOT_ENFORCED`` with the reason.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.manifests import (
    NAMESPACES,
    OVERLAYS,
    Manifest,
    containers,
    matches,
    pod_labels,
    render,
    workload_id,
    workloads,
)

NOT_ENFORCED = {
    "CKV_K8S_15": "imagePullPolicy Always: release tags are immutable, and dev images are loaded into the node "
    "(kind load) and could not be pulled at all",
    "CKV_K8S_43": "images by digest: the registry assigns the digest at push time; deploy/README.md says to pin "
    "it with kustomize's `images: digest:` per release, the committed overlays pin tags",
    "CKV_K8S_40 for postgres": "the dev Postgres runs as the image's own postgres account (uid 999), which owns "
    "PGDATA and which initdb resolves by name; every other container runs as uid >= 10000",
    "CKV_K8S_35 for nats and postgres": "nats-server resolves $VARIABLES in its config from its environment only, and "
    "the postgres image's init hook reads the role passwords from its environment; the services read every "
    "secret from a mounted file",
    "CKV2_K8S_6 for CloudNativePG": "the instance pods are made by the operator, not rendered here; "
    "components/postgres-cnpg/network-policy.yaml selects them by cnpg.io/cluster",
}

# Containers that get a secret as an environment variable, and why: see NOT_ENFORCED.
SECRET_ENV_ALLOWED = {("StatefulSet/nats", "nats"), ("StatefulSet/postgres", "postgres")}
LOW_UID_ALLOWED = {("StatefulSet/postgres", 999)}
MIN_UID = 10000


def _containers_of_both_overlays() -> list[tuple[str, Manifest, Manifest, str, Manifest]]:
    found = []
    for overlay in OVERLAYS:
        for workload, template in workloads(render(overlay)):
            for role, container in containers(template["spec"]):
                found.append((overlay, workload, template["spec"], role, container))
    return found


CONTAINERS = _containers_of_both_overlays()
CONTAINER_IDS = [f"{o}:{workload_id(w)}:{c['name']}" for o, w, _, _, c in CONTAINERS]
PODS = [
    (overlay, workload, template["spec"]) for overlay in OVERLAYS for workload, template in workloads(render(overlay))
]
POD_IDS = [f"{o}:{workload_id(w)}" for o, w, _ in PODS]
LONG_RUNNING = [entry for entry in CONTAINERS if entry[1]["kind"] != "Job" and entry[3] == "main"]
LONG_RUNNING_IDS = [f"{o}:{workload_id(w)}:{c['name']}" for o, w, _, _, c in LONG_RUNNING]
# Single instances by design, so spreading means nothing: a migration run, the dev-only servers,
# and the collector (stateless, replaced in seconds; two replicas and a PDB in prod).
NOT_SPREAD = {"postgres", "jaeger", "mailpit", "otel-collector"}
SPREAD = [(o, w, p) for o, w, p in PODS if w["kind"] != "Job" and w["metadata"]["name"] not in NOT_SPREAD]
SPREAD_IDS = [f"{o}:{workload_id(w)}" for o, w, _ in SPREAD]


def _effective(pod: Manifest, container: Manifest, key: str) -> Any:
    """A security setting as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext", {})
    return own[key] if key in own else pod.get("securityContext", {}).get(key)


def test_there_are_workloads_to_check() -> None:
    kinds = {workload["kind"] for _, workload, _ in PODS}
    assert kinds == {"Deployment", "StatefulSet", "Job"}
    assert len(CONTAINERS) > 30


@pytest.mark.parametrize(("overlay", "workload", "pod", "role", "container"), CONTAINERS, ids=CONTAINER_IDS)
def test_every_container_is_locked_down(
    overlay: str, workload: Manifest, pod: Manifest, role: str, container: Manifest
) -> None:
    context = container.get("securityContext", {})
    assert _effective(pod, container, "runAsNonRoot") is True  # CKV_K8S_23
    uid = _effective(pod, container, "runAsUser")
    assert isinstance(uid, int)
    assert uid >= MIN_UID or (workload_id(workload), uid) in LOW_UID_ALLOWED  # CKV_K8S_40
    assert context.get("readOnlyRootFilesystem") is True  # CKV_K8S_22
    assert context.get("allowPrivilegeEscalation") is False  # CKV_K8S_20
    assert context.get("privileged", False) is False  # CKV_K8S_16
    assert context.get("capabilities", {}).get("drop") == ["ALL"]  # CKV_K8S_25, _28, _37
    assert not context.get("capabilities", {}).get("add")
    assert _effective(pod, container, "seccompProfile") == {"type": "RuntimeDefault"}  # CKV_K8S_31
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):  # CKV_K8S_10, _11, _12, _13
        assert set(resources.get(kind, {})) == {"cpu", "memory"}, f"{kind}: {resources.get(kind)}"
    assert not any("hostPort" in port for port in container.get("ports", []))  # CKV_K8S_26


@pytest.mark.parametrize(("overlay", "workload", "pod", "role", "container"), LONG_RUNNING, ids=LONG_RUNNING_IDS)
def test_long_running_containers_have_probes(
    overlay: str, workload: Manifest, pod: Manifest, role: str, container: Manifest
) -> None:
    # Jobs and init containers run to completion: there is nothing to probe.
    assert container.get("readinessProbe")  # CKV_K8S_9
    assert container.get("livenessProbe")  # CKV_K8S_8


@pytest.mark.parametrize(("overlay", "workload", "pod", "role", "container"), CONTAINERS, ids=CONTAINER_IDS)
def test_images_are_pinned_by_tag(
    overlay: str, workload: Manifest, pod: Manifest, role: str, container: Manifest
) -> None:
    image = container["image"]
    match = re.fullmatch(r"(?P<name>[^:@]+)(:(?P<tag>[^@]+))?(@sha256:[0-9a-f]{64})?", image)
    assert match is not None, image
    assert match["tag"] not in (None, "latest"), image  # CKV_K8S_14


@pytest.mark.parametrize(("overlay", "workload", "pod", "role", "container"), CONTAINERS, ids=CONTAINER_IDS)
def test_secrets_reach_containers_as_files(
    overlay: str, workload: Manifest, pod: Manifest, role: str, container: Manifest
) -> None:
    from_secret = [v["name"] for v in container.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})]
    from_secret += [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]
    if (workload_id(workload), container["name"]) in SECRET_ENV_ALLOWED:
        return
    assert not from_secret  # CKV_K8S_35


@pytest.mark.parametrize(("overlay", "workload", "pod"), PODS, ids=POD_IDS)
def test_every_pod_is_isolated_from_the_node_and_the_api(overlay: str, workload: Manifest, pod: Manifest) -> None:
    assert pod.get("automountServiceAccountToken") is False  # CKV_K8S_38
    assert not pod.get("hostNetwork")  # CKV_K8S_19
    assert not pod.get("hostPID")  # CKV_K8S_17
    assert not pod.get("hostIPC")  # CKV_K8S_18
    assert not [volume for volume in pod.get("volumes", []) if "hostPath" in volume]
    # Service links put <SERVICE>_PORT=tcp://... variables into the environment, where a
    # USERS_* or ORDERS_* one would be read as a setting.
    assert pod.get("enableServiceLinks") is False
    assert pod.get("securityContext", {}).get("seccompProfile") == {"type": "RuntimeDefault"}


@pytest.mark.parametrize(("overlay", "workload", "pod"), SPREAD, ids=SPREAD_IDS)
def test_spread_over_zones_and_nodes(overlay: str, workload: Manifest, pod: Manifest) -> None:
    keys = {constraint["topologyKey"] for constraint in pod.get("topologySpreadConstraints", [])}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in pod["topologySpreadConstraints"]:
        assert matches(constraint["labelSelector"], pod_labels(workload))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_enforces_the_restricted_pod_security_standard(overlay: str) -> None:
    (namespace,) = [doc for doc in render(overlay) if doc["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == NAMESPACES[overlay]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_cover_every_pod(overlay: str) -> None:
    docs = render(overlay)
    policies = [doc for doc in docs if doc["kind"] == "NetworkPolicy"]
    (deny,) = [p for p in policies if p["metadata"]["name"] == "default-deny"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    specific = [p for p in policies if p["spec"]["podSelector"]]
    for workload, _ in workloads(docs):  # CKV2_K8S_6, with a policy of the pod's own
        assert any(matches(p["spec"]["podSelector"], pod_labels(workload)) for p in specific), workload_id(workload)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_policy_opens_a_port_to_everyone_or_everything(overlay: str) -> None:
    for policy in (doc for doc in render(overlay) if doc["kind"] == "NetworkPolicy"):
        name = policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{name}: ingress from anywhere"
            assert rule.get("ports"), f"{name}: ingress on every port"
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to"), f"{name}: egress to anywhere"
            assert rule.get("ports"), f"{name}: egress on every port"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nothing_is_exposed_outside_the_cluster(overlay: str) -> None:
    services = [doc for doc in render(overlay) if doc["kind"] == "Service"]
    assert all(service["spec"].get("type", "ClusterIP") == "ClusterIP" for service in services)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_workload_runs_in_the_default_namespace(overlay: str) -> None:
    assert all(doc["metadata"].get("namespace") != "default" for doc in render(overlay))  # CKV_K8S_21


def test_every_exception_has_a_reason() -> None:
    assert all(reason.strip() for reason in NOT_ENFORCED.values())
